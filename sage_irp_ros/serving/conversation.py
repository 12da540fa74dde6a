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

"""Conversation histories: the last ``history.depth`` exchanges of each named conversation.

A question is in a conversation only when its caller names one (the ``conversation`` field). A robot
has many askers that know nothing of each other (behaviour trees, operators, scripts), so a question
without a conversation id gets no history and leaves none: nothing it asks reaches another caller's
prompt.

Bounded twice: each conversation keeps a fixed number of exchanges, and only the most recently used
``history.max_conversations`` conversations are kept, so a flood of new ids cannot grow memory.

Besides the histories, the node-wide window of the last few exchanges heard (in any conversation, or in
none) is kept for SNARC surprise of questions without a conversation: it is scored against what the
robot has just been hearing (see docs/interface.md, "Conversations"). It never enters a prompt.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque

Turns = list[tuple[str, str]]


class ConversationHistory:
    """Thread-safe map of conversation id -> recent (question, answer) pairs, oldest first.

    ``conversation`` None means "no conversation": :meth:`get` gives nothing and :meth:`add` keeps the
    exchange only in the node-wide :meth:`heard` window of the last ``heard_window`` exchanges.
    """

    def __init__(self, max_history: int = 5, max_conversations: int = 1000, heard_window: int = 3):
        self._max_history = max_history
        self._max_conversations = max_conversations
        self._items: OrderedDict[str, deque[tuple[str, str]]] = OrderedDict()
        self._heard: deque[tuple[str, str]] = deque(maxlen=max(0, heard_window))
        self._lock = threading.Lock()

    def resize(self, max_history: int, max_conversations: int) -> None:
        """Apply new bounds at once: longer histories are cut to their newest turns, the least
        recently used conversations beyond ``max_conversations`` are dropped."""
        with self._lock:
            self._max_history, self._max_conversations = max_history, max_conversations
            for name, turns in list(self._items.items()):
                if max_history == 0:
                    del self._items[name]
                elif turns.maxlen != max_history:
                    self._items[name] = deque(turns, maxlen=max_history)
            while len(self._items) > self._max_conversations:
                self._items.popitem(last=False)

    def get(self, conversation: str | None) -> Turns:
        """The conversation's earlier exchanges, oldest first; empty for None (no conversation)."""
        if conversation is None:
            return []
        with self._lock:
            turns = self._items.get(conversation)
            return list(turns) if turns else []

    def heard(self) -> Turns:
        """The last exchanges answered node-wide, in any conversation or none, oldest first."""
        with self._lock:
            return list(self._heard)

    def add(self, conversation: str | None, question: str, answer: str) -> None:
        """Record an answered exchange: in its conversation's history (if it has one) and in :meth:`heard`."""
        with self._lock:
            self._heard.append((question, answer))
            if conversation is None or self._max_history == 0:
                return
            turns = self._items.pop(conversation, None) or deque(maxlen=self._max_history)
            turns.append((question, answer))
            self._items[conversation] = turns
            while len(self._items) > self._max_conversations:
                self._items.popitem(last=False)

    def reset(self, conversation: str) -> int:
        """Forget one named conversation; returns 1 if it had a history, else 0."""
        with self._lock:
            return 1 if self._items.pop(conversation, None) is not None else 0

    def clear(self) -> int:
        """Forget every conversation and the :meth:`heard` window; returns how many histories were cleared."""
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self._heard.clear()
            return count

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
