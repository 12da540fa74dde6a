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

"""One worker thread behind a bounded queue: the IRP node's serving loop, without ROS.

Subscription callbacks must never block, and one model answers one question at a time, so questions
wait in a bounded queue that one thread drains. :class:`QuestionWorker` owns that queue (a deque under
a condition variable), the thread, the item being handled and its :class:`Cancel`. It decides nothing
about results: whoever submits an item hands it back to ``handle`` (run it) or gets it back from
:meth:`QuestionWorker.take_pending` / :meth:`QuestionWorker.stop` (refuse it), so every item ends in
exactly one of the two.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class Cancel(threading.Event):
    """A cancel request for one running item that says why (``reason``), so the handler can report it.

    A plain :class:`threading.Event` to whatever polls it (the decode loop stops at its next token);
    ``reason`` is set before the event, so a reader that sees the event set also sees the reason.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reason: Exception | None = None

    def request(self, reason: Exception) -> None:
        """Ask the running item to stop, for ``reason`` (the first reason given is kept)."""
        if self.reason is None:
            self.reason = reason
        self.set()


class QuestionWorker(Generic[T]):
    """A bounded FIFO of items served by one thread calling ``handle(item, cancel)``.

    ``handle`` must not raise (it turns every failure into a result); an exception it lets out is
    passed to ``on_crash`` and the worker goes on with the next item. ``on_idle`` runs after each
    item, once :attr:`busy` is False again (the node publishes its status there).

    Batches: with ``handle_many``, the worker takes up to ``batch_limit()`` waiting items at once, in
    queue order but never two with the same non-None ``batch_key`` (the later one waits for the next
    batch), and hands them to ``handle_many(items, cancel)``; a batch of one goes to ``handle``. Before
    starting a batch that is not full, it waits up to ``batch_wait()`` seconds for more items (questions
    of a burst arrive a few milliseconds apart). While a batch runs, its handler pulls items that arrived
    since with :meth:`take_more` (between two decode steps: they join the running batch) and tells each
    item's end with :meth:`item_done`. One :class:`Cancel` covers the whole batch, joined items included.
    """

    def __init__(self, handle: Callable[[T, Cancel], None], maxsize: int, *, name: str = "worker",
                 on_crash: Callable[[BaseException], None] | None = None,
                 on_idle: Callable[[], None] | None = None,
                 handle_many: Callable[[list[T], Cancel], None] | None = None,
                 batch_limit: Callable[[], int] | None = None,
                 batch_key: Callable[[T], Hashable | None] | None = None,
                 batch_wait: Callable[[], float] | None = None):
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        self._handle = handle
        self._handle_many = handle_many
        self._batch_limit = batch_limit or (lambda: 1)
        self._batch_key = batch_key or (lambda item: None)
        self._batch_wait = batch_wait or (lambda: 0.0)
        self._running = 0
        self._on_crash = on_crash
        self._on_idle = on_idle
        self._maxsize = maxsize
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._cancel: Cancel | None = None  # the running item's, None while idle
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    # -- state ------------------------------------------------------------------------------------
    @property
    def maxsize(self) -> int:
        """The bound new items are checked against."""
        return self._maxsize

    def depth(self) -> int:
        """How many items wait (the running one not included)."""
        with self._cond:
            return len(self._items)

    @property
    def running(self) -> int:
        """How many items of the running batch have no result yet (0 while idle)."""
        return self._running

    @property
    def busy(self) -> bool:
        """True while an item is being handled."""
        return self._cancel is not None

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: nothing is accepted any more."""
        return self._stopping

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    # -- feeding ----------------------------------------------------------------------------------
    def submit(self, item: T) -> bool:
        """Queue ``item``; False (nothing queued) when the queue is full or the worker is stopping."""
        with self._cond:
            if self._stopping or len(self._items) >= self._maxsize:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def resize(self, maxsize: int) -> None:
        """Change the bound; items already waiting stay, the bound applies to new ones."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        with self._cond:
            self._maxsize = maxsize

    def take_pending(self) -> list[T]:
        """Remove and return every waiting item (the caller refuses them); the running one stays."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def take_more(self, limit: int, exclude: set[Hashable | None] = frozenset()) -> list[T]:
        """From the running batch's handler: up to ``limit`` waiting items, in queue order, none whose
        non-None ``batch_key`` is in ``exclude`` or repeats one taken (they join the running batch)."""
        taken: list[T] = []
        with self._cond:
            if self._stopping or self._cancel is None or self._cancel.is_set():
                return taken
            taken = self._take(limit, set(exclude) - {None})
            self._running += len(taken)
        return taken

    def item_done(self) -> None:
        """From the running batch's handler: one of its items has its result (:attr:`running` counts down)."""
        with self._cond:
            self._running = max(0, self._running - 1)

    # -- the running item ---------------------------------------------------------------------------
    def cancel(self, reason: Exception) -> bool:
        """Ask the running item to stop for ``reason``; False when none is running."""
        with self._cond:
            cancel = self._cancel
        if cancel is None:
            return False
        cancel.request(reason)
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no item is being handled; False when one still is after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._cancel is None, timeout)

    # -- stopping ---------------------------------------------------------------------------------
    def stop(self) -> list[T]:
        """Stop accepting; the thread ends after the running item. Returns the items that never ran
        (the caller refuses them). Calling it again returns an empty list."""
        with self._cond:
            self._stopping = True
            pending = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return pending

    def join(self, timeout: float, cancel_reason: Exception | None = None, grace: float = 0.0) -> bool:
        """Wait ``timeout`` s for the thread to end (after :meth:`stop`); then, with ``cancel_reason``,
        cancel the running item for it and wait ``grace`` s more. True when the thread has ended.

        Takes at most ``timeout + grace`` seconds; the thread outlives it only if the running item
        ignores the cancel.
        """
        self._thread.join(timeout)
        if self._thread.is_alive() and cancel_reason is not None:
            self.cancel(cancel_reason)
            self._thread.join(grace)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items or self._stopping)
                if self._stopping:
                    return
                limit = max(1, int(self._batch_limit())) if self._handle_many is not None else 1
                wait = self._batch_wait() if limit > 1 else 0.0
                if wait > 0 and len(self._items) < limit:
                    self._cond.wait_for(lambda: len(self._items) >= limit or self._stopping, wait)
                    if self._stopping:
                        return
                    if not self._items:  # take_pending() refused them meanwhile
                        continue
                items = self._take_batch(limit)
                cancel = self._cancel = Cancel()
                self._running = len(items)
            try:
                if len(items) == 1:
                    self._handle(items[0], cancel)
                else:
                    self._handle_many(items, cancel)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad item
                self._crashed(exc)
            finally:
                with self._cond:
                    self._cancel = None
                    self._running = 0
                    self._cond.notify_all()
            if self._on_idle is not None:
                try:
                    self._on_idle()
                except Exception as exc:  # noqa: BLE001
                    self._crashed(exc)

    def _take_batch(self, limit: int) -> list[T]:
        """The next batch (caller holds the lock; the queue is not empty): the first item, then later
        items in order whose key no item of the batch has, up to ``limit``."""
        first = self._items.popleft()
        return [first] + self._take(limit - 1, {self._batch_key(first)})

    def _take(self, limit: int, keys: set) -> list[T]:
        """Up to ``limit`` waiting items in order, none whose non-None key is in ``keys`` or repeats one
        taken (caller holds the lock)."""
        taken, index = [], 0
        while len(taken) < limit and index < len(self._items):
            key = self._batch_key(self._items[index])
            if key is None or key not in keys:
                taken.append(self._items[index])
                del self._items[index]
                keys.add(key)
            else:
                index += 1
        return taken

    def _crashed(self, exc: Exception) -> None:
        if self._on_crash is not None:
            self._on_crash(exc)
