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

"""The circuit breaker on a fake clock: opening, one trial per backoff, doubling, closing, Retry-After."""

from __future__ import annotations

from sage_irp_ros.remote.circuit_breaker import (CLOSED, HALF_OPEN, OPEN, CircuitBreaker, counts_as_failure,
                                                 retry_after_s)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_lets_one_trial_through_per_backoff():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, backoff_s=2.0, max_backoff_s=5.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == CLOSED
    breaker.success()  # a success resets the count
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == OPEN and not breaker.allow() and breaker.retry_in_s() == 2.0
    clock.now += 2.0
    assert breaker.state == HALF_OPEN
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.failure()  # the trial failed: open again, backoff doubled
    assert breaker.state == OPEN and breaker.retry_in_s() == 4.0
    clock.now += 4.0
    assert breaker.allow()
    breaker.failure()
    assert breaker.retry_in_s() == 5.0  # capped
    clock.now += 5.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow() and breaker.snapshot()["backoff_s"] == 2.0
    assert breaker.snapshot()["opened"] == 3


def test_a_released_trial_lets_the_next_request_try():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, backoff_s=1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow() and not breaker.allow()
    breaker.release_trial()  # cancelled: neither success nor failure
    assert breaker.allow()


def test_retry_after_opens_at_once_for_the_longer_of_it_and_the_backoff():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, backoff_s=2.0, max_backoff_s=5.0, clock=clock)
    breaker.failure(retry_after_s=60.0)  # the first failure: the server asked for a minute
    assert breaker.state == OPEN and breaker.retry_in_s() == 60.0
    clock.now += 59.0
    assert not breaker.allow()  # far past the backoff (and its cap), not past Retry-After
    clock.now += 1.0
    assert breaker.allow()
    breaker.failure(retry_after_s=0.5)  # a shorter Retry-After: the doubled backoff wins
    assert breaker.retry_in_s() == 4.0 and breaker.snapshot()["opened"] == 2


def test_which_failures_count_and_how_retry_after_reads():
    assert [s for s in (None, 400, 401, 404, 408, 422, 429, 500, 503) if counts_as_failure(s)] == [
        None, 408, 429, 500, 503]
    assert retry_after_s("120") == 120.0 and retry_after_s(" 7 ") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412480.0 - 30) == 30.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412480.0 + 30) == 0.0  # past
    assert retry_after_s(None) is None and retry_after_s("soon") is None and retry_after_s("-5") is None
