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

"""Configuration: sections by concern, older names accepted, every bad value named with its allowed range."""

import logging
import re
from pathlib import Path

import pytest
import yaml

from sage_irp_ros.config.settings import ALIASES, ConfigError, SageConfig, describe_keys, unwrap_ros_parameters
from sage_irp_ros.config.docs import generated_section, parameter_table

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "config"
RESEARCH_EDGE = {
    "llm_irp": {"irp_iterations": 3, "initial_temperature": 0.7, "min_temperature": 0.54,
                "temp_reduction": 0.053, "max_tokens": 150, "energy_convergence_threshold": 0.1,
                "energy_plateau_window": 3, "energy_plateau_delta": 0.05, "model_keep_alive": True,
                "max_memory_mb": 1200, "device": "cuda", "precision": "fp16",
                "enable_thermal_monitoring": True, "thermal_throttle_threshold": 85,
                "power_mode": "efficiency"},
    "snarc": {"salience_threshold": 0.15, "surprise_weight": 0.2, "novelty_weight": 0.2,
              "arousal_weight": 0.2, "reward_weight": 0.2, "conflict_weight": 0.2},
    "memory": {"circular_buffer_size": 5, "verbatim_storage": True, "consolidation_interval": 100},
}


def _effective(section: str, key: str, cfg: SageConfig):
    """The value a key (new or older name) has in ``cfg``."""
    name = f"{section}.{key}"
    alias = ALIASES.get(name)
    return cfg.flat()[alias.new if alias else name]


def test_research_edge_configuration_is_accepted(caplog):
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros"):
        cfg = SageConfig.from_mapping(RESEARCH_EDGE)
    assert not caplog.records  # research names are permanent: no deprecation warning
    assert cfg.llm_irp.candidates == 3
    assert cfg.llm_irp.temp_reduction == pytest.approx(0.053)
    assert (cfg.model.device, cfg.model.precision, cfg.model.max_memory_mb) == ("cuda", "fp16", 1200)
    assert cfg.model.keep_alive and cfg.model.power_mode == "efficiency" and cfg.throttle.enabled
    assert cfg.diagnostics.throttle_threshold_c == 85.0
    assert cfg.snarc.weights == (0.2,) * 5
    assert cfg.history.depth == 5


def test_research_edge_optimized_file_loads_with_its_values():
    data = yaml.safe_load((DATA / "edge_optimized.yaml").read_text())
    cfg = SageConfig.from_yaml(DATA / "edge_optimized.yaml")
    for section, values in data.items():
        for key, value in values.items():
            assert _effective(section, key, cfg) == pytest.approx(value), f"{section}.{key}"
    # The shipped edge.yaml keeps those values; its device/precision are auto (cuda/fp16 on a Jetson).
    edge = SageConfig.from_yaml(ROOT / "config" / "edge.yaml")
    assert (edge.model.device, edge.model.precision) == ("auto", "auto")
    edge = edge.with_updates({"model.device": "cuda", "model.precision": "fp16"})
    for section, values in data.items():
        for key in values:
            assert _effective(section, key, edge) == _effective(section, key, cfg), f"{section}.{key}"


@pytest.mark.parametrize("name", ["edge.yaml", "desktop.yaml"])
def test_shipped_params_files_use_only_current_names(name, caplog):
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros"):
        cfg = SageConfig.from_yaml(ROOT / "config" / name)
    assert cfg.model.device == "auto"
    assert not caplog.records
    data = unwrap_ros_parameters(yaml.safe_load((ROOT / "config" / name).read_text()))
    assert not [f"{s}.{k}" for s, vals in data.items() for k in vals if f"{s}.{k}" in ALIASES]


@pytest.mark.parametrize("old,new,value", [
    (a.old, a.new, SageConfig().flat()[a.new]) for a in ALIASES.values() if a.new])
def test_every_older_name_sets_its_new_key(old, new, value):
    changed = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v + 1.0,
               str: lambda v: v}[type(value)](value)
    if isinstance(value, str):  # a choice: pick another allowed value
        field = dict(describe_keys())[new]
        changed = next(c for c in field.metadata["choices"] if c != value)
    section, _, key = old.partition(".")
    assert SageConfig.from_mapping({section: {key: changed}}).flat()[new] == changed


@pytest.mark.parametrize("section,key", [("llm_irp", "pack_cpu_weights"), ("llm_irp", "decoder"),
                                         ("node", "throttled_timeout_s"), ("memory", "max_conversations")])
def test_keys_that_are_not_the_research_systems_or_current_are_refused(section, key):
    """Only the research system's names are aliases; a key that is neither fails the load, naming it."""
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        SageConfig.from_mapping({section: {key: 1}})


