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

"""Reliability of the IRP node under faults: context overflow, SQLite locks and a full disk, kill -9,
signals during generation, a broken model path fixed at run time.

The promise under test: exactly one result per question, no lost salient memory, and the node keeps
serving. Every fault is injected through a real code path: real SQLite locks held by another process, a
real file-size limit, real signals and ``kill -9`` on a real node process. Figures are in
docs/reliability.md (run with ``-s`` to see them printed).
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from ros_harness import START_TIMEOUT, RunningNode
from test_memory_store import spawn_locker


def _ok(result):
    assert result["ok"], result["error"]
    return result


# -- context window ------------------------------------------------------------------------------------
CONTEXT = 128


@pytest.fixture(scope="module")
def short_context_model_dir(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_model

    # 128 positions: a short question plus two or three earlier turns fit, five do not
    return build_tiny_model(tmp_path_factory.mktemp("ctx128") / "model", max_positions=CONTEXT)


def _prompt_tokens(model_dir: Path, question: str) -> int:
    from transformers import AutoTokenizer

    from sage_irp_ros.irp.prompts import build_prompt_ids

    return len(build_prompt_ids(AutoTokenizer.from_pretrained(str(model_dir)), question))


def test_context_overflow_truncates_history_first_then_refuses(short_context_model_dir, tmp_path,
                                                               ros_env):
    max_tokens = 8
    words = "knowledge understanding compression meaning robot kitchen cup".split()
    # a question that fits alone (prompt + max_tokens <= CONTEXT) but leaves no room for an earlier turn
    # (one turn is over 25 tokens with this tokenizer and chat template)
    fitting = "Why"
    while _prompt_tokens(short_context_model_dir, fitting + " " + words[0] + "?") + max_tokens <= CONTEXT - 8:
        fitting += " " + words[len(fitting) % len(words)]
    too_big = " ".join(words * 10) + "?"
    assert _prompt_tokens(short_context_model_dir, too_big) + max_tokens > CONTEXT
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(short_context_model_dir), "memory.db_path": "none",
        "llm_irp.max_tokens": max_tokens, "history.depth": 5})
    t = node.tester
    try:
        used = [_ok(t.ask(f"What is {i}+{i}?", conversation="ctx"))["irp"]["history_used"] for i in range(5)]
        assert used[0] == 0 and used[1] >= 1
        assert any(u < i for i, u in enumerate(used)), used  # oldest turns were dropped to fit
        alone = _ok(t.ask(fitting + "?", conversation="ctx"))
        assert alone["irp"]["history_used"] == 0  # history gave way first
        refused = t.ask(too_big, conversation="ctx", qid="ctx-too-big")
        assert refused["error"]["code"] == "too_long" and f"context window of {CONTEXT}" in refused["error"]["message"]
        _ok(t.ask("What is 2+2?", conversation="ctx"))
    finally:
        rc = node.close()
    assert rc == 0


# -- SQLite faults --------------------------------------------------------------------------------------
def _stored_ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {row[0] for row in conn.execute("SELECT question_id FROM exchanges")}


def test_sqlite_locked_by_another_process(tiny_model_dir, tmp_path, ros_env):
    db = tmp_path / "memory.db"
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(tiny_model_dir), "memory.db_path": str(db), "snarc.salience_threshold": 0.0})
    t = node.tester
    locker = None
    try:
        _ok(t.ask("Before the lock?", qid="db-0"))
        assert _stored_ids(db) == {"db-0"}
        locker = spawn_locker(db)
        mark = t.status_mark()
        for i in (1, 2):
            _ok(t.ask("While locked?", qid=f"db-{i}", timeout=20))  # answers keep flowing
        status = t.wait_status(lambda s: not s["memory_store"]["ok"], 10, "memory_store.ok false", mark)
        assert str(db) in status["memory_store"]["error"] and "locked" in status["memory_store"]["error"]
        assert status["lifecycle"] == "active"
        locker.stdin.write("\n")
        locker.stdin.flush()
        assert locker.stdout.readline().strip() == "released"
        assert locker.wait(10) == 0
        mark = t.status_mark()
        _ok(t.ask("After the lock?", qid="db-3"))
        t.wait_status(lambda s: s["memory_store"]["ok"] and s["memory_store"]["error"] is None, 10, since=mark)
        stored = _stored_ids(db)
        assert stored == {"db-0", "db-3"}  # the exchanges answered during the lock were not stored
    finally:
        if locker is not None and locker.poll() is None:
            locker.kill()
        rc = node.close()
    assert rc == 0


def test_sqlite_disk_full_then_space_freed(tiny_model_dir, tmp_path, ros_env):
    """A full disk, for real: the node's RLIMIT_FSIZE is lowered to the WAL file's current size from
    outside (prlimit on the soft limit; Python ignores SIGXFSZ, so writes fail with EFBIG and SQLite
    reports the database or disk full), then lifted again."""
    import resource

    db = tmp_path / "memory.db"
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(tiny_model_dir), "memory.db_path": str(db), "snarc.salience_threshold": 0.0})
    t = node.tester
    try:
        _ok(t.ask("Before the disk fills?", qid="full-0"))
        wal = Path(f"{db}-wal")
        limit = max(wal.stat().st_size, db.stat().st_size)  # no file of the node may grow any more
        original = resource.prlimit(node.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(node.proc.pid, resource.RLIMIT_FSIZE, (limit, original[1]))  # soft limit only
        try:
            mark = t.status_mark()
            for i in (1, 2):
                _ok(t.ask("While the disk is full?", qid=f"full-{i}"))
            status = t.wait_status(lambda s: not s["memory_store"]["ok"], 10, "memory_store.ok false", mark)
            assert str(db) in status["memory_store"]["error"] and "full" in status["memory_store"]["error"]
        finally:
            resource.prlimit(node.proc.pid, resource.RLIMIT_FSIZE, original)
        mark = t.status_mark()
        _ok(t.ask("After space was freed?", qid="full-3"))
        t.wait_status(lambda s: s["memory_store"]["ok"], 10, "memory_store.ok true again", mark)
        stored = _stored_ids(db)  # integrity_check == ok inside
        # the write that hit the full disk was dropped whole; closing the failed connection checkpoints
        # and shrinks the WAL, so the next exchange may already fit again
        assert {"full-0", "full-3"} <= stored and stored != {"full-0", "full-1", "full-2", "full-3"}
    finally:
        rc = node.close()
    assert rc == 0


def test_kill_9_while_exchanges_are_written_loses_no_published_exchange(tiny_model_dir, tmp_path, ros_env):
    db = tmp_path / "memory.db"
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(tiny_model_dir), "memory.db_path": str(db), "snarc.salience_threshold": 0.0,
        "node.queue_size": 100, "memory.consolidation_interval": 7, "llm_irp.max_tokens": 32})
    t = node.tester
    try:
        ids = [t.send(f"Question {i} before the crash?", qid=f"k9-{i}") for i in range(60)]
        t.wait_count(15, 60)
        node.proc.proc.kill()
        assert node.proc.wait(10) == -signal.SIGKILL
        with t._cond:
            published = [r for r in t.results if r["id"] in ids]
    finally:
        node.close()
    assert 15 <= len(published) < 60, "the crash should come while questions are still being answered"
    stored = _stored_ids(db)  # integrity_check == ok inside
    salient = {r["id"] for r in published if r["ok"] and r["snarc"]["salient"]}
    assert salient and salient <= stored, salient - stored
    with sqlite3.connect(str(db)) as conn:
        partial = conn.execute("SELECT COUNT(*) FROM exchanges WHERE question = '' OR answer = '' "
                               "OR irp_json = '' OR timing_json = ''").fetchone()[0]
    assert partial == 0


# -- signals ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_model_dir(tmp_path_factory) -> Path:
    from tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("slow") / "model", max_positions=8192)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_generation_answers_everything_and_exits_cleanly(slow_model_dir, tmp_path, ros_env,
                                                                       sig):
    db = tmp_path / "memory.db"
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(slow_model_dir), "memory.db_path": str(db), "snarc.salience_threshold": 0.0,
        "llm_irp.max_tokens": 4000, "node.shutdown_timeout_s": 1.0, "node.batch_size": 1})
    t = node.tester
    try:
        _ok(t.ask("Stored before the signal?", qid="sig-0", deadline_s=0.3))
        assert Path(f"{db}-wal").exists()  # the store is open
        mark = t.status_mark()
        ids = [t.send("Tell me a very long story.", qid=f"sig-{i}") for i in range(1, 5)]
        t.wait_status(lambda s: s["state"] == "busy" and s["queue_depth"] == 3, 30, "three queued questions", mark)
        start = time.monotonic()
        node.proc.signal(sig)
        rc = node.proc.wait(20)
        elapsed = time.monotonic() - start
        results = t.wait_results(ids, 5)
    finally:
        node.close()
    log = node.proc.log()
    print(f"\n{signal.Signals(sig).name}: exited with {rc} after {elapsed:.2f} s")
    assert rc == 0, log[-3000:]
    assert elapsed < 20
    for qid in ids:
        assert len(t.results_for(qid)) == 1
    assert results["sig-1"]["ok"] or results["sig-1"]["error"]["code"] == "shutting_down"
    for qid in ids[1:]:
        assert results[qid]["error"]["code"] == "shutting_down", results[qid]
    assert "Traceback" not in log
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0  # the DB was closed
    assert "sig-0" in _stored_ids(db)


def test_sigterm_during_a_batch_answers_every_question_of_it(slow_model_dir, tmp_path, ros_env):
    """node.batch_size 4: four long questions decode together; SIGTERM cancels the batch and each of them
    still gets exactly one result (its best answer so far, or shutting_down)."""
    node = RunningNode(tmp_path, env=ros_env, params={
        "model.path": str(slow_model_dir), "memory.db_path": str(tmp_path / "memory.db"),
        "llm_irp.max_tokens": 4000, "node.shutdown_timeout_s": 1.0, "node.batch_size": 4,
        "node.batch_wait_s": 10.0})
    t = node.tester
    try:
        _ok(t.ask("Warm?", qid="b-0", deadline_s=10.5))  # alone: waits batch_wait_s for company first
        mark = t.status_mark()
        ids = [t.send("Tell me a very long story.", qid=f"b-{i}") for i in range(1, 5)]
        t.wait_status(lambda s: s["state"] == "busy" and s["batch"] == 4, 30, "a batch of four", mark)
        node.proc.signal(signal.SIGTERM)
        rc = node.proc.wait(20)
        results = t.wait_results(ids, 5)
    finally:
        node.close()
    assert rc == 0, node.proc.log()[-3000:]
    for qid in ids:
        assert len(t.results_for(qid)) == 1
        assert results[qid]["ok"] or results[qid]["error"]["code"] == "shutting_down", results[qid]
    assert "Traceback" not in node.proc.log()


# -- model path missing or corrupt at configure ------------------------------------------------------------
def test_missing_then_corrupt_model_path_is_fixed_without_restarting(tiny_model_dir, tmp_path, ros_env):
    model = tmp_path / "later" / "model"
    node = RunningNode(tmp_path, env=ros_env, wait=False, params={
        "model.path": str(model), "memory.db_path": "none", "node.autostart": True})
    t = node.tester
    try:
        status = t.wait_status(lambda s: s["state"] == "error", START_TIMEOUT, "the configure error")
        assert status["lifecycle"] == "unconfigured" and str(model) in status["error"]
        assert "does not exist" in status["error"]
        assert t.get_state() == "unconfigured"
        t.client.wait_for_node(10)
        assert t.ask("Anyone there?", qid="mp-0")["error"]["code"] == "not_active"

        model.mkdir(parents=True)
        (model / "config.json").write_text("{broken", encoding="utf-8")
        assert not t.change_state("configure")
        status = t.wait_status(lambda s: s["state"] == "error" and "cannot load" in (s["error"] or ""), 10)
        assert str(model) in status["error"] and t.get_state() == "unconfigured"

        shutil.rmtree(model)
        shutil.copytree(tiny_model_dir, model)
        assert t.change_state("configure") and t.change_state("activate")
        status = t.wait_status(lambda s: s["lifecycle"] == "active", 10)
        assert status["error"] is None and status["model"] == "model"
        _ok(t.ask("What is 2+2?", qid="mp-1"))
        assert node.proc.proc.poll() is None  # the same process throughout
    finally:
        rc = node.close()
    assert rc == 0
