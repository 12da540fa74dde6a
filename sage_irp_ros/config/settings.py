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

"""Typed, validated configuration for the IRP core, loaded from YAML.

One schema (:mod:`sage_irp_ros.config.schema`) serves three front doors: a plain YAML file with sections
(``model:``, ``llm_irp:``, ``snarc:`` ...), a ROS 2 parameters file (``/**: ros__parameters:`` wrapping
the same sections) and ROS parameters set at run time (flattened ``section.key`` names). Every key is
declared once, with its type, range and description; the ROS node derives its parameter descriptors
from the same declarations, so the two cannot drift apart.

The research system's key names keep working (:data:`ALIASES`: ``llm_irp.irp_iterations``,
``llm_irp.device``, ``memory.circular_buffer_size`` ...): they are permanent aliases of the current keys.
Warnings (a key given under both names) go to Python ``logging`` (the ``sage_irp_ros.config.settings``
logger, which the nodes route to ROS).

Validation fails with one :class:`ConfigError` that names every bad key and its allowed range.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from sage_irp_ros.config.schema import (DEVICES, ENERGIES, MEMORY_LIMIT_ACTIONS, POWER_MODES, PRECISIONS,  # noqa: F401
                                        PROBE_BACKENDS, SECTIONS, WEIGHT_QUANTIZATIONS, DiagnosticsConfig,
                                        HistoryConfig, IRPConfig, MemoryConfig, ModelConfig, NodeConfig, RemoteConfig,
                                        SnarcConfig, ThrottleConfig)
from sage_irp_ros.irp.prompts import bank_indices

_LOG = logging.getLogger("sage_irp_ros.config.settings")


class ConfigError(ValueError):
    """A configuration value is unknown or out of range; the message names each key."""


@dataclass(frozen=True)
class Alias:
    """A name of the research system's configuration: a permanent, silent alias of the key ``new``."""

    old: str
    new: str


ALIASES: dict[str, Alias] = {a.old: a for a in (
    Alias("llm_irp.irp_iterations", "llm_irp.candidates"),
    Alias("llm_irp.device", "model.device"),
    Alias("llm_irp.precision", "model.precision"),
    Alias("llm_irp.max_memory_mb", "model.max_memory_mb"),
    Alias("llm_irp.model_keep_alive", "model.keep_alive"),
    Alias("llm_irp.power_mode", "model.power_mode"),
    Alias("llm_irp.enable_thermal_monitoring", "throttle.enabled"),
    Alias("llm_irp.thermal_throttle_threshold", "diagnostics.throttle_threshold_c"),
    Alias("memory.circular_buffer_size", "history.depth"),
)}


def resolve_aliases(flat: Mapping[str, Any]) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """Map the research system's key names to their keys.

    Returns ``({key: (name as written, value)}, warnings)``. When a key is given under both names, the
    key's own name wins (with a warning if the values differ).
    """
    updates = {name: (name, value) for name, value in flat.items() if name not in ALIASES}
    notes: list[str] = []
    for name, value in flat.items():
        alias = ALIASES.get(name)
        if alias is None:
            continue
        if alias.new in updates:
            if updates[alias.new][1] != value:
                notes.append(f"{name} and {alias.new} are both set; using {alias.new}: {updates[alias.new][1]!r}")
            continue
        updates[alias.new] = (name, value)
    return updates, notes


