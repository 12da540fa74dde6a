# Copyright 2026 The sage_irp_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""ConversationHistory: histories only for named conversations, bounded; the node-wide heard window."""

from __future__ import annotations

from sage_irp_ros.serving.conversation import ConversationHistory


def test_no_conversation_gets_and_leaves_no_history():
    h = ConversationHistory(max_history=5)
    h.add(None, "What is the capital of France?", "Paris.")
    h.add(None, "Say hello.", "Hello.")
    assert h.get(None) == [] and len(h) == 0
    h.add("c1", "Hi", "Hello.")
    assert h.get(None) == []
    assert h.get("c1") == [("Hi", "Hello.")]  # the unnamed exchanges did not enter it


def test_named_conversations_are_separate_and_bounded():
    h = ConversationHistory(max_history=2, max_conversations=2)
    for i in range(3):
        h.add("a", f"qa{i}", f"aa{i}")
    h.add("b", "qb", "ab")
    assert h.get("a") == [("qa1", "aa1"), ("qa2", "aa2")]  # the oldest exchange dropped
    assert h.get("b") == [("qb", "ab")]
    h.add("c", "qc", "ac")  # a third conversation evicts the least recently used one ("a")
    assert h.get("a") == [] and h.get("b") and h.get("c") and len(h) == 2


def test_heard_window_spans_all_conversations_and_none():
    h = ConversationHistory(max_history=5, heard_window=3)
    assert h.heard() == []
    h.add("a", "q1", "a1")
    h.add(None, "q2", "a2")
    h.add("b", "q3", "a3")
    h.add(None, "q4", "a4")
    assert h.heard() == [("q2", "a2"), ("q3", "a3"), ("q4", "a4")]


def test_heard_window_is_kept_without_histories():
    h = ConversationHistory(max_history=0)
    h.add("a", "q1", "a1")
    assert h.get("a") == [] and h.heard() == [("q1", "a1")]


def test_reset_one_and_clear_all():
    h = ConversationHistory()
    h.add("a", "q1", "a1")
    h.add("b", "q2", "a2")
    h.add(None, "q3", "a3")
    assert h.reset("a") == 1 and h.reset("a") == 0 and h.reset("never") == 0
    assert h.get("a") == [] and h.get("b") == [("q2", "a2")]
    assert len(h.heard()) == 3  # one conversation's reset leaves what the node heard
    assert h.clear() == 1
    assert h.get("b") == [] and h.heard() == [] and len(h) == 0
