"""Configuration: research keys accepted, every bad value named with its allowed range."""

from pathlib import Path

import pytest

from sage_irp_ros.config import ConfigError, SageConfig, describe_keys, unwrap_ros_parameters

ROOT = Path(__file__).resolve().parent.parent
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


def test_research_edge_configuration_is_accepted():
    cfg = SageConfig.from_mapping(RESEARCH_EDGE)
    assert cfg.llm_irp.irp_iterations == 3
    assert cfg.llm_irp.temp_reduction == pytest.approx(0.053)
    assert cfg.llm_irp.thermal_throttle_threshold == 85.0
    assert cfg.snarc.weights == (0.2,) * 5
    assert cfg.memory.circular_buffer_size == 5


@pytest.mark.parametrize("name", ["edge.yaml", "desktop.yaml"])
def test_shipped_params_files_load_as_core_config(name):
    cfg = SageConfig.from_yaml(ROOT / "config" / name)
    assert cfg.llm_irp.device == "auto"


@pytest.mark.parametrize("section,key,value,fragment", [
    ("llm_irp", "initial_temperature", -0.1, "(0.0, 5.0]"),
    ("llm_irp", "irp_iterations", 0, "[1, 64]"),
    ("llm_irp", "device", "tpu", "one of auto, cuda, cpu"),
    ("llm_irp", "precision", "int4", "one of auto, fp16, bf16, fp32"),
    ("llm_irp", "energy_convergence_threshold", 1.5, "[0.0, 1.0]"),
    ("snarc", "salience_threshold", -0.2, "[0.0, 1.0]"),
    ("snarc", "novelty_weight", -1.0, "[0.0, 10.0]"),
    ("llm_irp", "model_keep_alive", "yes", "true or false"),
    ("llm_irp", "irp_iterations", 2.5, "whole number"),
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


def test_every_key_is_documented():
    for name, field in describe_keys():
        assert field.metadata.get("doc"), name
    interface = (ROOT / "docs" / "interface.md").read_text()
    missing = [name for name, _ in describe_keys() if f"`{name}`" not in interface]
    assert not missing, f"docs/interface.md does not document {missing}"


def test_interface_md_says_when_each_irp_node_parameter_applies():
    import re

    from sage_irp_ros.ros_params import IRP_NODE_KEYS, when_applied

    interface = (ROOT / "docs" / "interface.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"^\| `([a-z_]+\.[a-z_]+)` \| [^|]* \| [^|]* \| (live|configure|read-only) \|", interface, re.M)}
    assert set(rows) == set(IRP_NODE_KEYS)
    assert {name: when_applied(name) for name in IRP_NODE_KEYS} == rows
