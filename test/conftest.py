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


# -- tests that need the pip setup: scripts/test.sh runs them, `colcon test` on a robot skips them ----------
PIP_SETUP_REASON = ("needs scripts/setup.sh's pip environment (network installs, or a nested colcon build); "
                    "scripts/test.sh runs it (SAGE_IRP_PIP_TESTS=1), colcon test skips it")


def pytest_configure(config):
    config.addinivalue_line("markers", f"pip_setup: {PIP_SETUP_REASON}")
    for name in ("linter", "flake8", "pep257", "copyright"):  # ament linters: test_flake8/_pep257/_copyright.py
        config.addinivalue_line("markers", f"{name}: an ament linter test")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SAGE_IRP_PIP_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason=PIP_SETUP_REASON)
    for item in items:
        if item.get_closest_marker("pip_setup") is not None:
            item.add_marker(skip)
