"""Start the IRP node and the diagnostics node in one namespace (default ``sage``).

    ros2 launch sage_irp_ros edge.launch.py [params_file:=FILE] [model_path:=DIR] [namespace:=sage] [log_level:=info]

The one-process equivalent without ``launch`` installed: ``sage_irp run`` (same executables'
nodes, same parameters file).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "sage_irp_ros"
EXECUTABLES = ("irp_node", "diagnostics_node")
DEFAULT_PARAMS = "edge.yaml"


def _nodes(context):
    params_file = LaunchConfiguration("params_file")
    model_path = LaunchConfiguration("model_path").perform(context)
    common = {"package": PACKAGE, "namespace": LaunchConfiguration("namespace"), "output": "screen",
              "emulate_tty": True, "arguments": ["--ros-args", "--log-level", LaunchConfiguration("log_level")]}
    overrides = [{"model.path": model_path}] if model_path else []  # empty keeps the file's model.path
    return [
        Node(executable="irp_node", name="sage_irp", parameters=[params_file, *overrides], **common),
        Node(executable="diagnostics_node", name="sage_diagnostics", parameters=[params_file], **common),
    ]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", DEFAULT_PARAMS)
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="ROS 2 parameters file for both nodes"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="Local HF folder or .gguf; empty = the params file's model.path"),
        DeclareLaunchArgument("namespace", default_value="sage", description="Namespace of both nodes"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
        OpaqueFunction(function=_nodes),
    ])
