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

"""The library versions this package is tested with, in one place (no import of torch or transformers).

``TESTED_TORCH`` is the torch release range the private calls (:mod:`~sage_irp_ros.compat.torch_kernels`:
CPU kernels, the compiler's cache and static inputs) and the compiled decode step were tested on; outside
it they fall back to plain PyTorch. ``sage_irp doctor`` reads the minimums here and warns below the
tested range's lower bound; setup.py's lower bounds are the same numbers (test/test_doctor.py).
"""

from packaging.specifiers import SpecifierSet
from packaging.version import Version

TESTED_TORCH = SpecifierSet(">=2.13,<2.14")
TESTED_TORCH_MIN = Version(min(spec.version for spec in TESTED_TORCH if spec.operator == ">="))
MIN_TORCH = Version("2.2")  # transformers 4.57 turns torch off below this; 2.3-2.5 (JetPack 6) only warn
MIN_TRANSFORMERS = Version("4.57.6")
MIN_PEFT = Version("0.17.1")