@dataclass(frozen=True)
class SageConfig:
    """The whole configuration: one frozen dataclass per YAML section."""

    model: ModelConfig = field(default_factory=ModelConfig)
    llm_irp: IRPConfig = field(default_factory=IRPConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    snarc: SnarcConfig = field(default_factory=SnarcConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    remote: RemoteConfig = field(default_factory=RemoteConfig)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "SageConfig":
        """Build from nested sections (or a ROS params mapping); raise ConfigError on any bad key."""
        data = unwrap_ros_parameters(data or {})
        flat: dict[str, Any] = {}
        problems: list[str] = []
        if not isinstance(data, Mapping):
            raise ConfigError(f"configuration must be a mapping of sections, got {type(data).__name__}")
        for section, values in data.items():
            if section not in SECTIONS:
                problems.append(f"{section}: unknown section (allowed: {', '.join(SECTIONS)})")
                continue
            if not isinstance(values, Mapping):
                problems.append(f"{section}: must be a mapping of keys")
                continue
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        try:
            config = cls().with_updates(flat)
        except ConfigError as exc:
            problems += str(exc).splitlines()[1:]
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(p.strip() for p in problems))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SageConfig":
        """Load a YAML file: plain sections or a ROS 2 ``ros__parameters`` file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
        return cls.from_mapping(data)

    def with_updates(self, flat: Mapping[str, Any]) -> "SageConfig":
        """Return a copy with ``section.key`` values replaced (older names accepted); every value is checked."""
        updates, notes = resolve_aliases(flat)
        for note in notes:
            _LOG.warning(note)
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        problems: list[str] = []
        for dotted, (written, value) in updates.items():
            label = dotted if written == dotted else f"{written} (now {dotted})"
            section, _, key = dotted.partition(".")
            spec = SECTIONS.get(section)
            fields_ = {f.name: f for f in dataclasses.fields(spec)} if spec else {}
            if key not in fields_:
                allowed = ", ".join(fields_) if fields_ else ", ".join(SECTIONS)
                problems.append(f"{label}: unknown key (allowed: {allowed})")
                continue
            try:
                sections[section][key] = _coerce(fields_[key], value)
            except ConfigError as exc:
                problems.append(f"{label}: {exc}")
        built = {name: SECTIONS[name](**values) for name, values in sections.items()}
        problems += _cross_checks(built["llm_irp"])
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return SageConfig(**built)

    # -- views ----------------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key (the ROS parameter names)."""
        return {f"{name}.{key}": value for name in SECTIONS
                for key, value in dataclasses.asdict(getattr(self, name)).items()}


def unwrap_ros_parameters(data: Any) -> Any:
    """Return the sections inside a ROS 2 params file (``/**: ros__parameters: {...}``), else ``data``.

    When several node entries are present, their parameters are merged (a wildcard entry first).
    """
    if not isinstance(data, Mapping) or not any(
            isinstance(v, Mapping) and "ros__parameters" in v for v in data.values()):
        return data
    merged: dict[str, Any] = {}
    for node_name in sorted(data, key=lambda name: 0 if "*" in str(name) else 1):
        params = data[node_name].get("ros__parameters", {}) if isinstance(data[node_name], Mapping) else {}
        for section, values in params.items():
            if isinstance(values, Mapping):
                merged.setdefault(section, {}).update(values)
            else:  # a top-level scalar parameter: keep it so validation names it
                merged[section] = values
    # Node-private parameters that are not part of the core schema (e.g. use_sim_time) are ROS's own.
    merged.pop("use_sim_time", None)
    return merged


def describe_keys() -> Iterator[tuple[str, dataclasses.Field]]:
    """Yield ``("section.key", field)`` for every configuration key, in declaration order."""
    for name, spec in SECTIONS.items():
        for f in dataclasses.fields(spec):
            yield f"{name}.{f.name}", f


def allowed_range(f: dataclasses.Field) -> str:
    """Human-readable allowed values of a key (and its off value), for messages and docs."""
    meta = f.metadata
    off = f" ({meta['off']})" if meta.get("off") else ""
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    if f.type in ("bool", bool):
        return "true or false"
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return "a string"
    left = "(" if meta.get("lo_open") else "["
    return f"{left}{lo}, {hi}]{off}"


def coerce(name: str, value: Any) -> Any:
    """``value`` converted to key ``name``'s type and range-checked; raises ConfigError."""
    return _coerce(dict(describe_keys())[name], value)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert a YAML/ROS value to the field's type and check its range."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    meta = f.metadata
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}")
        return value
    if kind == "str":
        if isinstance(value, bool) and {"on", "off"} & set(meta.get("choices") or ()):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{value!r} is not allowed; use {allowed_range(f)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number in {allowed_range(f)}, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"must be a whole number in {allowed_range(f)}, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"must be a finite number in {allowed_range(f)}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    if too_low or (hi is not None and value > hi):
        raise ConfigError(f"{value!r} is out of range; allowed {allowed_range(f)}")
    return value


def _cross_checks(irp: IRPConfig) -> list[str]:
    """Rules that involve more than one key, and the format of llm_irp.sampled_prompts."""
    problems = []
    if irp.min_temperature > irp.initial_temperature:
        problems.append(
            f"llm_irp.min_temperature: {irp.min_temperature} is above llm_irp.initial_temperature "
            f"{irp.initial_temperature}; allowed (0, initial_temperature]")
    try:
        bank_indices(irp.sampled_prompts)
    except ValueError as exc:
        problems.append(f"llm_irp.sampled_prompts: {exc}")
    return problems
