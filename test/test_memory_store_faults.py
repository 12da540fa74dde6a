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

"""Memory store on real SQLite files under real faults, and durability under kill -9.

Faults are ones that work as root (tests run as root, so chmod does not stop writes): a parent path
that is a regular file, a lock held by another process, a corrupt file and a newer schema.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_memory_store import REPO, ids, make_exchange, release, spawn_locker

from sage_irp_ros.salience.memory_store import SCHEMA_VERSION, MemoryStore, MemoryStoreError


# -- faults --------------------------------------------------------------------------------------
def test_parent_is_a_regular_file_then_fixed(tmp_path, caplog):
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    db = blocker / "memory.db"
    store = MemoryStore(db)
    assert store.record(make_exchange(1)) is False
    assert not store.healthy
    assert str(db) in store.last_error and "cannot record" in store.last_error
    assert store.record(make_exchange(2)) is False  # still failing, still no exception
    assert sum("cannot record" in r.getMessage() for r in caplog.records) == 1  # logged once
    blocker.unlink()  # the fault clears: the directory can now be created
    assert store.record(make_exchange(3)) is True
    assert store.healthy and store.last_error is None
    assert ids(store) == ["q3"]


@pytest.mark.parametrize("existing", [True, False], ids=["wal-db", "fresh-file"])
def test_locked_by_another_process_then_released(tmp_path, existing):
    db = tmp_path / "memory.db"
    store = MemoryStore(db)
    if existing:
        assert store.record(make_exchange(1))
    locker = spawn_locker(db)
    try:
        start = time.monotonic()
        assert store.record(make_exchange(2)) is False
        elapsed = time.monotonic() - start
        print(f"\nrecord under a foreign lock gave up after {elapsed * 1000:.0f} ms")
        assert elapsed < 10  # the busy timeout is 200 ms: a lock never stalls an answer for long
        assert "locked" in store.last_error and str(db) in store.last_error
    finally:
        release(locker)
    assert store.record(make_exchange(3)) is True and store.healthy
    assert ids(store) == (["q1", "q3"] if existing else ["q3"])  # no partial row of q2


def test_corrupt_file_then_replaced(tmp_path):
    db = tmp_path / "memory.db"
    db.write_bytes(b"this is certainly not an SQLite database\n" * 200)
    store = MemoryStore(db)
    assert store.record(make_exchange(1)) is False
    assert "not a database" in store.last_error and str(db) in store.last_error
    with pytest.raises(MemoryStoreError, match="not a database"):
        store.query()
    db.unlink()
    assert store.record(make_exchange(2)) is True
    assert ids(store) == ["q2"]


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "memory.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = MemoryStore(db)
    assert store.record(make_exchange(1)) is False
    assert f"schema version {SCHEMA_VERSION + 1}" in store.last_error and "newer" in store.last_error
    with pytest.raises(MemoryStoreError, match="newer"):
        store.query()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        store = MemoryStore(ro / "memory.db")
        assert store.record(make_exchange(1)) is False and store.last_error
    finally:
        ro.chmod(0o755)
    assert store.record(make_exchange(2)) is True


def test_unserialisable_irp_does_not_raise(tmp_path):
    store = MemoryStore(tmp_path / "memory.db")
    ex = make_exchange(1)
    ex.irp = {"path": Path("/x"), "obj": object()}
    assert store.record(ex) is True
    assert store.query()[0]["irp"]["path"] == "/x"


# -- durability ----------------------------------------------------------------------------------
_WRITER = """
import sys
from sage_irp_ros.salience.memory_store import Exchange, MemoryStore
from sage_irp_ros.salience.snarc import SnarcScores
store = MemoryStore(sys.argv[1], consolidation_interval=25)
scores = SnarcScores(0.1, 0.2, 0.3, 0.4, 0.5, 0.3, True)
i = 0
while True:
    ex = Exchange(stamp=float(i), conversation="k", question_id=str(i), question="q" * 200,
                  answer="a" * 400, scores=scores, irp={"i": i}, timing={}, model="m")
    if store.record(ex):
        print(i, flush=True)
    i += 1
"""


def test_kill_9_loses_no_published_exchange(tmp_path):
    db = tmp_path / "memory.db"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db)], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    printed: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(printed) < 120 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(int(line))
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    printed += [int(x) for x in rest.split()]
    assert proc.returncode == -signal.SIGKILL
    print(f"\nkilled the writer after {len(printed)} published exchanges")
    assert len(printed) >= 10, "the writer produced too few exchanges to test anything"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {int(r[0]) for r in conn.execute("SELECT question_id FROM exchanges")}
    conn.close()
    assert set(printed) <= stored
    assert stored <= set(range(max(printed) + 2))  # at most the one in flight beyond the last print
    assert MemoryStore(db).record(make_exchange(1)) is True  # the file is usable afterwards
