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

"""PyTorch's private kernels, in one place, each used only on the torch versions it was tested on.

The fast paths call operators that are not part of PyTorch's public API:

- ``torch.ops.mkldnn._reorder_linear_weight`` and ``torch.ops.mkldnn._linear_pointwise``: a Linear whose
  weight is reordered once into oneDNN's blocked layout (``cpu_packing``);
- ``torch._weight_int8pack_mm``: the weight-only int8 matrix product (``quantize``);
- ``torch._weight_int4pack_mm_for_cpu`` / ``torch.ops.aten._convert_weight_to_int4pack_for_cpu`` (CPU) and
  ``torch._weight_int4pack_mm`` / ``torch._convert_weight_to_int4pack`` (CUDA, sm80+: the tinygemm kernel):
  the weight-only int4 product with one scale and zero per group of input columns (``int4``);
- ``torch.cpu._is_avx512_bf16_supported``: whether the CPU multiplies bf16 natively (``precision: auto``;
  a probe only: absent or failing means "not known to be native", on any torch).

A private operator may change its signature or its numbers, or disappear, in any torch release, so every
such call goes through this module: on a torch inside ``TESTED_TORCH`` (and where the operator exists) the
caller gets the operator itself; elsewhere it gets the plain path (``nn.Linear`` left unpacked, the int8
product through public ops) and one log line says which kernel was skipped and why. A new private kernel
(for example the int4 ones, ``torch._weight_int4pack_mm_for_cpu`` and
``torch.ops.aten._convert_weight_to_int4pack_for_cpu``) is added here the same way: an entry in
``TESTED_TORCH``, a check through ``unavailable`` and a thin call, so ``cpu_packing`` / ``quantize`` / ``int4``
never name ``torch._*`` or ``torch.ops`` themselves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from packaging.version import Version
import torch

from sage_irp_ros.compat import once, versions

log = logging.getLogger(__name__)

# The private calls below are used on the torch releases of versions.TESTED_TORCH only. Widen that range
# only after running test/test_cpu_packing.py, test/test_decode.py, test/test_torch_kernels.py and
# test/test_compiled_step.py on the new release.
KERNELS = ("onednn_linear", "int8_weight_mm", "int4_weight_mm")


def torch_version() -> Version:
    """The running torch's release (``2.13.0+cpu`` -> ``2.13.0``: local build tags are ignored)."""
    return Version(Version(torch.__version__).base_version)


def is_tested() -> bool:
    """Whether the running torch is inside :data:`~sage_irp_ros.compat.versions.TESTED_TORCH`."""
    return torch_version() in versions.TESTED_TORCH


def _missing(kernel: str) -> str:
    """What this torch build lacks for ``kernel`` ('' when the operators are there)."""
    if kernel == "onednn_linear":
        if not torch.backends.mkldnn.is_available() or _LINEAR_POINTWISE is None:
            return "this torch build has no oneDNN (mkldnn) linear kernels"
        return ""
    if kernel == "int8_weight_mm":
        return "" if hasattr(torch, "_weight_int8pack_mm") else "this torch build has no _weight_int8pack_mm"
    if kernel == "int4_weight_mm":
        if not hasattr(torch, "_weight_int4pack_mm_for_cpu") or _op_overload(
                "aten", "_convert_weight_to_int4pack_for_cpu") is None:
            return "this torch build has no CPU int4 kernel (_weight_int4pack_mm_for_cpu)"
        return ""
    raise KeyError(f"unknown kernel {kernel!r}; known: {sorted(KERNELS)}")


def unavailable(kernel: str) -> str:
    """'' when ``kernel`` may be used here; otherwise why not (an untested torch is logged once per kernel)."""
    missing = _missing(kernel)
    if missing:
        return missing
    if is_tested():
        return ""
    reason = (f"torch {torch.__version__} is outside the versions the private {kernel} kernel was tested on "
              f"(torch{versions.TESTED_TORCH}): using the plain PyTorch path")
    once.warn_once(log, f"kernel:{kernel}", reason)
    return reason


# -- oneDNN blocked-layout Linear (cpu_packing) ------------------------------------------------------------
def _op_overload(namespace: str, name: str) -> Callable[..., torch.Tensor] | None:
    try:
        return getattr(getattr(torch.ops, namespace), name).default
    except (AttributeError, RuntimeError):
        return None


# Resolved once: a SmolLM2 decoding step makes 211 Linear calls.
_LINEAR_POINTWISE = _op_overload("mkldnn", "_linear_pointwise")


