"""Declare the core's configuration keys as ROS parameters, and read them back as a SageConfig.

Each ``section.key`` of :mod:`sage_irp_ros.config` becomes a typed ROS parameter with its
description and range (visible in ``ros2 param describe`` and rqt_reconfigure). Values from a params
file or ``-p`` that do not fit are collected and reported together, naming key and allowed range.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from .config import ConfigError, SageConfig, allowed_range, describe_keys


def descriptor(name: str, f: dataclasses.Field) -> ParameterDescriptor:
    meta = f.metadata
    desc = ParameterDescriptor(name=name, description=meta.get("doc", ""),
                               additional_constraints=f"allowed: {allowed_range(f)}")
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    lo, hi = meta.get("lo"), meta.get("hi")
    if kind == "int" and lo is not None and hi is not None:
        desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    elif kind == "float" and lo is not None and hi is not None and not meta.get("lo_open"):
        desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare_config(node: Node, sections: Iterable[str] | None = None) -> SageConfig:
    """Declare the keys of ``sections`` (all when None) on ``node``; return the resulting config.

    Raises ConfigError listing every override that does not fit its key.
    """
    wanted = set(sections) if sections is not None else None
    defaults = SageConfig().flat()
    problems: list[str] = []
    values: dict[str, object] = {}
    for name, f in describe_keys():
        if wanted is not None and name.split(".", 1)[0] not in wanted:
            continue
        try:
            param = node.declare_parameter(name, defaults[name], descriptor(name, f))
            values[name] = param.value
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            hint = " (write floats with a decimal point, e.g. 85.0)" if f.type in ("float", float) else ""
            problems.append(f"{name}: {_first_line(exc)}; allowed {allowed_range(f)}{hint}")
    if problems:
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(problems))
    return SageConfig().with_updates(values)


def validate_update(current: SageConfig, params: list[Parameter]) -> tuple[SageConfig | None, SetParametersResult]:
    """Check a set-parameters request against the schema; returns (new config or None, result)."""
    updates = {p.name: p.value for p in params if p.name in current.flat()}
    try:
        new = current.with_updates(updates)
    except ConfigError as exc:
        return None, SetParametersResult(successful=False, reason=str(exc))
    return new, SetParametersResult(successful=True)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
