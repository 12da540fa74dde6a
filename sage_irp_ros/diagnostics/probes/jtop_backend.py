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

"""jtop (PyPI ``jetson-stats``) backend: temperatures, memory, GPU, power, nvpmodel, jetson_clocks, fan.

``jetson-stats`` is AGPL-licensed and optional, so it is imported only when this backend opens, never
at module import. The jtop client talks to the ``jtop.service`` over a socket; when the service is
missing, the user may not use it, or its version differs from the client, ``jtop.start()`` raises,
and :class:`JtopBackend.open` turns that into :class:`BackendUnavailable` with the reason.

:func:`parse_jtop` is pure: it maps the documented jtop property shapes (as recorded in
``test/data/jtop/*.json``) to snapshot fields. Readings of -256 mean "no value".
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from sage_irp_ros.diagnostics.probes.snapshot import (OFFLINE_READING, BackendUnavailable, GpuFreq, SystemSnapshot,
                                                      ThermalZone, merge)

# The jtop properties this backend reads (names of attributes on a started jtop client).
JTOP_PROPERTIES = ("temperature", "memory", "gpu", "power", "nvpmodel", "jetson_clocks", "fan")


def _plain(value: Any) -> Any:
    """jtop returns dict-like objects (GenericInterface); turn them into plain containers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "items") and callable(value.items):
        try:
            return {str(k): _plain(v) for k, v in value.items()}
        except Exception:  # noqa: BLE001 - best effort on foreign objects
            return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _num(value: Any) -> Optional[float]:
    """A finite number, or None for missing, non-numeric and -256 ("no value") readings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    if not math.isfinite(value) or value == OFFLINE_READING:
        return None
    return value


def _first(values: Any) -> Optional[float]:
    if isinstance(values, (list, tuple)):
        for v in values:
            if _num(v) is not None:
                return _num(v)
        return None
    return _num(values)


def parse_jtop(data: Mapping[str, Any]) -> dict[str, Any]:
    """Map jtop's property dicts to :class:`SystemSnapshot` field values (missing keys skipped)."""
    out: dict[str, Any] = {}
    temps = data.get("temperature") or {}
    zones = []
    for name, sensor in temps.items() if isinstance(temps, Mapping) else ():
        if not isinstance(sensor, Mapping):
            sensor = {"temp": sensor}
        temp = _num(sensor.get("temp"))
        if sensor.get("online") is False:
            temp = None
        zones.append(ThermalZone(name=str(name), temp_c=temp, source="jtop"))
    if zones:
        out["zones"] = zones

    memory = data.get("memory") or {}
    ram = memory.get("RAM") if isinstance(memory, Mapping) else None
    if isinstance(ram, Mapping):  # kB
        total, used = _num(ram.get("tot")), _num(ram.get("used"))
        if total:
            out["ram_total_mb"] = total / 1024.0
            if used is not None:  # jtop's "used" leaves out buffers and cache
                out["ram_available_mb"] = (total - used) / 1024.0
        shared = _num(ram.get("shared"))  # NvMapMemUsed (GPU), or nvidia-smi VRAM on Thor
        if shared is not None:
            out["gpu_mem_used_mb"] = shared / 1024.0
            out["gpu_mem_shared"] = ram.get("shared_label", "Shared") != "VRAM"
            if total:
                out["gpu_mem_total_mb"] = total / 1024.0
    swap = memory.get("SWAP") if isinstance(memory, Mapping) else None
    if isinstance(swap, Mapping):
        total, used = _num(swap.get("tot")), _num(swap.get("used"))
        if total is not None:
            out["swap_total_mb"] = total / 1024.0
        if used is not None:
            out["swap_used_mb"] = used / 1024.0

    gpus = data.get("gpu") or {}
    for name, gpu in gpus.items() if isinstance(gpus, Mapping) else ():
        if not isinstance(gpu, Mapping):
            continue
        freq = gpu.get("freq") if isinstance(gpu.get("freq"), Mapping) else {}
        status = gpu.get("status") if isinstance(gpu.get("status"), Mapping) else {}
        cur = _num(freq.get("cur"))
        load = _num(status.get("load"))
        if cur is not None or load is not None:  # jtop frequencies are in kHz
            out["gpu_freq"] = GpuFreq(
                name=f"jtop:{name}", cur_hz=None if cur is None else cur * 1e3,
                max_hz=None if _num(freq.get("max")) is None else _num(freq.get("max")) * 1e3,
                min_hz=None if _num(freq.get("min")) is None else _num(freq.get("min")) * 1e3,
                load_pct=load)
            out["gpu_util_pct"] = load
        break

    power = data.get("power") or {}
    if isinstance(power, Mapping):  # milliwatts
        rails = {}
        for name, rail in (power.get("rail") or {}).items():
            if isinstance(rail, Mapping) and rail.get("online", True) is not False:
                mw = _num(rail.get("power"))
                if mw is not None:
                    rails[str(name)] = mw / 1000.0
        tot = power.get("tot")
        if isinstance(tot, Mapping) and _num(tot.get("power")) is not None:
            out["power_total_w"] = _num(tot.get("power")) / 1000.0
            rails.setdefault(str(tot.get("name") or "total"), out["power_total_w"])
        if rails:
            out["power_rails_w"] = rails

    nvp = data.get("nvpmodel")
    if nvp is not None and str(nvp).strip():
        out["power_mode"] = str(nvp).strip()
    if data.get("jetson_clocks") is not None:
        out["jetson_clocks"] = bool(data["jetson_clocks"])

    fans = data.get("fan") or {}
    for fan in fans.values() if isinstance(fans, Mapping) else ():
        if isinstance(fan, Mapping):
            pct, rpm = _first(fan.get("speed")), _first(fan.get("rpm"))
            if pct is not None:
                out["fan_pct"] = pct
            if rpm is not None:
                out["fan_rpm"] = rpm
            break
    return out


