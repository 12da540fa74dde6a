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

"""End to end with the real embedded SmolLM2-135M-Instruct: the README's commands, for real.

``sage_irp run`` in one process, ``sage_irp ask`` in another, over real DDS on a random domain.
"""

import json
import subprocess
import sys

from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.serving.core import SageCore
from sage_irp_ros.weights.embedded_model import EMBEDDED_GGUF, converted_gguf, embedded_gguf
from sage_irp_ros.questions import Question

SHORT = ["-p", "llm_irp.max_tokens:=24", "-p", "llm_irp.deadline_s:=0.0"]


def test_embedded_model_answers_without_ros():
    cfg = SageConfig.from_mapping({"llm_irp": {"max_tokens": 24, "seed": 1}, "memory": {"db_path": "none"}})
    core = SageCore(cfg)
    lm = core.load()
    assert lm.model_id == "SmolLM2-135M-Instruct" and lm.has_chat_template
    result = core.answer(Question(text="What is the capital of France?"))
    assert result.ok and result.model == "SmolLM2-135M-Instruct" and result.irp.stopping in ("parallel", "sequential")
    assert "Paris" in result.answer, result.answer  # seed 1: the pick names it
    core.reconfigure(core.cfg.with_updates({"llm_irp.stopping": "off"}))
    every_row = core.answer(Question(text="What is the capital of France?"))
    assert every_row.ok and len(every_row.irp.energies) == 4 and "Paris" in every_row.answer, every_row.answer


def test_conversion_is_cached():
    gguf = embedded_gguf()
    assert gguf.name == EMBEDDED_GGUF
    folder = converted_gguf(gguf)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted_gguf(gguf) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp


def _sage_irp(*args, env, **kwargs):
    return [sys.executable, "-m", "sage_irp_ros.tools.cli", *args]


def test_run_then_ask_from_another_process(ros_env, tmp_path):
    env = {**ros_env, "XDG_DATA_HOME": str(tmp_path)}
    server = subprocess.Popen(_sage_irp("run", "--ros-args", *SHORT, env=env), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ask = subprocess.run(_sage_irp("ask", "What is 2+2?", "--id", "e2e-1", "--json", "--timeout", "300",
                                       env=env), env=env, capture_output=True, text=True, timeout=400)
        assert ask.returncode == 0, ask.stderr
        result = json.loads(ask.stdout)
        assert result["id"] == "e2e-1" and result["ok"] and result["model"] == "SmolLM2-135M-Instruct"
        assert 0.0 <= result["snarc"]["total"] <= 1.0 and result["timing"]["tokens"] > 0
        # The salient exchange reached the default store under XDG_DATA_HOME.
        assert (tmp_path / "sage_irp_ros" / "memory.db").is_file() == result["snarc"]["salient"]
        assert 0.0 <= result["confidence"] <= 1.0 and result["confident"] is True
        # A choices question from the command line: one of the options, their probabilities, the confidence.
        ask = subprocess.run(_sage_irp("ask", "Is fire hot?", "--choice", "yes", "--choice", "no",
                                       "--min-confidence", "0.99", "--timeout", "300", env=env),
                             env=env, capture_output=True, text=True, timeout=400)
        assert ask.returncode == 0, ask.stderr
        first = ask.stdout.splitlines()[0]
        assert first in ("A: yes", "A: no") and "options: yes 0." in ask.stdout, ask.stdout
        assert "(NOT confident: under min_confidence)" in ask.stdout
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out[-3000:]


def test_ask_without_a_node_times_out_with_exit_code(ros_env):
    ask = subprocess.run(_sage_irp("ask", "Hello?", "--timeout", "1", env=ros_env), env=ros_env,
                         capture_output=True, text=True, timeout=60)
    assert ask.returncode == 3 and "no IRP node answered" in ask.stderr
