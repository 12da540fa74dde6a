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

"""SystemProbe: one normalised :class:`SystemSnapshot` per call, from the best available backend.

Every read starts from sysfs/procfs (thermal zones with trip points, cooling devices, over-current
counters, devfreq, cpufreq, meminfo) and overlays the chosen backend's richer fields; then the
throttle detector runs over the result. Backend choice (``diagnostics.backend``):

- ``auto``: jtop, then NVML, then sysfs. A backend that is simply absent (package not installed, no
  NVIDIA driver) is skipped quietly; a jtop that is installed but whose service is missing, denied
  or of another version is a *degraded* fallback (the Probe status turns WARN) and is retried with
  exponential back-off.
- ``jtop`` / ``nvml``: that backend, else sysfs (always degraded when it fails).
- ``sysfs``: sysfs only.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from sage_irp_ros.config.settings import DiagnosticsConfig
from sage_irp_ros.diagnostics.probes.hardware import hardware_id
from sage_irp_ros.diagnostics.probes.jtop_backend import JtopBackend
from sage_irp_ros.diagnostics.probes.nvml_backend import NvmlBackend
from sage_irp_ros.diagnostics.probes.snapshot import BackendUnavailable, SystemSnapshot
from sage_irp_ros.diagnostics.probes.sysfs import SysfsReader
from sage_irp_ros.diagnostics.probes.throttle import ThrottleDetector

AUTO_ORDER = ("jtop", "nvml", "sysfs")


class SystemProbe:
    """Reads the platform. ``backend``/``backend_reason``/``degraded`` say which backend and why.

    ``jtop_factory`` (returns an unstarted jtop-like client) and ``nvml_module`` (a ``pynvml``-like
    module) are injection points for tests; by default the real libraries are imported lazily.
    """

    def __init__(self, cfg: DiagnosticsConfig, throttle_threshold_c: float, *,
                 jtop_factory: Optional[Callable[[], Any]] = None, nvml_module: Any = None,
                 clock: Callable[[], float] = time.monotonic, retry_initial_s: float = 5.0,
                 retry_max_s: float = 300.0):
        self.cfg = cfg
        self.requested = cfg.backend
        self.reader = SysfsReader(cfg.sysfs_root)
        self.detector = ThrottleDetector(throttle_threshold_c, clock=clock)
        self._clock = clock
        self._factories: dict[str, Callable[[], Any]] = {
            "jtop": lambda: JtopBackend(jtop_factory, interval=1.0 / max(cfg.rate_hz, 0.01)),
            "nvml": lambda: NvmlBackend(nvml_module),
        }
        self._order = AUTO_ORDER if cfg.backend == "auto" else (cfg.backend, "sysfs")
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._retry_delay_s = retry_initial_s
        self._retry_at: Optional[float] = None  # when to try the preferred backend again
        self._notes: dict[str, str] = {}         # backend -> why it is not in use
        self._active: Any = None
        self.backend = "sysfs"
        self.backend_reason = ""
        self.degraded = False
        self.retries = 0
        self._select(initial=True)
        self.hardware_id = hardware_id(self.reader, getattr(self._active, "gpu_name", None))

    # -- backend selection -------------------------------------------------------------------------
    def _select(self, initial: bool = False, skip: Optional[str] = None) -> None:
        """Open the first usable backend in order, recording why earlier ones were skipped.

        ``skip`` (a backend that just failed mid-read) is left out until its retry time.
        """
        self.degraded = skip is not None
        retry = skip is not None
        for name in self._order:
            if name == "sysfs":
                self._use(None, "sysfs")
                break
            if name == skip:
                continue
            if self._notes.get(name, "").startswith("!"):
                # Permanently unavailable (not installed, no driver): do not try again.
                self.degraded = self.degraded or self.requested == name
                continue
            backend = self._factories[name]()
            try:
                backend.open()
            except BackendUnavailable as exc:
                explicit = self.requested == name
                self._notes[name] = ("!" if exc.permanent else "") + str(exc)
                # An installed jtop that cannot connect, or any explicitly requested backend that
                # fails, is a degraded fallback worth a WARN; a plain absence in auto is not.
                if explicit or not exc.permanent:
                    self.degraded = True
                if not exc.permanent:
                    retry = True
                continue
            self._notes.pop(name, None)
            self._use(backend, name)
            break
        if retry:
            if self._retry_at is not None and not initial:
                self._retry_delay_s = min(self._retry_delay_s * 2, self._retry_max_s)
            self._retry_at = self._clock() + self._retry_delay_s
        else:
            self._retry_at = None
            self._retry_delay_s = self._retry_initial_s
        self._explain()

    def _use(self, backend: Any, name: str) -> None:
        if self._active is not None and self._active is not backend:
            self._active.close()
        self._active = backend
        self.backend = name

    def _explain(self) -> None:
        parts = [f"{name}: {note.lstrip('!')}" for name, note in self._notes.items()
                 if self._order.index(name) < self._order.index(self.backend)]
        if self.requested == "auto":
            head = f"auto selected {self.backend}"
        elif self.requested == self.backend:
            head = f"{self.backend} requested"
        else:
            head = f"{self.requested} requested, fell back to {self.backend}"
        self.backend_reason = head + (" (" + "; ".join(parts) + ")" if parts else "")

    @property
    def retry_in_s(self) -> Optional[float]:
        if self._retry_at is None:
            return None
        return max(0.0, self._retry_at - self._clock())

    # -- reading -------------------------------------------------------------------------------------
    def read(self) -> SystemSnapshot:
        """One snapshot; never raises for missing hardware (fields stay None)."""
        if self._retry_at is not None and self._clock() >= self._retry_at:
            self.retries += 1
            self._select()
        snap = SystemSnapshot(stamp=time.time())
        self.reader.read(snap)
        if self._active is not None:
            try:
                self._active.read(snap)
            except BackendUnavailable as exc:
                self._fail(str(exc))
            except Exception as exc:  # noqa: BLE001 - a backend bug must not stop diagnostics
                self._fail(f"{self.backend} read failed: {type(exc).__name__}: {exc}")
        snap.source = self.backend
        snap.throttle = self.detector.update(snap)
        return snap

    def _fail(self, reason: str) -> None:
        """The active backend broke mid-read: fall back now, retry it with back-off."""
        failed = self.backend
        self._active.close()
        self._active = None
        self._notes[failed] = reason
        self._select(skip=failed)

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