def onednn_reorder_linear_weight(weight: torch.Tensor, rows_hint: int) -> torch.Tensor:
    """``weight`` reordered into oneDNN's blocked layout for about ``rows_hint`` rows (an opaque tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``packed`` from ``onednn_reorder_linear_weight`` (no fused post-op)."""
    return _LINEAR_POINTWISE(x, packed, bias, "none", [], "")


# -- weight-only int8 product (quantize) ---------------------------------------------------------------
def _int8_weight_mm_plain(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The same product as ``torch._weight_int8pack_mm`` through public ops (converts the weight per call)."""
    return torch.mm(x, qweight.to(x.dtype).t()) * scale.to(x.dtype)


def int8_weight_mm_kernel() -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x [rows, in], int8 weight [out, in], scale [out]) -> x @ (weight * scale[:, None]).T``.

    PyTorch's int8 kernel on a tested torch, else the plain product (same numbers up to rounding, slower);
    resolved once by the caller, so the per-step cost is the kernel's own.
    """
    return _int8_weight_mm_plain if unavailable("int8_weight_mm") else torch._weight_int8pack_mm


# -- weight-only int4 product (int4) ---------------------------------------------------------------------
INT4_ACTIVATION = torch.bfloat16  # the dtype both int4 kernels take activations (and scales) in


def int4_unavailable(device: torch.device) -> str:
    """'' when the int4 kernel may be used on ``device``; otherwise why not."""
    why = unavailable("int4_weight_mm")
    if why or device.type == "cpu":
        return why
    if device.type != "cuda":
        return f"no int4 kernel for {device.type} devices"
    if not hasattr(torch, "_weight_int4pack_mm") or not hasattr(torch, "_convert_weight_to_int4pack"):
        return "this torch build has no CUDA int4 kernel (_weight_int4pack_mm)"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "the CUDA int4 kernel needs compute capability 8.0 or newer (Ampere, Jetson Orin)"
    return ""


def int4_pack(q: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The kernel's layout of ``q`` (uint8 [out, in], values 0..15), on ``device`` (an opaque tensor)."""
    if device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
    nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).to(device)  # the CUDA packer takes two per byte
    tiles = next(t for t in (8, 4, 2) if q.shape[1] % (16 * t) == 0)
    return torch._convert_weight_to_int4pack(nibbles.contiguous(), tiles)


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_zeros: torch.Tensor) -> torch.Tensor:
    """``x [rows, in] (bf16) -> [rows, out]`` with ``w = (q - 8) * scale + zero`` per group of ``group_size``
    input columns; ``scales_zeros`` is ``[in / group_size, out, 2]`` (scale, zero) in bf16."""
    if x.device.type == "cpu":
        return torch._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_zeros)
    return torch._weight_int4pack_mm(x, packed, group_size, scales_zeros)


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Sapphire Rapids and later Xeons).

    There a bf16 product reads its weights once for any number of rows (a SmolLM2 MLP product: 118-127 us
    at 1-16 rows), so a bf16 copy of int4 weights pays for batched steps; with AVX512-BF16 alone it does
    not (docs/performance.md, "A CPU forward on every CPU").
    """
    return _cpu_probe("_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 AVX512-BF16, which every AMX-BF16 CPU also has).

    There oneDNN's bf16 kernels read half the bytes of fp32 and run about 2x faster; without it bf16 is
    emulated and slower than fp32 (docs/performance.md, "Fast decode").
    """
    return _cpu_probe("_is_avx512_bf16_supported")


def _cpu_probe(name: str) -> bool:
    """``torch.cpu.<name>()``, a private capability helper: absent or failing means "not known to be there"."""
    probe = getattr(getattr(torch, "cpu", None), name, None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - private helpers of any torch version
        return False


# -- torch.compile (the compiled decode step) ---------------------------------------------------------------
def use_inductor_cache(folder: Path) -> Path:
    """Point inductor's on-disk caches (FX graphs, AOT code) at ``folder`` unless the environment already
    names one (``TORCHINDUCTOR_CACHE_DIR``, read by inductor when it compiles); returns the folder in use."""
    chosen = os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    Path(chosen).mkdir(parents=True, exist_ok=True)
    return Path(chosen)


def inductor_cxx() -> str:
    """The C++ compiler inductor is configured to run on CPU ('' when it names none)."""
    from torch._inductor import config as inductor_config

    cxx = inductor_config.cpp.cxx
    return (cxx[-1] if isinstance(cxx, tuple) else cxx) or ""


def mark_static_address(tensor: torch.Tensor) -> None:
    """Declare ``tensor`` a fixed-address input of compiled graphs (CUDA graphs neither copy nor skip it)."""
    torch._dynamo.mark_static_address(tensor)