def collect(client: Any) -> dict[str, Any]:
    """Read the :data:`JTOP_PROPERTIES` of a started jtop client as plain data."""
    data: dict[str, Any] = {}
    for prop in JTOP_PROPERTIES:
        try:
            value = getattr(client, prop)
        except Exception:  # noqa: BLE001 - a missing property on this jtop version
            continue
        if value is None:
            continue
        if prop == "nvpmodel":
            data[prop] = str(getattr(value, "name", value))
        elif prop == "jetson_clocks":
            data[prop] = bool(value)
        else:
            data[prop] = _plain(value)
    return data


def _default_factory(interval: float) -> Callable[[], Any]:
    def make() -> Any:
        try:
            from jtop import jtop  # lazy: jetson-stats is optional and AGPL
        except ImportError as exc:
            raise BackendUnavailable("jetson-stats (jtop) is not installed",
                                     permanent=True) from exc
        return jtop(interval=interval)
    return make


class JtopBackend:
    """Wraps a jtop client. ``factory`` returns an unstarted client (tests pass a fake)."""

    name = "jtop"

    def __init__(self, factory: Optional[Callable[[], Any]] = None, interval: float = 1.0):
        self._factory = factory or _default_factory(max(0.5, float(interval)))
        self._client: Any = None

    def open(self) -> None:
        client = self._factory()  # may raise BackendUnavailable (not installed)
        try:
            client.start()
        except BackendUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - JtopException, OSError, version mismatch ...
            _close_quietly(client)
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise BackendUnavailable(f"jtop service unavailable: {text}") from exc
        self._client = client

    def read(self, snapshot: SystemSnapshot) -> None:
        if self._client is None:
            raise BackendUnavailable("jtop is not connected")
        try:
            ok = self._client.ok(spin=True)
        except Exception as exc:  # noqa: BLE001 - the reader thread's error is re-raised here
            raise BackendUnavailable(f"jtop connection lost: {exc}") from exc
        if not ok:
            raise BackendUnavailable("jtop connection lost")
        merge(snapshot, parse_jtop(collect(self._client)))

    def close(self) -> None:
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a half-open client
        pass
