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

The core (configuration, model loading, the IRP engine, energies, SNARC, the memory store and the
probes) imports no ROS; the nodes in ``irp_node`` and ``diagnostics_node`` are thin adapters over it.
"""

__version__ = "0.1.0"
