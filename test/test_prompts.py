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

"""clean_answer: what of a generated text becomes the published answer."""

from sage_irp_ros.irp.prompts import clean_answer


def test_nul_is_removed_so_a_ros_string_carries_the_whole_answer():
    # a NUL inside a std_msgs/String cuts it short on the wire: the answer topic and the result would differ
    assert clean_answer("y\x00QR\x07 ok\tfine\nnext") == "yQR\x07 ok\tfine\nnext"


def test_answer_after_the_seed_prompt_and_before_an_echoed_question():
    assert clean_answer("Question: a\n\nAnswer: four.\nQuestion: next?") == "four."
