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

"""Start the IRP node (a lifecycle node) and the diagnostics node in one namespace (default ``sage``).

    ros2 launch sage_irp_ros edge.launch.py [params_file:=FILE] [model_path:=DIR] [namespace:=sage]
        [log_level:=info] [use_sim_time:=false] [respawn:=false] [autostart:=true] [sigterm_timeout:=30]
        [remote_url:=URL] [remote_model:=NAME]

``ros2 launch sage_irp_ros edge.launch.py --show-args`` describes every argument. With ``autostart``
true (the default) this launch file drives the IRP node's lifecycle itself: ``configure`` once the
process has started, ``activate`` once it is configured. The node is always started with
``node.autostart:=false``, so it never activates itself under launch; with ``autostart:=false`` it
stays ``unconfigured`` until a lifecycle manager (nav2_lifecycle_manager, docs/interface.md) or
``ros2 lifecycle set`` drives it. On Ctrl-C launch sends SIGINT and waits ``sigterm_timeout`` seconds
(default 30: the node's documented shutdown bound with the default ``node.shutdown_timeout_s``,
docs/interface.md) before SIGTERM, so the running question still gets its result.

The one-process equivalent without ``launch``: ``sage_irp run`` (same nodes, same parameters file).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessStart
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "sage_irp_ros"
DEFAULT_PARAMS = "edge.yaml"
SIGKILL_TIMEOUT = "10"  # after SIGTERM; the node handles SIGTERM like SIGINT, so this is only a backstop

ARGUMENTS = {  # name: (default, description); --show-args prints them
    "params_file": (None, "ROS 2 parameters file for both nodes (default: the package's config/edge.yaml)"),
    "model_path": ("", "Local Hugging Face folder or .gguf for the IRP node; empty = the params file's "
                       "model.path (empty there too = the embedded SmolLM2-135M-Instruct)"),
    "remote_url": ("", "OpenAI-compatible generation server (vLLM, llama.cpp server) for the IRP node's candidates; "
                       "empty = the params file's remote.url (empty there too = the on-board model)"),
    "remote_model": ("", "Model name on the generation server; empty = the params file's remote.model"),
    "namespace": ("sage", "Namespace of both nodes and their topics (/sage/question, /sage/result, ...)"),
    "log_level": ("info", "ROS log level of both nodes: debug, info, warn, error or fatal"),
    "use_sim_time": ("false", "Use /clock for both nodes' ROS time (simulation)"),
    "respawn": ("false", "Restart the IRP node's process when it dies (then configure/activate it again "
                         "when autostart is true)"),
    "autostart": ("true", "Configure and activate the IRP node from this launch file; false = leave it "
                          "unconfigured for a lifecycle manager"),
    "sigterm_timeout": ("30", "Seconds launch waits after SIGINT before SIGTERM; cover the node's shutdown "
                              "bound (node.shutdown_timeout_s + 7.5 s) when you raise node.shutdown_timeout_s"),
}


def _is_true(context, name: str) -> bool:
    return LaunchConfiguration(name).perform(context).strip().lower() in ("true", "1", "yes", "on")


def _nodes(context):
    params_file = LaunchConfiguration("params_file")
    model_path = LaunchConfiguration("model_path").perform(context)
    namespace = LaunchConfiguration("namespace")
    common_params = {"use_sim_time": _is_true(context, "use_sim_time")}
    common = {"package": PACKAGE, "namespace": namespace, "output": "screen", "emulate_tty": True,
              "ros_arguments": ["--log-level", LaunchConfiguration("log_level")],
              "sigterm_timeout": LaunchConfiguration("sigterm_timeout"), "sigkill_timeout": SIGKILL_TIMEOUT}
    irp_overrides = {**common_params, "node.autostart": False}  # launch, or a manager, drives the lifecycle
    if model_path:  # empty keeps the file's model.path
        irp_overrides["model.path"] = model_path
    for argument, key in (("remote_url", "remote.url"), ("remote_model", "remote.model")):
        value = LaunchConfiguration(argument).perform(context)
        if value:  # empty keeps the file's value
            irp_overrides[key] = value
    irp = LifecycleNode(executable="irp_node", name="sage_irp", parameters=[params_file, irp_overrides],
                        respawn=_is_true(context, "respawn"), respawn_delay=2.0, **common)
    diagnostics = Node(executable="diagnostics_node", name="sage_diagnostics",
                       parameters=[params_file, common_params], **common)
    actions = [irp, diagnostics]
    if _is_true(context, "autostart"):
        configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(irp),
                                                transition_id=Transition.TRANSITION_CONFIGURE))
        activate = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(irp),
                                               transition_id=Transition.TRANSITION_ACTIVATE))
        actions += [
            RegisterEventHandler(OnProcessStart(target_action=irp, on_start=[configure])),
            # Only after configure: a later `ros2 lifecycle set ... deactivate` is not undone.
            RegisterEventHandler(OnStateTransition(target_lifecycle_node=irp, start_state="configuring",
                                                   goal_state="inactive", entities=[activate])),
        ]
    return actions


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    declared = []
    for name, (default, description) in ARGUMENTS.items():
        if default is None:
            default = os.path.join(share, "config", DEFAULT_PARAMS)
        declared.append(DeclareLaunchArgument(name, default_value=default, description=description))
    return LaunchDescription([*declared, OpaqueFunction(function=_nodes)])
