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

"""Int8 weights for the Linear layers (and the tied embedding/output head): a quarter of fp32's bytes.

Decoding is memory-bound: every token reads every weight once, so fp32 reads 4 bytes per weight where
llama.cpp's Q4_1 reads ~0.6. ``int8`` is weight-only, per output channel (symmetric, scale = max|w| / 127);
activations stay in the model's dtype and the product is PyTorch's int8 kernel, CPU and CUDA (through
``torch_kernels``: a plain product on a torch release the kernel was not tested on). Measured on a 2-core
Xeon (docs/performance.md): a quarter of the weight memory, greedy answers close to fp32, but PyTorch's
CPU kernel is slower than fp32 (not bandwidth-bound); int8 weights with dynamically quantised int8
activations (fbgemm) were faster than fp32 but changed most greedy answers from the first token, so they
are not offered.

The tied output head of SmolLM2/Qwen2.5 is the embedding matrix: its per-output-channel int8 copy is also a
per-row int8 embedding table, so ``Int8Embedding`` looks rows up in the head's int8 weight and the fp32
matrix is dropped. A LoRA adapter must be merged first (``model_loader`` merges before calling this):
peft's unmerged layers are left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sage_irp_ros.compat import torch_kernels

MODES = ("none", "int8")


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weight, fp32 scale per output row) with ``weight ~= int8 * scale[:, None]``."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class Int8Linear(nn.Module):
    """Weight-only int8 ``nn.Linear`` (per-output-channel scales) on PyTorch's int8 kernel."""

    def __init__(self, linear: nn.Linear, qweight: torch.Tensor | None = None, scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        if qweight is None:
            qweight, scale = quantize_per_channel(linear.weight)
        self.register_buffer("qweight", qweight.to(linear.weight.device))
        dtype = linear.weight.dtype
        self.register_buffer("scale", scale.to(device=linear.weight.device, dtype=dtype))
        self.bias = linear.bias
        self._mm = torch_kernels.int8_weight_mm_kernel()  # resolved once: every layer runs it every step

    @property
    def nbytes(self) -> int:
        return self.qweight.numel() + self.scale.numel() * self.scale.element_size()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._mm(x.reshape(-1, self.in_features), self.qweight, self.scale)
        out = out.reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 per channel"


class Int8Embedding(nn.Module):
    """Embedding lookup in a per-row int8 table (the tied output head's int8 weight)."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
                 padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale.float())
        self.dtype, self.padding_idx = dtype, padding_idx
        self.num_embeddings, self.embedding_dim = qweight.shape

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return (F.embedding(ids, self.qweight).float() * F.embedding(ids, self.scale[:, None])).to(self.dtype)


def quantize_model(model: nn.Module, mode: str, device: torch.device) -> tuple[int, str]:
    """Replace plain ``nn.Linear`` layers (head included) by int8 ones; returns (layers, reason if none)."""
    if mode == "none":
        return 0, "weight_quantization is none"
    if mode not in MODES:
        raise ValueError(f"unknown weight quantization {mode!r}; choose one of {MODES}")
    from sage_irp_ros.weights.cpu_packing import _plain_linears

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = head is not None and embed is not None and head.weight is embed.weight
    count = 0
    with torch.no_grad():
        for parent, name, child in list(_plain_linears(model)):
            qweight, scale = quantize_per_channel(child.weight)
            setattr(parent, name, Int8Linear(child, qweight.to(child.weight.device), scale))
            if tied and child is head:  # the same int8 rows serve the embedding lookup
                model.set_input_embeddings(Int8Embedding(
                    qweight.to(child.weight.device), scale.to(child.weight.device), child.weight.dtype,
                    embed.padding_idx))
            count += 1
    return count, "" if count else "no plain nn.Linear layers (an unmerged LoRA adapter is not quantised)"
