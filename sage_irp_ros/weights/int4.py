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

"""Four-bit weights: the Linear layers (output head included) read an eighth of fp32's bytes per token.

Decoding is bandwidth-bound: every token reads every weight once. ``Int4Linear`` holds 4-bit weights with
one scale and one minimum per group of ``group_size`` input columns (``w = scale * q + minimum``,
``q`` in 0..15: the form of GGUF's Q4_1 blocks; Q4_0 is the same with ``minimum = -8 * scale``) and
multiplies with PyTorch's int4 kernels (``torch_kernels.int4_mm``: bf16 activations, scale and zero in
bf16). Where the kernel is not usable (another torch, an old GPU) the layer keeps the same weights
de-quantised to the model's dtype, so answers do not depend on the kernel, only speed does.

Weights come in :class:`Int4Weight` form, either from a GGUF file's own blocks (``gguf_int4``: the model
is the GGUF, not a re-rounded copy) or quantised group-wise from float weights (:func:`quantize_groups`,
min/max per group: HF folders, other GGUF types). The token embedding and the output head stay 8-bit
(GGUF's Q8_0 blocks of 32): :class:`Q8Embedding` looks rows up, :class:`Q8Linear` runs the head as two
4-bit products, exactly; a 4-bit head changed the embedded model's answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from sage_irp_ros.compat import torch_kernels

GROUP_SIZES = (32, 64, 128)  # the first that divides a layer's input width is used


@dataclass
class Int4Weight:
    """Portable 4-bit weight: ``w[o, i] = scale[o, i // g] * q[o, i] + minimum[o, i // g]``."""

    q: torch.Tensor  # uint8 [out, in], values 0..15
    scale: torch.Tensor  # fp16 [out, in / g]
    minimum: torch.Tensor  # fp16 [out, in / g]

    @property
    def group_size(self) -> int:
        return self.q.shape[1] // self.scale.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out, width = self.q.shape
        groups = self.q.reshape(out, -1, self.group_size).float()
        w = groups * self.scale.float()[..., None] + self.minimum.float()[..., None]
        return w.reshape(out, width).to(dtype)

    def rows(self, index: torch.Tensor) -> "Int4Weight":
        """The same weight with its output rows reordered (GGUF's q/k row permutation)."""
        return Int4Weight(self.q[index], self.scale[index], self.minimum[index])


def group_size_for(width: int) -> int | None:
    """The group size used for a layer ``width`` columns wide (None: no group size divides it)."""
    return next((g for g in GROUP_SIZES if width % g == 0), None)


def quantize_groups(weight: torch.Tensor, group_size: int) -> Int4Weight:
    """Asymmetric 4-bit quantisation of ``weight`` with a min/max range per group of input columns."""
    out, width = weight.shape
    groups = weight.detach().float().reshape(out, width // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp_min(1e-8).half()
    low = low.half()
    q = torch.round((groups - low.float()[..., None]) / scale.float()[..., None]).clamp_(0, 15)
    return Int4Weight(q.to(torch.uint8).reshape(out, width), scale, low)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in] values 0..15 -> uint8 [out, in / 2] (even column in the low nibble): storage form."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dense_copy(weight: torch.Tensor, above_rows: int) -> nn.Module | None:
    """A bf16 Linear over ``weight`` (oneDNN-packed where available) for products of more than
    ``above_rows`` rows: PyTorch's CPU int4 kernel de-quantises the weight again for every block of 4 rows
    (16 rows cost 7x one row), a bf16 product on AMX reads its weight once (16 rows cost 1.1x one).

    None when ``above_rows`` is 0 or the CPU has no AMX: with AVX512-BF16 alone the copy decoded 6-8 rows
    1.13-1.16x slower than the int4 kernel and 16 rows 5 % faster, so its 2 bytes per weight are paid only
    where they win.
    """
    if above_rows <= 0 or weight.device.type != "cpu" or not torch_kernels.cpu_has_amx_bf16():
        return None
    from sage_irp_ros.weights.cpu_packing import ROWS_HINT, PackedLinear

    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.bfloat16)
    linear.weight.data = weight.to(torch.bfloat16).contiguous()
    return linear if torch_kernels.unavailable("onednn_linear") else PackedLinear(linear, ROWS_HINT)


