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

"""Shared fixtures: tiny real models on disk, isolated cache/data dirs, ROS isolation."""

from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import build_lora_adapter, build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random Llama (hidden 64) with a chat template, saved as a normal HF folder."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_plain_model_dir(tmp_path_factory) -> Path:
    """The same kind of model without a chat template (the seed prompt is used)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_plain") / "model", chat_template=False)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return build_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapter")


@pytest.fixture(scope="session")
def boom_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a token id past its embedding table: loading works, forward on it raises."""
    from transformers import PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("boom") / "model"
    shutil.copytree(tiny_model_dir, out)
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    tok.add_tokens(["<boom>"])
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Keep the user's data dir out of tests; the conversion cache stays shared (it is read-only data)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg_data"))
    # No background compiling of the decode step (llm_irp.compile: on) in tests that do not test it: a
    # cold compile costs seconds of CPU per model. test_compiled_step.py removes this for its own tests.
    monkeypatch.setenv("SAGE_IRP_ROS_COMPILE", "off")


@pytest.fixture
def ros_env(monkeypatch) -> dict[str, str]:
    """A random ROS_DOMAIN_ID with localhost-only discovery, for this test and its child processes."""
    domain = random.randint(1, 101)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return dict(os.environ)


# -- markers: what a test needs, so a developer can run the fast part (README "Development") --------------
PIP_SETUP_REASON = ("needs scripts/setup.sh's pip environment (network installs, or a nested colcon build); "
                    "scripts/test.sh runs it (SAGE_IRP_PIP_TESTS=1), colcon test skips it")
MARKERS = {
    "unit": "pure Python, tiny in-process work: no child process, no ROS, no model loaded",
    "model": "loads a torch model in process (a tiny one from tiny_models.py, or the embedded SmolLM2)",
    "node": "starts ROS processes or uses rclpy / DDS",
    "process": "starts a child process that is not ROS (a Python interpreter, a llama.cpp server, a SQLite locker)",
    "slow": "takes more than about 10 s alone on a 2-core CPU (the embedded SmolLM2, compiling, launch files)",
    "pip_setup": PIP_SETUP_REASON,
}
# Fixtures that mean the test loads a model / talks ROS (item.fixturenames holds every fixture it depends on).
MODEL_FIXTURES = {"tiny_model_dir", "tiny_plain_model_dir", "tiny_adapter_dir", "boom_model_dir"}
NODE_FIXTURES = {"ros_env", "running", "shared", "rel"}
# Where the fixtures do not tell: whole modules, then single tests ("module::test", parameters dropped).
MODULE_MARKS = {
    "test_launch_edge": {"node", "slow"}, "test_launch_lifecycle": {"node", "slow"},
    "test_remote_node": {"node", "process", "slow"}, "test_throttle_chain": {"node", "slow"},
    "test_faults": {"node", "slow"}, "test_managed_node": {"node", "slow"}, "test_monitor": {"node"},
    "test_node_parameters": {"node"}, "test_irp_node": {"node"}, "test_diagnostics_node": {"node"},
    "test_behaviours": {"node"}, "test_end_to_end": {"model", "slow"},
    "test_remote_generation": {"model", "process", "slow"},  # a llama.cpp server serving the embedded GGUF
}
TEST_MARKS = {
    "test_architecture::test_the_core_imports_without_ros": {"process"},
    "test_behaviours::test_example_tree_asks_and_logs_the_answer": {"slow"},
    "test_behaviours::test_json_schema_questions_over_the_real_topics": {"slow"},
    "test_compiled_step::test_inductor_step_gives_the_eager_tokens": {"process", "slow"},  # a C++ compiler
    "test_compiled_step::test_background_compile_swaps_in_while_eager_answers": {"slow"},
    "test_compiled_step::test_engine_queues_its_usual_shape_and_keeps_one_step_per_model": {"slow"},
    "test_decode::test_greedy_matches_generate_on_smollm2": {"model", "slow"},
    "test_docs_ros2_commands::test_documented_ros2_commands_against_ros2_launch": {"node", "slow"},
    "test_doctor::test_this_environment_reported_with_a_matching_exit_code": {"process", "slow"},
    "test_doctor::test_missing_torch_fails_with_exit_code_1": {"process"},
    "test_end_to_end::test_run_then_ask_from_another_process": {"node"},
    "test_end_to_end::test_ask_without_a_node_times_out_with_exit_code": {"node"},
    "test_int4::test_embedded_gguf_int4_cache_is_the_gguf_exactly": {"model", "slow"},
    "test_int4::test_embedded_model_loads_from_the_4bit_cache": {"model", "slow"},
    "test_memory_store_faults::test_locked_by_another_process_then_released": {"process"},
    "test_memory_store_faults::test_kill_9_loses_no_published_exchange": {"process"},
    "test_packaging::test_colcon_build_installs_launch_config_and_executables": {"process", "slow"},
    "test_probes_jtop::test_jetson_stats_is_imported_lazily": {"process"},
    "test_readme_commands::test_export_salient_writes_filtered_jsonl": {"process"},
    "test_readme_commands::test_demo_script_answers_the_five_questions": {"slow"},
    "test_readme_commands::test_demo_asks_its_five_questions_as_one_conversation": {"slow"},
    "test_results::test_the_seam_types_selection_and_results_import_no_torch": {"process"},
    "test_core::test_a_warm_up_failure_releases_the_model_it_loaded": {"model"},  # builds its own tiny model
}


def pytest_configure(config):
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    for name in ("linter", "flake8", "pep257", "copyright"):  # ament linters: test_flake8/_pep257/_copyright.py
        config.addinivalue_line("markers", f"{name}: an ament linter test")


def marks_of(item) -> set[str]:
    """The markers a test gets from its fixtures, its module and the tables above; ``unit`` when none."""
    module, name = item.path.stem, getattr(item, "originalname", item.name)
    fixtures = set(getattr(item, "fixturenames", ()))
    marks = set(MODULE_MARKS.get(module, ())) | set(TEST_MARKS.get(f"{module}::{name}", ()))
    if fixtures & MODEL_FIXTURES:
        marks.add("model")
    if fixtures & NODE_FIXTURES:
        marks.add("node")
    if item.get_closest_marker("pip_setup") is not None or item.get_closest_marker("launch_test") is not None:
        marks.add("slow")
    return marks or {"unit"}


def pytest_collection_modifyitems(config, items):
    skip_pip = os.environ.get("SAGE_IRP_PIP_TESTS") != "1"
    skip = pytest.mark.skip(reason=PIP_SETUP_REASON)
    for item in items:
        present = {m.name for m in item.iter_markers()}
        for name in sorted(marks_of(item) - present):
            item.add_marker(name)
        if skip_pip and item.get_closest_marker("pip_setup") is not None:
            item.add_marker(skip)
