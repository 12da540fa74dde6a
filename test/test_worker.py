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

"""QuestionWorker without ROS: the bounded queue, refusals, fail-pending, cancel, stop and resize.

Synchronisation is by events the handler sets and waits on, never by sleeping.
"""

from __future__ import annotations

import threading

import pytest

from sage_irp_ros.errors import NOT_ACTIVE, SHUTTING_DOWN, SageError
from sage_irp_ros.serving.worker import Cancel, QuestionWorker

TIMEOUT = 10.0  # generous: only reached when the code under test is broken


class Gate:
    """A handler that records items and blocks each one until released (or cancelled)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.done: list[tuple[str, Exception | None]] = []
        self.cond = threading.Condition()

    def __call__(self, item: str, cancel: Cancel) -> None:
        self.started.set()
        while not self.release.is_set() and not cancel.is_set():
            self.release.wait(0.01)  # a generation polling its cancel at each token
        with self.cond:
            self.done.append((item, cancel.reason))
            self.cond.notify_all()

    def wait_done(self, count: int) -> bool:
        """Wait until ``count`` items were handled."""
        with self.cond:
            return self.cond.wait_for(lambda: len(self.done) >= count, TIMEOUT)


@pytest.fixture
def gate():
    return Gate()


def _worker(gate: Gate, maxsize: int = 2, **kwargs) -> QuestionWorker[str]:
    return QuestionWorker(gate, maxsize, name="test_worker", **kwargs)


def _stop(worker: QuestionWorker, gate: Gate) -> list[str]:
    gate.release.set()
    pending = worker.stop()
    assert worker.join(TIMEOUT)
    return pending


def test_bounded_queue_refuses_when_full_and_serves_in_order(gate):
    idle = threading.Event()
    worker = _worker(gate, maxsize=2, on_idle=idle.set)
    assert worker.submit("running")
    assert gate.started.wait(TIMEOUT) and worker.busy
    assert worker.submit("a") and worker.submit("b")
    assert not worker.submit("c")  # the bound counts waiting items; the running one is not among them
    assert worker.depth() == 2 and worker.maxsize == 2
    gate.release.set()
    assert gate.wait_done(3)
    assert worker.stop() == []
    assert worker.join(TIMEOUT)
    assert [item for item, _ in gate.done] == ["running", "a", "b"]
    assert idle.is_set() and not worker.busy


def test_take_pending_returns_waiting_items_and_keeps_the_running_one(gate):
    worker = _worker(gate, maxsize=3)
    worker.submit("running")
    assert gate.started.wait(TIMEOUT)
    worker.submit("a")
    worker.submit("b")
    assert worker.take_pending() == ["a", "b"]
    assert worker.depth() == 0 and worker.busy
    assert worker.submit("c")  # still accepting: fail-pending is not stop
    assert _stop(worker, gate) == ["c"]
    assert [item for item, _ in gate.done] == ["running"]


def test_cancel_stops_the_running_item_with_its_reason(gate):
    worker = _worker(gate)
    assert not worker.cancel(SageError(NOT_ACTIVE, "nothing runs"))  # idle: nothing to cancel
    worker.submit("long")
    assert gate.started.wait(TIMEOUT)
    assert not worker.wait_idle(0.0)
    reason = SageError(NOT_ACTIVE, "deactivated while it ran")
    assert worker.cancel(reason)
    assert worker.wait_idle(TIMEOUT)
    assert gate.done == [("long", reason)]
    gate.release.set()
    worker.submit("next")  # a fresh Cancel for the next item: the earlier cancel does not leak
    assert gate.wait_done(2)
    _stop(worker, gate)
    assert gate.done[1] == ("next", None)


def test_first_cancel_reason_is_kept():
    cancel = Cancel()
    first, second = SageError(NOT_ACTIVE, "first"), SageError(SHUTTING_DOWN, "second")
    cancel.request(first)
    cancel.request(second)
    assert cancel.is_set() and cancel.reason is first


def test_stop_refuses_new_items_returns_pending_and_joins(gate):
    worker = _worker(gate, maxsize=4)
    worker.submit("running")
    assert gate.started.wait(TIMEOUT)
    worker.submit("a")
    worker.submit("b")
    assert worker.stop() == ["a", "b"]
    assert worker.stopping and not worker.submit("late")
    assert not worker.join(0.0)  # the running item has not finished
    gate.release.set()
    assert worker.join(TIMEOUT) and not worker.alive
    assert [item for item, _ in gate.done] == ["running"]
    assert worker.stop() == []  # again: nothing left


def test_join_cancels_the_running_item_after_the_timeout(gate):
    worker = _worker(gate)
    worker.submit("long")
    assert gate.started.wait(TIMEOUT)
    worker.stop()
    reason = SageError(SHUTTING_DOWN, "the node is stopping")
    assert worker.join(0.0, reason, grace=TIMEOUT)
    assert gate.done == [("long", reason)]


def test_join_gives_up_on_an_item_that_ignores_cancel():
    started, release = threading.Event(), threading.Event()

    def stubborn(item: str, cancel: Cancel) -> None:
        started.set()
        release.wait(TIMEOUT)

    worker: QuestionWorker[str] = QuestionWorker(stubborn, 1)
    worker.submit("x")
    assert started.wait(TIMEOUT)
    worker.stop()
    assert not worker.join(0.0, SageError(SHUTTING_DOWN, "stop"), grace=0.0)
    assert worker.alive
    release.set()
    assert worker.join(TIMEOUT)


def test_resize_applies_to_new_items_and_keeps_waiting_ones(gate):
    worker = _worker(gate, maxsize=3)
    worker.submit("running")
    assert gate.started.wait(TIMEOUT)
    for item in ("a", "b", "c"):
        assert worker.submit(item)
    worker.resize(1)
    assert worker.maxsize == 1 and worker.depth() == 3  # nothing dropped
    assert not worker.submit("d")
    worker.resize(5)
    assert worker.submit("d")
    with pytest.raises(ValueError):
        worker.resize(0)
    assert _stop(worker, gate) == ["a", "b", "c", "d"]


def test_a_handler_that_raises_does_not_end_the_worker():
    crashes: list[Exception] = []
    served = threading.Event()

    def handle(item: str, cancel: Cancel) -> None:
        if item == "bad":
            raise RuntimeError("boom")
        served.set()

    worker: QuestionWorker[str] = QuestionWorker(handle, 2, on_crash=crashes.append)
    worker.submit("bad")
    worker.submit("good")
    assert served.wait(TIMEOUT)
    worker.stop()
    assert worker.join(TIMEOUT)
    assert [str(exc) for exc in crashes] == ["boom"]


def test_waiting_items_are_taken_as_one_batch_without_two_of_one_key():
    started, release = threading.Event(), threading.Event()
    batches: list[list[str]] = []
    done = threading.Condition()

    def one(item: str, cancel: Cancel) -> None:
        if item == "first":
            started.set()
            release.wait(TIMEOUT)
        with done:
            batches.append([item])
            done.notify_all()

    def many(items: list[str], cancel: Cancel) -> None:
        with done:
            batches.append(list(items))
            done.notify_all()

    worker: QuestionWorker[str] = QuestionWorker(one, 10, handle_many=many, batch_limit=lambda: 3,
                                                 batch_key=lambda item: item.split(":")[0] if ":" in item else None)
    worker.submit("first")
    assert started.wait(TIMEOUT)
    assert worker.running == 1
    for item in ("a:1", "a:2", "x", "b:1", "y", "z"):  # arrive while "first" runs: they wait for the next batch
        worker.submit(item)
    release.set()
    with done:
        assert done.wait_for(lambda: sum(len(b) for b in batches) == 7, TIMEOUT)
    assert batches == [["first"], ["a:1", "x", "b:1"], ["a:2", "y", "z"]]
    worker.stop()
    assert worker.join(TIMEOUT)


def test_a_running_batch_takes_items_that_arrive_while_it_runs():
    """take_more: the handler pulls what arrived, in order, skipping excluded and repeated keys; item_done
    counts the batch down."""
    arrived, pulled, finished = threading.Event(), [], threading.Event()
    worker: QuestionWorker[str] = QuestionWorker(lambda item, cancel: None, 10, handle_many=None,
                                                 batch_key=lambda item: item.split(":")[0] if ":" in item else None)

    def handle(item: str, cancel: Cancel) -> None:
        if item != "first":
            return
        assert arrived.wait(TIMEOUT)
        pulled.append(worker.take_more(3, {"a"}))
        assert worker.running == 4
        worker.item_done()
        assert worker.running == 3
        finished.set()

    worker._handle = handle
    worker.submit("first")
    for item in ("a:1", "b:1", "x", "b:2", "y"):
        worker.submit(item)
    arrived.set()
    assert finished.wait(TIMEOUT)
    assert pulled == [["b:1", "x", "y"]]
    worker.stop()
    assert worker.join(TIMEOUT)
