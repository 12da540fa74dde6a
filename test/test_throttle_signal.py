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

"""ThrottleSignal: the IRP node's reading of 'throttled', with a staleness timeout (a fake clock)."""

from sage_irp_ros.serving.throttle_signal import FRESH, NONE, STALE, ThrottleSignal


def test_never_heard_fresh_then_stale_and_transitions_reported_once():
    now = [100.0]
    signal = ThrottleSignal(clock=lambda: now[0])
    assert signal.state(5.0) == (False, NONE, None)
    assert signal.changed(5.0) is None  # the initial state is not a change
    signal.update(True)
    now[0] += 1.0
    assert signal.state(5.0) == (True, FRESH, 1.0)
    before, after = signal.changed(5.0)
    assert (before.throttled, after.throttled, after.signal) == (False, True, FRESH)
    assert signal.changed(5.0) is None
    now[0] += 5.0  # 6 s without a message: stale, read as not throttled
    assert signal.state(5.0) == (False, STALE, 6.0)
    assert signal.changed(5.0)[1].signal == STALE
    assert signal.state(0.0) == (True, FRESH, 6.0)  # timeout 0: never stale
    signal.update(False)
    assert signal.state(5.0) == (False, FRESH, 0.0)
