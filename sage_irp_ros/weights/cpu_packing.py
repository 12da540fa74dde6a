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

"""Pre-pack Linear weights for oneDNN on CPU: fast decoding of a few rows at a time.

Decoding N candidates multiplies an (N x hidden) activation by every weight matrix. PyTorch's
default CPU path (MKL sgemm on a plain row-major weight) is tuned for big matrices: on a 2-core
AMD EPYC one SmolLM2 decoding step over all Linear layers took 47 ms for 1 row but 72-94 ms for
2-8 rows, so batching candidates gained far less than the memory-bound ideal. oneDNN's inner-product
kernel on a weight reordered once into its blocked layout streams each weight once per step whatever
the row count: 32-47 ms for 1-8 rows, the same fp32 arithmetic (outputs agree to ~1e-6 relative).
This is the prepacking that ``torch.compile``'s CPU backend does, without a compile step.

The reordered weight replaces the plain one, so memory does not grow; only a tied output head
(SmolLM2, Qwen2.5: the head is the embedding matrix) gets its own packed copy, because the embedding
lookup still needs the plain matrix. LoRA layers that are not merged are left alone (peft reads their
weights in its forward). Where oneDNN is missing, the torch release is not one the oneDNN calls were
tested on (``torch_kernels``), or a probe disagrees with the plain result, the model is left as it was and
the reason is returned.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from sage_irp_ros.compat import torch_kernels
from sage_irp_ros.compat.torch_kernels import onednn_linear

# The row count oneDNN picks the weight layout for. Any row count runs on it; on the 2-core EPYC, hints
# of 2 to 64 gave the same step times for 1-40 rows, a hint of 1 was up to 2x slower for 2-8 rows
# (``python -m bench.probes.linear_kernels``).
ROWS_HINT = 4

# oneDNN compiles a kernel per input shape and keeps it in two caches (its primitive cache and ideep's
# LRU cache in PyTorch), 1024 entries each by default. Every prompt length is a new shape: measured
# +2.3 MB of RSS per distinct prompt length, 700 MB after 300 lengths. One question needs ~10 kernels
# (the prefill's and the decode steps'), so 16 entries keep what is reused and bound the memory
# (+27 MB after 150 lengths). Read at oneDNN's first use; a value already in the environment wins.
CACHE_CAPACITY = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}

# Relative error allowed between the packed and the plain product on the probe input (fp32 sums in a
# different order differ by ~1e-6; a wrong layout differs by O(1)).
_PROBE_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


class PackedLinear(nn.Module):
    """``nn.Linear`` for inference whose weight lives in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear, rows_hint: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.dtype = weight.dtype
        self.nbytes = weight.numel() * weight.element_size()
        # An opaque oneDNN tensor: kept as a plain attribute, not a parameter or buffer, so state_dict,
        # .to() and parameter counts never see it (the model is not moved or saved once packed).
        self.packed = torch_kernels.onednn_reorder_linear_weight(weight, rows_hint)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor cannot lower the op on a non-constant packed weight
            return packed_linear(x, self.packed, self.bias)
        return onednn_linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}, dtype={self.dtype}, layout=onednn-blocked"


@torch.library.custom_op("sage_irp_ros::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``PackedLinear``'s product as one opaque operator for ``torch.compile`` (``compiled_step``): inductor
    calls it as an external kernel. Its own lowering of the oneDNN op accepts only weights frozen into the
    graph (``freezing``), which copies them and bypasses the compile cache."""
    return onednn_linear(x, packed, bias)


@packed_linear.register_fake
def _packed_linear_shape(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed.shape[0]))  # a packed weight keeps its (out, in) size


def pack_linear_weights(model: nn.Module, rows_hint: int = ROWS_HINT) -> tuple[int, str]:
    """Replace the plain ``nn.Linear`` layers of a CPU model by ``PackedLinear``.

    ``rows_hint`` is the row count the weight layout is chosen for; any row count works on it.
    Returns (layers packed, reason when none were).
    """
    why_not = torch_kernels.unavailable("onednn_linear")
    if why_not:
        return 0, why_not
    targets = [(parent, name, child) for parent, name, child in _plain_linears(model)]
    if not targets:
        return 0, "no plain nn.Linear layers (unmerged LoRA layers are not packed)"
    if targets[0][2].weight.dtype not in _PROBE_TOLERANCE or targets[0][2].weight.device.type != "cpu":
        return 0, f"packing is for fp32/bf16 CPU weights, not {targets[0][2].weight.dtype} on " \
                  f"{targets[0][2].weight.device}"
    for name, value in CACHE_CAPACITY.items():
        os.environ.setdefault(name, value)
    try:
        _probe(targets[0][2], rows_hint)
    except Exception as exc:  # op missing at run time, unsupported CPU, wrong result
        return 0, f"oneDNN probe failed: {type(exc).__name__}: {exc}"
    with torch.no_grad():
        for parent, name, child in targets:
            setattr(parent, name, PackedLinear(child, rows_hint))
    return len(targets), ""


def packed_bytes(model: nn.Module) -> int:
    """Bytes held by packed weights (not counted by ``model.parameters()``)."""
    return sum(m.nbytes for m in model.modules() if isinstance(m, PackedLinear))


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedLinear) for m in model.modules())


def _plain_linears(model: nn.Module):
    """(parent, attribute, module) of every exact ``nn.Linear`` outside peft's tuner layers."""
    skip: set[int] = set()
    for module in model.modules():
        if type(module).__module__.startswith("peft.") and hasattr(module, "base_layer"):
            skip.update(id(m) for m in module.modules())
    for parent in model.modules():
        if id(parent) in skip:
            continue
        for name, child in parent.named_children():
            if type(child) is nn.Linear and id(child) not in skip:
                yield parent, name, child


@torch.no_grad()
def _probe(linear: nn.Linear, rows_hint: int) -> None:
    """Check the packed product against the plain one for 1 and ``rows_hint`` rows."""
    packed = PackedLinear(linear, rows_hint)
    generator = torch.Generator().manual_seed(0)
    for rows in sorted({1, rows_hint}):
        x = torch.randn(rows, linear.in_features, generator=generator).to(linear.weight.dtype)
        want = torch.nn.functional.linear(x, linear.weight, linear.bias).float()
        got = packed(x).float()
        error = ((got - want).abs().max() / want.abs().max().clamp_min(1e-6)).item()
        if not error <= _PROBE_TOLERANCE[linear.weight.dtype]:
            raise ValueError(f"packed result differs from the plain one by {error:.2e} (relative)")
