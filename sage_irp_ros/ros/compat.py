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

"""rclpy differences between the ROS 2 distros this package runs on (Humble, Jazzy, Kilted), in one place.

Jazzy's rclpy (7.1.x) lets an invalid lifecycle transition request (``configure`` while active, say)
raise ``RCLError`` out of the ``change_state`` service callback: the caller never gets an answer and the
exception stops the executor, which takes the whole node down. Kilted's rclpy catches it, logs and
answers ``success: false``. ``guard_change_state`` gives every distro Kilted's behaviour.

rclpy's ``LifecycleNodeMixin`` has no public getter of its own current state (rclcpp has
``get_current_state()``); ``lifecycle_state`` reads it, so nodes never keep a copy of their own.
"""

from __future__ import annotations

from typing import Any, Callable

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy


def lifecycle_state(node: Any) -> str:
    """The label of ``node``'s current lifecycle state: ``unconfigured``, ``configuring``, ``active`` ...

    The one place that reads rclpy's private ``_state_machine``: the mixin keeps the state there (the
    ``get_state`` service answers from it) and offers no public accessor. "unknown" before the mixin
    initialised it.
    """
    machine = getattr(node, "_state_machine", None)
    return machine.current_state[1] if machine is not None else "unknown"


def guard_change_state(node: Any, after: Callable[[], None] | None = None) -> bool:
    """Make ``node``'s lifecycle ``change_state`` service answer ``success: false`` to an invalid transition.

    Call after ``LifecycleNodeMixin.__init__``. ``after`` runs once each requested transition is over
    (the state machine is in its new state), before the caller gets the answer: the IRP node publishes
    its status there. Returns False when the node has no such service (an rclpy whose lifecycle
    internals differ); the distro's own behaviour is kept then.
    """
    service = getattr(node, "_service_change_state", None)
    if service is None or not callable(getattr(service, "callback", None)):
        return False
    inner = service.callback

    def change_state(request, response):
        try:
            return inner(request, response)
        except _rclpy.RCLError as exc:  # Jazzy: the state machine refused the transition
            transition = request.transition.label or str(request.transition.id)
            node.get_logger().error(f"lifecycle transition {transition} is not possible from state "
                                    f"{lifecycle_state(node)}: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'refused'}")
            response.success = False
            return response
        finally:
            if after is not None:
                after()

    service.callback = change_state
    return True
