"""Declare the core's configuration keys as ROS parameters, and read them back as a SageConfig.

Each ``section.key`` of :mod:`sage_irp_ros.config` becomes a typed ROS parameter with its
description and range (visible in ``ros2 param describe`` and rqt_reconfigure). Values from a params
file or ``-p`` that do not fit are collected and reported together, naming key and allowed range.

When a key takes effect (:func:`when_applied`, the "applies" column of docs/interface.md):

* ``live`` — from the next question, or at once (queue bound, timers, history bounds, retention);
* ``configure`` — read when the model is loaded: ``ros2 param set`` is accepted only while the node is
  unconfigured (the next ``configure`` uses it) and refused with the reason otherwise;
* ``read-only`` — start-up only (``ParameterDescriptor.read_only``): ``ros2 param set`` is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter

from .config import ConfigError, SageConfig, allowed_range, describe_keys

LIVE, CONFIGURE, READ_ONLY = "live", "configure", "read-only"
# Keys the IRP node reads only when it loads the model (configure), and the start-up-only ones.
AT_CONFIGURE = frozenset({
    "llm_irp.device", "llm_irp.precision", "llm_irp.pack_cpu_weights", "llm_irp.power_mode",
    "llm_irp.decoder", "llm_irp.weight_quantization",
    "llm_irp.max_memory_mb", "llm_irp.memory_limit_action", "llm_irp.model_keep_alive",
    "memory.db_path"}) | {name for name, _ in describe_keys() if name.startswith("model.")}
AT_START = frozenset({"node.autostart"})
# The IRP node's keys: every section but the diagnostics node's own (diagnostics.*, the threshold).
IRP_NODE_KEYS = tuple(name for name, _ in describe_keys()
                      if not name.startswith("diagnostics.") and name != "llm_irp.thermal_throttle_threshold")


def when_applied(name: str) -> str:
    """``live``, ``configure`` or ``read-only`` for an IRP node parameter (see the module doc)."""
    return READ_ONLY if name in AT_START else CONFIGURE if name in AT_CONFIGURE else LIVE


def descriptor(name: str, f: dataclasses.Field, applies: str = LIVE) -> ParameterDescriptor:
    meta = f.metadata
    note = {LIVE: "", CONFIGURE: "; applies at configure (settable only while unconfigured)",
            READ_ONLY: "; read-only: set it at start-up"}[applies]
    desc = ParameterDescriptor(name=name, description=meta.get("doc", ""), read_only=applies == READ_ONLY,
                               additional_constraints=f"allowed: {allowed_range(f)}{note}")
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    lo, hi = meta.get("lo"), meta.get("hi")
    if kind == "int" and lo is not None and hi is not None:
        desc.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
    elif kind == "float" and lo is not None and hi is not None and not meta.get("lo_open"):
        desc.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return desc


def declare_config(node: Node, keys: Iterable[str] | None = None) -> SageConfig:
    """Declare ``keys`` (all when None) on ``node`` with :func:`when_applied`'s read-only flags;
    return the resulting config (undeclared keys keep their defaults).

    Raises ConfigError listing every override that does not fit its key.
    """
    wanted = set(keys) if keys is not None else None
    defaults = SageConfig().flat()
    problems: list[str] = []
    values: dict[str, object] = {}
    for name, f in describe_keys():
        if wanted is not None and name not in wanted:
            continue
        try:
            param = node.declare_parameter(name, defaults[name], descriptor(name, f, when_applied(name)))
            values[name] = param.value
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            hint = " (write floats with a decimal point, e.g. 85.0)" if f.type in ("float", float) else ""
            problems.append(f"{name}: {_first_line(exc)}; allowed {allowed_range(f)}{hint}")
    if problems:
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(problems))
    return SageConfig().with_updates(values)


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
    try:
        new = current.with_updates(updates)
    except ConfigError as exc:
        return None, SetParametersResult(successful=False, reason=str(exc))
    return new, SetParametersResult(successful=True)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
