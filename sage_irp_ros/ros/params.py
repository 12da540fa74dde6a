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

"""Declare the core's configuration keys as ROS parameters, and read them back as a SageConfig.

Each ``section.key`` of :mod:`sage_irp_ros.config.settings` becomes a typed ROS parameter with its
description and range (visible in ``ros2 param describe`` and rqt_reconfigure). Values from a params
file or ``-p`` that do not fit are collected and reported together, naming key and allowed range.

Older names (:data:`sage_irp_ros.config.settings.ALIASES`) in a params file or ``-p`` still work: each is
declared for a moment as an untyped parameter, so rclpy hands over its override, its value becomes the
default of the new name (an override of the new name still wins), the deprecation warning is logged on
the node's logger, and the old name is undeclared again. ``ros2 param get`` of the new name shows the
effective value and ``ros2 param list`` lists only the new names.

Keys whose values include ``on`` or ``off`` (``llm_irp.compile``: auto, on, off; ``llm_irp.stopping``) are
declared with dynamic typing: ``-p llm_irp.compile:=on`` and ``ros2 param set ... llm_irp.compile on`` read
the word as YAML, which makes it a boolean; it is turned back into ``"on"`` / ``"off"`` (at start-up and on
every set), as the config layer does for a params file. Any other type is refused with the allowed values.

When a key takes effect (:func:`when_applied`, the "applies" column of docs/interface.md, the ``applies``
metadata of :mod:`sage_irp_ros.config.schema`):

* ``live`` — from the next question, or at once (queue bound, timers, history bounds, retention);
* ``configure`` — read when the model is loaded: ``ros2 param set`` is accepted only while the node is
  unconfigured (the next ``configure`` uses it) and refused with the reason otherwise;
* ``read-only`` — start-up only (``ParameterDescriptor.read_only``): ``ros2 param set`` is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from sage_irp_ros.config.settings import (ALIASES, ConfigError, SageConfig, allowed_range, coerce, describe_keys,
                                          resolve_aliases)
from sage_irp_ros.config.schema import CONFIGURE, LIVE, READ_ONLY

_FIELDS = dict(describe_keys())
# The IRP node's keys: every section but the diagnostics node's own.
IRP_NODE_KEYS = tuple(name for name in _FIELDS if not name.startswith("diagnostics."))
# String keys with on or off among their values: a bare on/off typed on the command line arrives as a boolean.
ON_OFF_KEYS = frozenset(name for name, f in _FIELDS.items() if {"on", "off"} & set(f.metadata.get("choices") or ()))
# The diagnostics node's keys: its section and the model's memory budget (it warns above it).
DIAGNOSTICS_NODE_KEYS = tuple(name for name in _FIELDS if name.startswith("diagnostics.")) + (
    "model.max_memory_mb",)


def when_applied(name: str) -> str:
    """``live``, ``configure`` or ``read-only`` for an IRP node parameter (see the module doc)."""
    return _FIELDS[name].metadata.get("applies", LIVE)


def descriptor(name: str, f: dataclasses.Field, applies: str = LIVE) -> ParameterDescriptor:
    """The ROS parameter descriptor of key ``name``: its doc, range and when it applies."""
    meta = f.metadata
    note = {LIVE: "", CONFIGURE: "; applies at configure (settable only while unconfigured)",
            READ_ONLY: "; read-only: set it at start-up"}[applies]
    desc = ParameterDescriptor(name=name, description=meta.get("doc", ""), read_only=applies == READ_ONLY,
                               additional_constraints=f"allowed: {allowed_range(f)}{note}",
                               dynamic_typing=name in ON_OFF_KEYS)
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    lo, hi = meta.get("lo"), meta.get("hi")
    if kind == "int" and lo is not None and hi is not None:
        desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    elif kind == "float" and lo is not None and hi is not None and not meta.get("lo_open"):
        desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare_config(node: Node, keys: Iterable[str] | None = None, *,
                   applies: dict[str, str] | None = None) -> SageConfig:
    """Declare ``keys`` (all when None) on ``node`` with :func:`when_applied`'s read-only flags;
    return the resulting config (undeclared keys keep their defaults). Older names of those keys in
    the node's overrides set them (see the module doc). ``applies`` overrides :func:`when_applied`
    per key (the diagnostics node applies everything live).

    Raises ConfigError listing every override that does not fit its key.
    """
    wanted = list(_FIELDS) if keys is None else [name for name in _FIELDS if name in set(keys)]
    if ON_OFF_KEYS & set(wanted):
        node.add_pre_set_parameters_callback(on_off_words)
    defaults = SageConfig().flat()
    problems: list[str] = []
    from_aliases, notes = _read_aliases(node, wanted, problems)
    values: dict[str, object] = {}
    for name in wanted:
        f = _FIELDS[name]
        written, default = from_aliases.get(name, (name, defaults[name]))
        try:
            param = node.declare_parameter(name, default, descriptor(
                name, f, (applies or {}).get(name, when_applied(name))))
            values[name] = _on_off_word(node, param) if name in ON_OFF_KEYS else param.value
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            hint = " (write floats with a decimal point, e.g. 85.0)" if f.type in ("float", float) else ""
            problems.append(f"{name}: {_first_line(exc)}; allowed {allowed_range(f)}{hint}")
            continue
        if written != name and param.value != default:
            notes.append(f"{written} and {name} are both set; using {name}: {param.value!r}")
    for note in notes:
        node.get_logger().warning(note)
    if problems:
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(problems))
    return SageConfig().with_updates(values)


def on_off_words(params: list[Parameter]) -> list[Parameter]:
    """A pre-set callback: a boolean for an on/off key becomes the word ``on`` / ``off`` (YAML read ``on`` as true)."""
    return [Parameter(p.name, Parameter.Type.STRING, "on" if p.value else "off")
            if p.name in ON_OFF_KEYS and p.type_ == Parameter.Type.BOOL else p for p in params]


def _on_off_word(node: Node, param: Parameter) -> str:
    """An on/off key's declared value as the word it stands for, also set on the node (so ``ros2 param get``
    shows it); a value of another type or word raises InvalidParameterValueException."""
    try:
        value = coerce(param.name, param.value)
    except ConfigError as exc:
        raise InvalidParameterValueException(param.name, param.value, str(exc)) from exc
    if value != param.value and not node.describe_parameter(param.name).read_only:
        node.set_parameters([Parameter(param.name, Parameter.Type.STRING, value)])
    return value


def _read_aliases(node: Node, wanted: list[str], problems: list[str]
                  ) -> tuple[dict[str, tuple[str, Any]], list[str]]:
    """Values that older names of the ``wanted`` keys got from the node's overrides, checked and typed.

    Each older name is declared untyped (so rclpy hands over its override), read and undeclared.
    Keys without effect are read when their section is one of the node's. Returns
    ``({new key: (old name, value)}, warnings)``; bad values are added to ``problems``.
    """
    sections = {name.partition(".")[0] for name in wanted}
    given: dict[str, Any] = {}
    for old, alias in ALIASES.items():
        if alias.new not in wanted and not (alias.new is None and old.partition(".")[0] in sections):
            continue
        if node.has_parameter(old):
            continue
        value = node.declare_parameter(old, None, ParameterDescriptor(
            name=old, dynamic_typing=True, description=f"older name of {alias.new}")).value
        node.undeclare_parameter(old)
        if value is not None:
            given[old] = value
    updates, notes = resolve_aliases(given)
    typed: dict[str, tuple[str, Any]] = {}
    for name, (written, value) in updates.items():
        try:
            typed[name] = (written, coerce(name, value))
        except ConfigError as exc:
            problems.append(f"{written} (now {name}): {exc}")
    return typed, notes


def validate_update(current: SageConfig, params: list[Parameter], lifecycle: str = "unconfigured"
                    ) -> tuple[SageConfig | None, SetParametersResult]:
    """Check a set-parameters request against the schema and the node's ``lifecycle`` state;
    returns (new config or None, result). Configure-time keys are refused unless unconfigured."""
    updates = {p.name: p.value for p in params if p.name in current.flat()}
    late = sorted(name for name, value in updates.items()
                  if when_applied(name) == CONFIGURE and value != current.flat()[name])
    if late and lifecycle != "unconfigured":
        return None, SetParametersResult(successful=False, reason=(
            f"{', '.join(late)} take effect only at configure and the node is {lifecycle}: "
            "deactivate and cleanup it first, then set and configure"))
    wrong = [f"{name}: {value!r} is not allowed; use {allowed_range(_FIELDS[name])}"
             for name, value in updates.items() if name in ON_OFF_KEYS and not isinstance(value, str)]
    if wrong:  # dynamically typed: say the allowed words, not only "must be a string"
        return None, SetParametersResult(successful=False, reason="invalid parameters:\n  " + "\n  ".join(wrong))
    try:
        new = current.with_updates(updates)
    except ConfigError as exc:
        return None, SetParametersResult(successful=False, reason=str(exc))
    return new, SetParametersResult(successful=True)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
