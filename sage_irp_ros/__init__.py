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

"""sage_irp_ros: an on-board language model for ROS 2 robots, answering with IRP and scoring SNARC salience.

One subpackage per concern (docs/architecture.md); the top level keeps the wire contract: questions,
results and error codes. Everything but ``ros`` (the nodes, thin adapters) and ``tools`` (the command
line) imports no ROS.
"""

__version__ = "0.1.0"
