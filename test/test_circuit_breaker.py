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

"""The circuit breaker on a fake clock: opening, one trial per backoff, doubling, closing."""

from __future__ import annotations

from sage_irp_ros.remote.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


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
