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

"""The salient-exchange store: every scored exchange the node keeps, in one SQLite file.

Why it is built this way:

* Durable: WAL journal with ``synchronous=FULL`` and one transaction per exchange, so an exchange whose
  answer was already published survives ``kill -9`` (and power loss, as far as the disk honours fsync).
* Never in the way of answers: :meth:`MemoryStore.record` never raises. A locked, corrupt, full or
  unreachable database makes it return False, set :attr:`MemoryStore.last_error` (naming the path and
  the SQLite error) and log once per distinct error; the next call re-opens and retries. The busy
  timeout is short (200 ms), so a lock held elsewhere costs an answer at most that long.
* Versioned: ``PRAGMA user_version`` holds the schema version (1). A file written by a newer version
  is refused with a clear message rather than misread.
* Private if asked: ``verbatim=False`` keeps ``sha256:<hex>`` digests of question and answer only.
* Conversations: an exchange asked without a conversation id is stored with ``conversation`` = ''
  (the column is NOT NULL in schema 1; a named conversation is never empty) and read back as None,
  so exports show ``"conversation": null`` as results do; the filter ``conversation=''`` selects them.
* Consolidation: every ``consolidation_interval``-th exchange (by row id) also records a summary row
  (row count, mean salience of the last interval) in the same transaction and then checkpoints the
  WAL, so the ``-wal`` file stays small.
* Bounded on disk: the same consolidation transaction applies retention first: exchanges older than
  ``max_age_days`` and all but the newest ``max_rows`` are deleted. SQLite reuses the freed pages, so
  the file stops growing at about ``max_rows`` rows (it does not shrink without a VACUUM).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sage_irp_ros.config.settings import MemoryConfig
from sage_irp_ros.results import Result
from sage_irp_ros.salience.snarc import SnarcScores

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 200
UNNAMED = ""  # the stored conversation of an exchange asked without a conversation id
_DIMS = ("surprise", "novelty", "arousal", "reward", "conflict", "total")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS exchanges (
    id INTEGER PRIMARY KEY,
    stamp REAL NOT NULL,
    conversation TEXT NOT NULL,
    question_id TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    surprise REAL NOT NULL, novelty REAL NOT NULL, arousal REAL NOT NULL,
    reward REAL NOT NULL, conflict REAL NOT NULL, total REAL NOT NULL,
    salient INTEGER NOT NULL,
    irp_json TEXT NOT NULL,
    timing_json TEXT NOT NULL,
    model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exchanges_stamp ON exchanges (stamp);
CREATE INDEX IF NOT EXISTS exchanges_conversation ON exchanges (conversation, stamp);
CREATE TABLE IF NOT EXISTS consolidations (
    id INTEGER PRIMARY KEY,
    stamp REAL NOT NULL,
    exchanges_total INTEGER NOT NULL,
    mean_salience REAL NOT NULL
);
"""
_INSERT = ("INSERT INTO exchanges (stamp, conversation, question_id, question, answer, surprise, "
           "novelty, arousal, reward, conflict, total, salient, irp_json, timing_json, model) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_PRUNE_AGE = "DELETE FROM exchanges WHERE stamp < ?"
_PRUNE_ROWS = ("DELETE FROM exchanges WHERE id <= "
               "(SELECT id FROM exchanges ORDER BY id DESC LIMIT 1 OFFSET ?)")
_CONSOLIDATE = ("INSERT INTO consolidations (stamp, exchanges_total, mean_salience) "
                "SELECT ?, COUNT(*), (SELECT COALESCE(AVG(total), 0.0) FROM exchanges WHERE id > ?) "
                "FROM exchanges")


class MemoryStoreError(RuntimeError):
    """The store cannot be opened or read; the message names the file and the cause."""


@dataclass
class Exchange:
    """One answered question with its SNARC scores, IRP info and timings."""

    stamp: float
    conversation: str | None  # None: asked without a conversation
    question_id: str
    question: str
    answer: str
    scores: SnarcScores
    irp: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    model: str = ""

    @classmethod
    def from_result(cls, result: Result) -> "Exchange":
        """The exchange an answered (ok) result records; raises ValueError for an error result."""
        if result.snarc is None:
            raise ValueError(f"result {result.id} has no SNARC scores (an error result is not an exchange)")
        return cls(stamp=result.stamp, conversation=result.conversation, question_id=result.id,
                   question=result.question, answer=result.answer, scores=result.snarc,
                   irp=result.irp.to_dict() if result.irp is not None else {},
                   timing=result.timing.to_dict(), model=result.model or "")


def default_db_path() -> Path:
    """``$XDG_DATA_HOME/sage_irp_ros/memory.db`` (XDG default ``~/.local/share``)."""
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return base / "sage_irp_ros" / "memory.db"


def open_store(cfg: MemoryConfig) -> "MemoryStore | None":
    """The store ``cfg`` describes: None when ``db_path`` is 'none', the XDG default when empty."""
    raw = cfg.db_path.strip()
    if raw.lower() == "none":
        return None
    path = Path(raw).expanduser() if raw else default_db_path()
    return MemoryStore(path, verbatim=cfg.verbatim_storage,
                       consolidation_interval=cfg.consolidation_interval,
                       max_rows=cfg.max_rows, max_age_days=cfg.max_age_days)


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, MemoryStoreError) else f"{type(exc).__name__}: {exc}"


