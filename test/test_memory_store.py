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

"""Memory store on real SQLite files: round trips, queries, export and retention (faults and kill -9:
test_memory_store_faults.py).

Faults are ones that work as root (tests run as root, so chmod does not stop writes): a parent path
that is a regular file, a lock held by another process, a corrupt file and a newer schema.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sage_irp_ros.config.settings import MemoryConfig
from sage_irp_ros.salience.memory_store import (
    SCHEMA_VERSION, Exchange, MemoryStore, default_db_path, open_store)
from sage_irp_ros.salience.snarc import SnarcScores

REPO = Path(__file__).resolve().parents[1]


def make_exchange(i: int, conversation: str | None = "c1", total: float = 0.5, stamp: float | None = None,
                  question: str | None = None) -> Exchange:
    scores = SnarcScores(0.1, 0.2, 0.3, 0.4, 0.5, total, total >= 0.15)
    return Exchange(stamp=1000.0 + i if stamp is None else stamp, conversation=conversation,
                    question_id=f"q{i}", question=question or f"What is {i}?", answer=f"It is {i}.",
                    scores=scores, irp={"iterations": 3, "final_energy": 0.25, "all_energies": [0.3, 0.25]},
                    timing={"inference_s": 1.5}, model="smol")


def ids(store: MemoryStore, **filters) -> list[str]:
    return [row["question_id"] for row in store.query(**filters)]


def spawn_locker(db: Path) -> subprocess.Popen:
    """Another process that holds an exclusive write lock on ``db`` until it reads a line (then prints
    ``released``)."""
    code = ("import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n"
            "c.execute('COMMIT')\n"
            "print('released', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0


# -- round trips ---------------------------------------------------------------------------------
def test_round_trip(tmp_path):
    db = tmp_path / "sub" / "memory.db"  # missing directories are created
    with MemoryStore(db) as store:
        assert store.record(make_exchange(1)) is True
        assert store.healthy and store.last_error is None and store.stored_count == 1
        assert store.path == db
        (row,) = store.query()
    assert row["question"] == "What is 1?" and row["answer"] == "It is 1."
    assert row["conversation"] == "c1" and row["question_id"] == "q1" and row["model"] == "smol"
    assert row["stamp"] == 1001.0
    assert [row[d] for d in ("surprise", "novelty", "arousal", "reward", "conflict", "total")] == \
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    assert row["salient"] is True
    assert row["irp"] == {"iterations": 3, "final_energy": 0.25, "all_energies": [0.3, 0.25]}
    assert row["timing"] == {"inference_s": 1.5}


def test_file_settings(tmp_path):
    db = tmp_path / "memory.db"
    store = MemoryStore(db)
    store.record(make_exchange(1))
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 1
    indexed = {r[0] for r in conn.execute(
        "SELECT ii.name FROM pragma_index_list('exchanges') AS il, pragma_index_info(il.name) AS ii")}
    assert {"stamp", "conversation"} <= indexed
    conn.close()


def test_reopen_finds_every_committed_exchange(tmp_path):
    db = tmp_path / "memory.db"
    store = MemoryStore(db)
    for i in range(25):
        assert store.record(make_exchange(i))
    store.close()
    assert store.record(make_exchange(25))  # re-opens after close
    del store  # no close: the commits alone must be durable
    again = MemoryStore(db)
    assert ids(again) == [f"q{i}" for i in range(26)]
    assert again.stored_count == 0


def test_verbatim_off_stores_digests(tmp_path):
    store = MemoryStore(tmp_path / "memory.db", verbatim=False)
    store.record(make_exchange(7, question="secret question"))
    (row,) = store.query()
    assert row["question"] == "sha256:" + hashlib.sha256(b"secret question").hexdigest()
    assert row["answer"] == "sha256:" + hashlib.sha256("It is 7.".encode()).hexdigest()
    raw = (tmp_path / "memory.db").read_bytes() + (tmp_path / "memory.db-wal").read_bytes()
    assert b"secret question" not in raw


def test_consolidation_every_n(tmp_path):
    db = tmp_path / "memory.db"
    store = MemoryStore(db, consolidation_interval=4)
    for i in range(10):
        store.record(make_exchange(i, total=0.1 * (i + 1)))
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT exchanges_total, mean_salience FROM consolidations ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [4, 8]
    assert rows[0][1] == pytest.approx(0.25) and rows[1][1] == pytest.approx(0.65)
    conn.close()
    # Checkpoint (TRUNCATE) ran after the 8th exchange: the WAL then only holds the last two.
    assert (tmp_path / "memory.db-wal").stat().st_size < 3 * 4096 * 4
    never = MemoryStore(tmp_path / "never.db", consolidation_interval=0)
    for i in range(5):
        never.record(make_exchange(i))
    assert sqlite3.connect(tmp_path / "never.db").execute(
        "SELECT COUNT(*) FROM consolidations").fetchone()[0] == 0


def test_threads_share_one_store(tmp_path):
    store = MemoryStore(tmp_path / "memory.db")
    results: list[bool] = []

    def worker(base: int) -> None:
        results.extend(store.record(make_exchange(base + i)) for i in range(20))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results) and len(store.query()) == 80 == store.stored_count


# -- queries and export --------------------------------------------------------------------------
@pytest.fixture
def filled(tmp_path) -> MemoryStore:
    store = MemoryStore(tmp_path / "memory.db")
    for i, (conv, total) in enumerate([("a", 0.1), ("b", 0.6), ("a", 0.3), ("b", 0.05), ("a", 0.9)]):
        store.record(make_exchange(i, conversation=conv, total=total, stamp=100.0 + i))
    return store


def test_query_filters(filled):
    assert ids(filled) == ["q0", "q1", "q2", "q3", "q4"]
    assert ids(filled, since=102.0) == ["q2", "q3", "q4"]
    assert ids(filled, conversation="a") == ["q0", "q2", "q4"]
    assert ids(filled, min_salience=0.3) == ["q1", "q2", "q4"]
    assert ids(filled, conversation="a", min_salience=0.2, since=101.0) == ["q2", "q4"]
    assert ids(filled, limit=2) == ["q3", "q4"]  # the newest, oldest first
    assert ids(filled, conversation="zzz") == []


def test_export_jsonl_filters(filled, tmp_path):
    out = tmp_path / "export.jsonl"
    assert filled.export_jsonl(out) == 5
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5
    first = lines[0]
    assert list(first) == ["stamp", "conversation", "question_id", "question", "answer", "snarc",
                           "irp", "timing", "model"]
    assert first["snarc"] == {"surprise": 0.1, "novelty": 0.2, "arousal": 0.3, "reward": 0.4,
                              "conflict": 0.5, "total": 0.1, "salient": False}
    assert first["irp"]["iterations"] == 3 and first["timing"] == {"inference_s": 1.5}

    def exported(**filters) -> list[str]:
        buf = io.StringIO()
        count = filled.export_jsonl(buf, **filters)
        got = [json.loads(line)["question_id"] for line in buf.getvalue().splitlines()]
        assert count == len(got)
        return got

    assert exported(since=103.0) == ["q3", "q4"]
    assert exported(conversation="b") == ["q1", "q3"]
    assert exported(min_salience=0.5) == ["q1", "q4"]
    assert exported(conversation="a", min_salience=0.5) == ["q4"]
    assert filled.export_jsonl(str(tmp_path / "none.jsonl"), since=1e12) == 0


def test_exchange_without_conversation_is_stored_and_exported_as_null(tmp_path):
    store = MemoryStore(tmp_path / "memory.db")
    assert store.record(make_exchange(0, conversation=None)) and store.record(make_exchange(1, conversation="a"))
    assert [(r["question_id"], r["conversation"]) for r in store.query()] == [("q0", None), ("q1", "a")]
    assert ids(store, conversation="") == ["q0"]  # '' selects the exchanges asked without one
    assert ids(store, conversation="a") == ["q1"]
    with sqlite3.connect(store.path) as db:  # the column stays NOT NULL: schema 1 files are unchanged
        assert db.execute("SELECT conversation FROM exchanges ORDER BY id").fetchall() == [("",), ("a",)]
    buf = io.StringIO()
    assert store.export_jsonl(buf) == 2
    assert [json.loads(line)["conversation"] for line in buf.getvalue().splitlines()] == [None, "a"]
    store.close()


def test_query_on_missing_file_is_empty_and_creates_nothing(tmp_path):
    store = MemoryStore(tmp_path / "not-yet.db")
    assert store.query() == []
    assert not (tmp_path / "not-yet.db").exists()


# -- paths and configuration ---------------------------------------------------------------------
def test_default_db_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_db_path() == tmp_path / "sage_irp_ros" / "memory.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path() == Path.home() / ".local" / "share" / "sage_irp_ros" / "memory.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # XDG: relative values are ignored
    assert default_db_path() == Path.home() / ".local" / "share" / "sage_irp_ros" / "memory.db"


def test_open_store(monkeypatch, tmp_path):
    assert open_store(MemoryConfig(db_path="none")) is None
    assert open_store(MemoryConfig(db_path=" NONE ")) is None
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert open_store(MemoryConfig()).path == tmp_path / "sage_irp_ros" / "memory.db"
    store = open_store(MemoryConfig(db_path=str(tmp_path / "x.db"), verbatim_storage=False,
                                    consolidation_interval=2, max_age_days=0.0))  # stamps of 1970
    assert store.path == tmp_path / "x.db"
    for i in range(2):
        store.record(make_exchange(i))
    assert store.query()[0]["question"].startswith("sha256:")
    assert sqlite3.connect(tmp_path / "x.db").execute(
        "SELECT COUNT(*) FROM consolidations").fetchone()[0] == 1


def test_retention_keeps_the_newest_max_rows_at_each_consolidation(tmp_path):
    now = time.time()
    store = MemoryStore(tmp_path / "r.db", consolidation_interval=5, max_rows=3)
    for i in range(1, 10):
        assert store.record(make_exchange(i, stamp=now + i))
    # pruned at the 5th only (the 10th has not come): the newest 3 of 5 kept, then 4 more
    assert [r["question_id"] for r in store.query()] == [f"q{i}" for i in (3, 4, 5, 6, 7, 8, 9)]
    assert store.record(make_exchange(10, stamp=now + 10))
    assert [r["question_id"] for r in store.query()] == ["q8", "q9", "q10"]
    assert store.pruned_count == 2 + 5
    totals = sqlite3.connect(tmp_path / "r.db").execute(
        "SELECT exchanges_total FROM consolidations ORDER BY id").fetchall()
    assert totals == [(3,), (3,)]  # the summary counts what retention kept


def test_retention_by_age_and_live_policy_change(tmp_path):
    now = time.time()
    store = MemoryStore(tmp_path / "a.db", consolidation_interval=2, max_age_days=1.0)
    store.record(make_exchange(1, stamp=now - 3 * 86400))  # three days old
    store.record(make_exchange(2, stamp=now))                # consolidation: the old one goes
    assert [r["question_id"] for r in store.query()] == ["q2"]
    store.set_policy(MemoryConfig(consolidation_interval=2, max_age_days=0.0, max_rows=0))
    store.record(make_exchange(3, stamp=now - 3 * 86400))
    store.record(make_exchange(4, stamp=now))
    assert [r["question_id"] for r in store.query()] == ["q2", "q3", "q4"]  # keep forever now
    assert store.size_bytes() > 0
    assert MemoryStore(tmp_path / "missing.db").size_bytes() == 0
