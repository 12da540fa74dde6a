"""The ``hardware_id`` of diagnostic statuses: Jetson model, else GPU name, else host name."""

from __future__ import annotations

from typing import Optional

from .sysfs import SysfsReader


def hardware_id(reader: SysfsReader, gpu_name: Optional[str] = None) -> str:
    """``/proc/device-tree/model`` (e.g. "NVIDIA Jetson Orin Nano Developer Kit"), else the GPU
    name reported by NVML, else the host name."""
    return reader.device_model() or (gpu_name or "").strip() or reader.hostname()
