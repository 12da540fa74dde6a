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

"""The README's commands that the other tests do not already run: the demo script, export-salient."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sage_irp_ros.salience.memory_store import Exchange, MemoryStore
from sage_irp_ros.salience.snarc import SnarcScorer

ROOT = Path(__file__).resolve().parent.parent


def test_export_salient_writes_filtered_jsonl(tmp_path):
    db = tmp_path / "memory.db"
    store = MemoryStore(db)
    scorer = SnarcScorer()
    now = time.time()
    for i, (q, a) in enumerate([("What is knowledge?", "Knowledge is justified belief."),
                                ("Are you aware of this conversation?", "I think I know that I process it.")]):
        store.record(Exchange(stamp=now + i, conversation=f"c{i}", question_id=f"q{i}", question=q, answer=a,
                              scores=scorer.score(q, a), irp={"candidates": 3}, timing={"total_s": 1.0},
                              model="tiny"))
    store.close()
    out = tmp_path / "salient.jsonl"
    run = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "export-salient", "--db", str(db),
                          "--conversation", "c1", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in rows] == ["q1"] and rows[0]["snarc"]["salient"]
    assert "exported 1 salient exchanges" in run.stderr


@pytest.mark.pip_setup  # scripts/demo.sh runs scripts/setup.sh: pip installs from the network
def test_demo_script_answers_the_five_questions(ros_env, tmp_path):
    """`scripts/demo.sh` as the README gives it (setup is a no-op once .venv is up to date)."""
    env = {**ros_env, "XDG_DATA_HOME": str(tmp_path)}
    demo = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--once", "--ros-args", "-p",
                           "llm_irp.max_tokens:=12"], env=env, capture_output=True, text=True, timeout=900,
                          cwd=ROOT)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert all(f"[demo {n}/5]" in demo.stdout for n in range(1, 6))
    assert demo.stdout.count("salience ") == 5 and "ERROR" not in demo.stdout


def test_demo_asks_its_five_questions_as_one_conversation(ros_env, tiny_model_dir, tmp_path):
    """`sage_irp run --demo --once` (tiny model): one named conversation, each question sees the earlier ones."""
    db = tmp_path / "memory.db"
    demo = subprocess.run([sys.executable, "-m", "sage_irp_ros.tools.cli", "run", "--demo", "--once",
                           "--no-diagnostics",
                           "--ros-args", "-p", f"model.path:={tiny_model_dir}", "-p", f"memory.db_path:={db}",
                           "-p", "snarc.salience_threshold:=0.0", "-p", "llm_irp.max_tokens:=8"],
                          env=ros_env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "asking in conversation 'demo'" in demo.stdout and "ERROR" not in demo.stdout
    with MemoryStore(db) as store:  # threshold 0: every exchange is stored
        rows = store.query()
    assert [r["conversation"] for r in rows] == ["demo"] * 5
    assert [r["irp"]["history_used"] for r in rows] == [0, 1, 2, 3, 4]
