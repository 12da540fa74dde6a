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

"""The IRP node over real topics with a remote generation backend (a real llama.cpp server).

The node runs in its own process and ROS domain with ``remote.fallback: none`` (no model loaded): a
question over the ``question`` topic is answered by the server, with the on-board result's shape, on
``answer``/``salience``/``snarc``/``result``; the status names the backend. A node whose server is
absent still configures, says so in its status, answers ``backend_unavailable`` and keeps serving.
"""

from __future__ import annotations

import pytest

from llama_server import API_KEY, LlamaServer, free_port, skip_reason
from ros_harness import RunningNode, ros_domain_env
from sage_irp_ros import errors

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = LlamaServer(tmp_path_factory.mktemp("llama")).start()
    yield running
    running.kill()


def _node(tmp_path, url: str) -> RunningNode:
    env = {**ros_domain_env(), "SAGE_IRP_API_KEY": API_KEY}
    return RunningNode(tmp_path, env=env, params={
        "remote.url": url, "remote.fallback": "none", "remote.breaker_failures": 1000,
        "llm_irp.candidates": 2, "memory.db_path": str(tmp_path / "memory.db")})


def test_a_question_over_topics_is_answered_by_the_server(server, tmp_path):
    node = _node(tmp_path, server.url)
    try:
        t = node.tester
        result = t.ask("What is 2+2?", timeout=120)
        assert result["ok"], result["error"]
        assert result["backend"] == "remote" and result["model"] == "smollm2"
        assert result["irp"]["temperatures"] == [0.7, 0.647, 0.0] and result["snarc"] is not None
        t.wait_for(lambda: result["answer"] in t.answers and len(t.snarcs) >= 1 and len(t.saliences) >= 1, 30,
                   "answer, salience and snarc")
        status = t.wait_status(lambda s: s.get("served", 0) >= 1, what="a status after the answer")
        generation = status["generation"]
        assert generation["backend"] == "remote" and generation["reachable"] is True
        assert generation["url"] == server.url and generation["requests"] >= 3
        assert status["model"] == "smollm2" and status["model_mb"] is None  # no model on board
        assert API_KEY not in node.proc.log()
        t.assert_no_duplicates()
    finally:
        node.close()


def test_a_node_whose_server_is_absent_configures_and_keeps_serving(tmp_path):
    node = _node(tmp_path, f"http://127.0.0.1:{free_port()}")
    try:
        t = node.tester
        status = t.wait_status(lambda s: s.get("lifecycle") == "active")
        assert status["generation"]["reachable"] is False and status["generation"]["last_error"]
        for _ in range(2):
            result = t.ask("Anyone there?", timeout=60)
            assert result["error"]["code"] == errors.BACKEND_UNAVAILABLE
        assert node.proc.proc.poll() is None  # still running
        t.assert_no_duplicates()
    finally:
        node.close()