class Int4Linear(nn.Module):
    """Weight-only 4-bit ``nn.Linear`` on PyTorch's int4 kernel (or its de-quantised weights without one).

    ``dense_above_rows`` > 0 keeps a bf16 copy too (:func:`dense_copy`), used for products of more rows.
    """

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, dtype: torch.dtype, device: torch.device,
                 dense_above_rows: int = 0):
        super().__init__()
        self.out_features, self.in_features = weight.q.shape
        self.group_size = weight.group_size
        self.bias = None if bias is None else nn.Parameter(bias.to(device=device, dtype=dtype), requires_grad=False)
        self.reason = torch_kernels.int4_unavailable(device)
        if self.reason:  # the same weights at full width: correct everywhere, only the memory win is lost
            self.register_buffer("weight", weight.dequantize(dtype).to(device))
            return
        zero = weight.minimum.float() + 8.0 * weight.scale.float()  # the kernel computes (q - 8) * scale + zero
        scales_zeros = torch.stack([weight.scale.float(), zero], dim=-1).transpose(0, 1)
        scales_zeros = scales_zeros.to(torch_kernels.INT4_ACTIVATION).contiguous()
        self.register_buffer("packed", torch_kernels.int4_pack(weight.q, device))
        self.register_buffer("scales_zeros", scales_zeros.to(device))
        self.dense_above_rows = dense_above_rows
        self.dense = dense_copy(_kernel_weight(weight.q, scales_zeros, self.group_size), dense_above_rows) \
            if dense_above_rows > 0 and device.type == "cpu" else None

    @property
    def nbytes(self) -> int:
        tensors = [self.weight] if self.reason else [self.packed, self.scales_zeros]
        return sum(t.numel() * t.element_size() for t in tensors) + _dense_bytes(getattr(self, "dense", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reason:
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(-1, self.in_features).to(torch_kernels.INT4_ACTIVATION)
        if self.dense is not None and flat.shape[0] > self.dense_above_rows:
            out = self.dense(flat).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return out if self.bias is None else out + self.bias
        out = torch_kernels.int4_mm(flat, self.packed, self.group_size, self.scales_zeros)
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        kernel = f"de-quantised ({self.reason})" if self.reason else "int4 kernel"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight=int4 group {self.group_size}, {kernel}")


class Q8Linear(nn.Module):
    """A Linear over Q8_0 blocks (the output head tied to a Q8_0 embedding), exact, on the int4 kernel.

    Each 8-bit weight ``q`` (-127..127) is split as ``q + 128 = 16 * high + low`` with two 4-bit digits, so
    ``x @ W.T`` is two int4 products: ``high`` with scale ``16 d`` and ``low`` with scale ``d`` (the -128 offset
    goes into the first product's zero). A 4-bit head re-rounded from the Q8_0 weights changed the embedded
    model's first answer token; these two products keep the GGUF's head at an int8's bytes.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, device: torch.device,
                 dense_above_rows: int = 0):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.reason = torch_kernels.int4_unavailable(device)
        self.dense_above_rows, self.dense = dense_above_rows, None
        if self.reason:  # one de-quantised copy, as Int4Linear does without the kernel
            blocks = q.reshape(q.shape[0], -1, 32).float() * scale.float()[..., None]
            self.register_buffer("weight", blocks.reshape(q.shape).to(device=device, dtype=dtype))
            return
        shifted = q.to(torch.int16) + 128
        d = scale.float()
        high = Int4Weight((shifted >> 4).to(torch.uint8), (16 * d).half(), (-128 * d).half())
        low = Int4Weight((shifted & 0x0F).to(torch.uint8), scale.half(), torch.zeros_like(scale).half())
        self.high = Int4Linear(high, None, dtype, device)
        self.low = Int4Linear(low, None, dtype, device)
        if dense_above_rows > 0 and device.type == "cpu":
            blocks = q.reshape(q.shape[0], -1, 32).float() * scale.float()[..., None]
            self.dense = dense_copy(blocks.reshape(q.shape), dense_above_rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reason:
            return F.linear(x, self.weight)
        if self.dense is not None and x.reshape(-1, self.in_features).shape[0] > self.dense_above_rows:
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            return self.dense(flat).to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return self.high(x) + self.low(x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight=int8 blocks of 32"


class Q8Embedding(nn.Module):
    """Embedding lookup in 8-bit rows with one fp16 scale per block of 32 (GGUF's Q8_0)."""

    BLOCK = 32

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, padding_idx: int | None = None):
        super().__init__()
        self.register_buffer("q", q.to(torch.int8).contiguous())
        self.register_buffer("scale", scale.half().contiguous())
        self.dtype, self.padding_idx = dtype, padding_idx
        self.num_embeddings, self.embedding_dim = q.shape

    @classmethod
    def from_weight(cls, weight: torch.Tensor, dtype: torch.dtype, padding_idx: int | None = None) -> "Q8Embedding":
        """Q8_0 blocks of a float embedding (symmetric, scale = max|w| / 127 per block of 32)."""
        rows, width = weight.shape
        blocks = weight.detach().float().reshape(rows, width // cls.BLOCK, cls.BLOCK)
        scale = (blocks.abs().amax(dim=-1) / 127.0).half()
        q = torch.round(blocks / scale.float().clamp_min(1e-12)[..., None]).clamp_(-127, 127)
        return cls(q.to(torch.int8).reshape(rows, width), scale, dtype, padding_idx)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q if rows is None else self.q[rows]
        scale = self.scale if rows is None else self.scale[rows]
        blocks = q.reshape(*q.shape[:-1], -1, self.BLOCK).float() * scale.float()[..., None]
        return blocks.reshape(q.shape).to(self.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dequantize(ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, weight=int8 blocks of {self.BLOCK}"


def _kernel_weight(q: torch.Tensor, scales_zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The float weight the int4 kernel multiplies by: ``(q - 8) * scale + zero`` with its bf16 scale and zero."""
    out, width = q.shape
    scale = scales_zeros[..., 0].float().transpose(0, 1)[..., None]  # [out, groups, 1]
    zero = scales_zeros[..., 1].float().transpose(0, 1)[..., None]
    w = (q.reshape(out, -1, group_size).float() - 8.0) * scale + zero
    return w.reshape(out, width)


def _dense_bytes(dense: nn.Module | None) -> int:
    if dense is None:
        return 0
    return getattr(dense, "nbytes", None) or dense.weight.numel() * dense.weight.element_size()


def int4_layers(model: nn.Module) -> list[nn.Module]:
    """The model's 4-bit Linear layers and 8-bit heads (a head's two 4-bit products count as one layer)."""
    inner = {id(m) for head in model.modules() if isinstance(head, Q8Linear) and not head.reason
             for m in (head.high, head.low)}
    return [m for m in model.modules() if isinstance(m, (Int4Linear, Q8Linear)) and id(m) not in inner]


def quantize_model_int4(model: nn.Module, device: torch.device, dense_above_rows: int = 0) -> tuple[int, str]:
    """Replace plain ``nn.Linear`` layers by 4-bit ones, group-wise from their float weights; the embedding
    becomes a :class:`Q8Embedding` and the output head a :class:`Q8Linear`. Returns (layers, reason if none)."""
    from sage_irp_ros.weights.cpu_packing import _plain_linears

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dtype = next(model.parameters()).dtype
    count, skipped = 0, []
    with torch.no_grad():
        table, tied = None, False
        if isinstance(embed, nn.Embedding) and embed.embedding_dim % Q8Embedding.BLOCK == 0:
            table = Q8Embedding.from_weight(embed.weight, dtype, embed.padding_idx).to(device)
            tied = head is not None and head.weight is embed.weight
            model.set_input_embeddings(table)
        for parent, name, child in list(_plain_linears(model)):
            group = group_size_for(child.in_features)
            if child is head and child.in_features % Q8Embedding.BLOCK == 0:  # the head stays 8-bit
                blocks = table if tied else Q8Embedding.from_weight(child.weight, dtype)
                setattr(parent, name, Q8Linear(blocks.q, blocks.scale, dtype, device, dense_above_rows))
                count += 1
                continue
            if group is None:
                skipped.append(name)
                continue
            setattr(parent, name, Int4Linear(quantize_groups(child.weight, group), child.bias, dtype, device,
                                             dense_above_rows))
            count += 1
        if head is not None and hasattr(model, "config"):
            model.config.tie_word_embeddings = False  # the head and the embedding are separate tensors now
    if count == 0:
        return 0, "no plain nn.Linear layers (an unmerged LoRA adapter is not quantised)"
    return count, f"{len(skipped)} layers left in float (no group size divides their width)" if skipped else ""
