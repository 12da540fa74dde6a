"""rclpy differences between the ROS 2 distros this package runs on (Humble, Jazzy, Kilted), in one place.

Jazzy's rclpy (7.1.x) lets an invalid lifecycle transition request (``configure`` while active, say)
raise ``RCLError`` out of the ``change_state`` service callback: the caller never gets an answer and the
exception stops the executor, which takes the whole node down. Kilted's rclpy catches it, logs and
answers ``success: false``. ``guard_change_state`` gives every distro Kilted's behaviour.
"""

from __future__ import annotations

from typing import Any

from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy


def guard_change_state(node: Any) -> bool:
    """Make ``node``'s lifecycle ``change_state`` service answer ``success: false`` to an invalid transition.

    Call after ``LifecycleNodeMixin.__init__``. Returns False when the node has no such service (an rclpy
    whose lifecycle internals differ); the distro's own behaviour is kept then.
    """
    service = getattr(node, "_service_change_state", None)
    if service is None or not callable(getattr(service, "callback", None)):
        return False
    inner = service.callback

    def change_state(request, response):
        try:
            return inner(request, response)
        except _rclpy.RCLError as exc:  # Jazzy: the state machine refused the transition
            state = node._state_machine.current_state[1] if hasattr(node, "_state_machine") else "unknown"
            transition = request.transition.label or str(request.transition.id)
            node.get_logger().error(f"lifecycle transition {transition} is not possible from state {state}: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'refused'}")
            response.success = False
            return response

    service.callback = change_state
    return True
