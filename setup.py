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

"""ament_python package sage_irp_ros: installs with colcon on a ROS 2 distro, or with pip on plain Python."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "sage_irp_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "bench", "bench.*"]),
    package_data={PACKAGE: ["data/*.json"]},  # the fitted confidence calibration
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    # rclpy and the ROS message packages are NOT listed: on a robot they come from the distro (rosdep,
    # package.xml); on a plain Python machine requirements/runtime.txt installs the Kilted wheels.
    # Lower bounds = the oldest versions the tests pass on (scripts/test_matrix.sh, docs/platforms.md).
    # A Jetson keeps NVIDIA's torch 2.3-2.5 (expected to work with transformers 4.57, not tested here): it
    # installs this package with colcon, which does not enforce these; `sage_irp doctor` checks them.
    python_requires=">=3.10",
    install_requires=["setuptools", "packaging", "pyyaml", "numpy", "psutil", "torch>=2.13",
                      "transformers>=4.57.6", "peft>=0.17.1", "safetensors", "gguf", "jsonschema>=4.18",
                      "llguidance>=1.9", "httpx>=0.21"],
    extras_require={
        "test": ["pytest", "hypothesis"],
        "jetson": ["jetson-stats"],
        "nvml": ["nvidia-ml-py"],
        "bt": ["py-trees"],
        "monitor": ["rich"],
        "plot": ["matplotlib"],
    },
    zip_safe=True,
    maintainer="sage_irp_ros maintainers",
    maintainer_email="maintainers@sage-irp-ros.invalid",
    description="On-board LLM for ROS 2 robots: IRP best-of-N answers, SNARC salience, salient memory, diagnostics.",
    license="Apache-2.0",
    license_files=["LICENSE"],
    entry_points={
        "console_scripts": [
            "irp_node = sage_irp_ros.ros.irp_node:main",
            "diagnostics_node = sage_irp_ros.ros.diagnostics_node:main",
            "sage_irp = sage_irp_ros.tools.cli:main",
            "sage_irp_bt_example = sage_irp_ros.ros.examples.ask_tree:main",
        ],
    },
)