def test_new_name_wins_over_older_name_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros.config.settings"):
        cfg = SageConfig.from_mapping({"llm_irp": {"device": "cuda"}, "model": {"device": "cpu"}})
    assert cfg.model.device == "cpu"
    assert "llm_irp.device and model.device are both set; using model.device: 'cpu'" in caplog.text


def test_aliases_name_current_keys_only():
    current = {name for name, _ in describe_keys()}
    assert not set(ALIASES) & current
    assert all(a.new in current for a in ALIASES.values())


@pytest.mark.parametrize("section,key,value,fragment", [
    ("llm_irp", "initial_temperature", -0.1, "(0.0, 5.0]"),
    ("llm_irp", "candidates", 0, "[1, 64]"),
    ("model", "device", "tpu", "one of auto, cuda, cpu"),
    ("model", "precision", "int4", "one of auto, fp16, bf16, fp32"),
    ("llm_irp", "energy_convergence_threshold", 1.5, "[0.0, 1.0]"),
    ("snarc", "salience_threshold", -0.2, "[0.0, 1.0]"),
    ("snarc", "novelty_weight", -1.0, "[0.0, 10.0]"),
    ("model", "keep_alive", "yes", "true or false"),
    ("llm_irp", "candidates", 2.5, "whole number"),
    ("llm_irp", "deadline_s", -1.0, "(0 = no deadline)"),
    # older names are named as written, with the new name
    ("llm_irp", "irp_iterations", 0, "[1, 64]"),
    ("llm_irp", "device", "tpu", "(now model.device): 'tpu' is not allowed"),
])
def test_bad_value_names_key_and_range(section, key, value, fragment):
    with pytest.raises(ConfigError) as err:
        SageConfig.from_mapping({section: {key: value}})
    assert f"{section}.{key}" in str(err.value)
    assert fragment in str(err.value)


def test_min_above_initial_temperature_is_rejected():
    with pytest.raises(ConfigError, match="min_temperature.*above.*initial_temperature"):
        SageConfig.from_mapping({"llm_irp": {"initial_temperature": 0.5, "min_temperature": 0.6}})


def test_unknown_keys_and_sections_are_rejected_together():
    with pytest.raises(ConfigError) as err:
        SageConfig.from_mapping({"llm_irp": {"irp_iteration": 3}, "snarcs": {}})
    text = str(err.value)
    assert "llm_irp.irp_iteration: unknown key" in text and "snarcs: unknown section" in text


def test_ros_params_file_is_unwrapped():
    data = {"/**": {"ros__parameters": {"llm_irp": {"max_tokens": 10}, "use_sim_time": False}},
            "sage_irp": {"ros__parameters": {"llm_irp": {"max_tokens": 20}}}}
    assert unwrap_ros_parameters(data) == {"llm_irp": {"max_tokens": 20}}
    assert SageConfig.from_mapping(data).llm_irp.max_tokens == 20


def test_yaml_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm_irp: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SageConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        SageConfig.from_yaml(tmp_path / "missing.yaml")


def test_every_key_has_a_one_line_doc():
    for name, field in describe_keys():
        assert field.metadata.get("doc") and "\n" not in field.metadata["doc"], name


def test_halting_keys_say_they_act_between_rounds():
    fields = dict(describe_keys())
    for name in ("llm_irp.energy_convergence_threshold", "llm_irp.energy_plateau_window",
                 "llm_irp.energy_plateau_delta"):
        assert "acts only when candidates_per_round is below candidates" in fields[name].metadata["doc"], name


def test_interface_md_parameter_table_is_generated_from_the_schema():
    interface = (ROOT / "docs" / "interface.md").read_text()
    assert generated_section(interface) == parameter_table(), \
        "docs/interface.md is stale: run python -m sage_irp_ros.config.docs docs/interface.md"


def test_interface_md_says_when_each_parameter_applies():
    from sage_irp_ros.ros.params import IRP_NODE_KEYS, when_applied

    interface = (ROOT / "docs" / "interface.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `([a-z_]+\.[a-z_0-9]+)` \| [^|]* \| [^|]* \| (live|configure|read-only) \|", interface, re.M)}
    assert set(rows) == {name for name, _ in describe_keys()}
    assert {name: when_applied(name) for name in IRP_NODE_KEYS} == {n: rows[n] for n in IRP_NODE_KEYS}


def test_a_bare_yaml_on_or_off_is_the_word_for_an_on_off_choice():
    """YAML 1.1 reads ``compile: off`` as false; an on/off choice takes it as the word."""
    assert SageConfig.from_mapping(yaml.safe_load("llm_irp: {compile: off}")).llm_irp.compile == "off"
    assert SageConfig.from_mapping(yaml.safe_load("llm_irp: {compile: on}")).llm_irp.compile == "on"
    with pytest.raises(ConfigError, match="must be a string"):
        SageConfig.from_mapping({"model": {"device": True}})