class MemoryStore:
    """Thread-safe SQLite store of exchanges; opens lazily and re-opens after any failure."""

    def __init__(self, path: str | Path, verbatim: bool = True, consolidation_interval: int = 100,
                 max_rows: int = 0, max_age_days: float = 0.0):
        self._path = Path(path).expanduser()
        self._verbatim = verbatim
        self._interval = max(0, int(consolidation_interval))
        self._max_rows = max(0, int(max_rows))
        self._max_age_s = max(0.0, float(max_age_days)) * 86400.0
        self.pruned_count = 0  # exchanges this instance deleted for retention
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.stored_count = 0  # exchanges this instance has committed

    @property
    def path(self) -> Path:
        return self._path

    @property
    def healthy(self) -> bool:
        """False while the last record attempt failed."""
        return self.last_error is None

    def set_policy(self, cfg: MemoryConfig) -> None:
        """Apply new ``memory.*`` storage settings (all but ``db_path``) from the next exchange on."""
        with self._lock:
            self._verbatim = cfg.verbatim_storage
            self._interval = max(0, int(cfg.consolidation_interval))
            self._max_rows = max(0, int(cfg.max_rows))
            self._max_age_s = max(0.0, float(cfg.max_age_days)) * 86400.0

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its ``-wal`` (0 for a file not created yet)."""
        total = 0
        for path in (self._path, Path(f"{self._path}-wal")):
            try:
                total += path.stat().st_size
            except OSError:
                pass
        return total

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connection ------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self._path), timeout=BUSY_TIMEOUT_MS / 1000,
                               isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise MemoryStoreError(
                    f"{self._path} has schema version {version}, newer than this package's "
                    f"{SCHEMA_VERSION}; upgrade sage_irp_ros or point memory.db_path at another file")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("memory store %s: journal mode is %s, not WAL", self._path, mode)
            conn.execute("PRAGMA synchronous = FULL")
            if version < SCHEMA_VERSION:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} "
                                   f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except BaseException:
            conn.close()
            raise
        return conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()  # rolls back anything left open
            except sqlite3.Error:
                pass
            self._conn = None

    def close(self) -> None:
        """Release the connection; a later call opens it again."""
        with self._lock:
            self._drop_connection()

    # -- writing ---------------------------------------------------------------------------------
    def record(self, exchange: Exchange) -> bool:
        """Store one exchange in its own transaction. Never raises: False (and last_error) on failure."""
        with self._lock:
            try:
                row = self._row(exchange)
                conn = self._connection()
                consolidate = False
                with conn:  # commits, or rolls back on error
                    conn.execute("BEGIN IMMEDIATE")
                    rowid = conn.execute(_INSERT, row).lastrowid or 0
                    if self._interval and rowid % self._interval == 0:
                        consolidate = True
                        pruned = self._prune(conn)
                        conn.execute(_CONSOLIDATE, (time.time(), rowid - self._interval))
            except Exception as exc:  # noqa: BLE001 - the contract is: never raise into the caller
                self._drop_connection()
                message = f"memory store {self._path}: cannot record exchange: {_describe(exc)}"
                if message != self.last_error:
                    log.warning("%s (will retry on the next exchange)", message)
                self.last_error = message
                return False
            if self.last_error is not None:
                log.info("memory store %s: recording again", self._path)
                self.last_error = None
            self.stored_count += 1
            if consolidate:
                self.pruned_count += pruned
                self._checkpoint(conn)
            return True

    def _prune(self, conn: sqlite3.Connection) -> int:
        """Retention, inside the consolidation transaction: drop too old rows, then all but the newest."""
        deleted = 0
        if self._max_age_s:
            deleted += conn.execute(_PRUNE_AGE, (time.time() - self._max_age_s,)).rowcount
        if self._max_rows:
            deleted += conn.execute(_PRUNE_ROWS, (self._max_rows,)).rowcount
        return max(0, deleted)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Fold the WAL into the database file; best effort (the exchange is already committed)."""
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.debug("memory store %s: WAL checkpoint incomplete (readers active)", self._path)
        except sqlite3.Error as exc:
            log.warning("memory store %s: WAL checkpoint failed: %s", self._path, _describe(exc))

    def _row(self, ex: Exchange) -> tuple[Any, ...]:
        question, answer = (ex.question, ex.answer) if self._verbatim else (
            _digest(ex.question), _digest(ex.answer))
        s = ex.scores
        conversation = UNNAMED if ex.conversation is None else str(ex.conversation)
        return (float(ex.stamp), conversation, str(ex.question_id), question, answer,
                float(s.surprise), float(s.novelty), float(s.arousal), float(s.reward),
                float(s.conflict), float(s.total), int(bool(s.salient)),
                json.dumps(ex.irp or {}, default=str), json.dumps(ex.timing or {}, default=str),
                str(ex.model))

    # -- reading ---------------------------------------------------------------------------------
    def query(self, since: float | None = None, conversation: str | None = None,
              min_salience: float | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored exchanges, oldest first, as dicts (irp and timing decoded, salient a bool).

        Filters: ``stamp >= since``, exact ``conversation`` ('' = exchanges asked without one; they
        are returned with ``conversation`` None), ``total >= min_salience``; ``limit``
        keeps the newest matches. Raises :class:`MemoryStoreError` when the file cannot be read;
        a store whose file does not exist yet is empty (and is not created).
        """
        clauses, params = [], []
        for sql, value in (("stamp >= ?", since), ("conversation = ?", conversation),
                           ("total >= ?", min_salience)):
            if value is not None:
                clauses.append(sql)
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM exchanges {where} ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, int(limit)))
        with self._lock:
            if self._conn is None and not self._path.exists():
                return []
            try:
                conn = self._connection()
                cursor = conn.execute(sql, params)
                names = [d[0] for d in cursor.description]
                rows = [dict(zip(names, values)) for values in cursor.fetchall()]
            except (sqlite3.Error, OSError) as exc:
                self._drop_connection()
                raise MemoryStoreError(
                    f"memory store {self._path}: cannot read: {_describe(exc)}") from exc
            except MemoryStoreError:
                self._drop_connection()
                raise
        rows.reverse()
        for row in rows:
            row["conversation"] = row["conversation"] or None
            row["salient"] = bool(row["salient"])
            row["irp"] = json.loads(row.pop("irp_json") or "{}")
            row["timing"] = json.loads(row.pop("timing_json") or "{}")
        return rows

    def export_jsonl(self, out: str | Path | TextIO, since: float | None = None,
                     conversation: str | None = None, min_salience: float | None = None,
                     limit: int | None = None) -> int:
        """Write matching exchanges as JSON Lines (same filters as :meth:`query`); returns the count."""
        rows = self.query(since=since, conversation=conversation, min_salience=min_salience,
                          limit=limit)
        if isinstance(out, (str, Path)):
            with open(out, "w", encoding="utf-8") as handle:
                return self._write_jsonl(rows, handle)
        return self._write_jsonl(rows, out)

    @staticmethod
    def _write_jsonl(rows: list[dict[str, Any]], handle: TextIO) -> int:
        for row in rows:
            snarc = {name: row[name] for name in _DIMS}
            snarc["salient"] = row["salient"]
            record = {"stamp": row["stamp"], "conversation": row["conversation"],
                      "question_id": row["question_id"], "question": row["question"],
                      "answer": row["answer"], "snarc": snarc, "irp": row["irp"],
                      "timing": row["timing"], "model": row["model"]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return len(rows)
