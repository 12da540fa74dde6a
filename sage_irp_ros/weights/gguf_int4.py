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

"""A GGUF's weights in the 4-bit form :mod:`int4` runs, read from the file's own blocks.

For the architectures whose GGUF tensor names are known here (llama, mistral, qwen2: the embedded
SmolLM2 and Qwen2.5), every Q4_0/Q4_1 tensor becomes an :class:`~sage_irp_ros.weights.int4.Int4Weight` block for
block (Q4_1: ``w = d * q + m`` per 32 weights; Q4_0: ``w = d * (q - 8)``), so the decoded model *is* the
GGUF; q and k rows get the same permutation transformers' GGUF loader applies. The Q8_0 token embedding is
kept as Q8_0 blocks and serves the tied output head too (:class:`~sage_irp_ros.weights.int4.Q8Linear`); other tensor
types are de-quantised (``gguf.quants``) and quantised group-wise (an untied head to 8-bit blocks).
Other architectures go through transformers' own GGUF loader and are quantised group-wise.

:func:`tensors_from_gguf` returns the flat tensor dict stored in the conversion cache (``model_cache``):
``<linear>.q4`` (two weights per byte), ``<linear>.scale`` / ``<linear>.minimum`` (fp16), ``<module>.q8`` /
``<module>.scale8`` for the embedding and an untied output head (8-bit blocks: a tied head is built from the
embedding's), and every other tensor under its Hugging Face name.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from sage_irp_ros.weights.int4 import Int4Weight, Q8Embedding, group_size_for, pack_nibbles, quantize_groups

FORMAT = "int4-v1"  # bump when the stored tensors change meaning
EXACT_ARCHITECTURES = ("llama", "mistral", "qwen2")
_PERMUTED = ("llama", "mistral")  # llama.cpp's converter permutes q/k rows for these
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
EMBEDDING = "model.embed_tokens"


def hf_name(gguf_name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (None: not a known tensor)."""
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        part = _BLOCK_NAMES.get(match.group(2))
        return None if part is None else f"model.layers.{match.group(1)}.{part}.{match.group(3)}"
    stem, _, kind = gguf_name.rpartition(".")
    top = _TOP_NAMES.get(stem)
    return None if top is None else f"{top}.{kind}"


def q4_blocks(raw: np.ndarray, kind: str, width: int) -> Int4Weight:
    """The Q4_0/Q4_1 rows of a GGUF tensor (uint8 [out, bytes]) as an :class:`Int4Weight`, exactly."""
    size = 20 if kind == "Q4_1" else 18
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], width // 32, size)
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    if kind == "Q4_1":
        minimum, packed = blocks[..., 2:4].copy().view(np.float16)[..., 0], blocks[..., 4:]
    else:
        minimum, packed = (scale * np.float16(-8)).astype(np.float16), blocks[..., 2:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)  # weights 0..15 low nibbles, 16..31 high
    return Int4Weight(torch.from_numpy(q.reshape(raw.shape[0], width)), torch.from_numpy(scale.copy()),
                      torch.from_numpy(minimum.copy()))


def q8_blocks(raw: np.ndarray, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The Q8_0 rows of a GGUF tensor as (int8 [out, width], fp16 scale [out, width / 32]), exactly."""
    blocks = np.ascontiguousarray(raw).reshape(raw.shape[0], width // 32, 34)
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0]
    q = blocks[..., 2:].copy().view(np.int8)
    return torch.from_numpy(q.reshape(raw.shape[0], width)), torch.from_numpy(scale.copy())


def reverse_permutation(rows: int, heads: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's q/k permutation (transformers' ``reverse_permute_weights``)."""
    dim = rows // heads // 2
    return torch.arange(rows).reshape(heads, dim, 2).transpose(1, 2).reshape(rows)


def tensors_from_gguf(gguf: Path, config) -> tuple[dict[str, torch.Tensor], str]:
    """The cache's tensors for ``gguf`` (``config``: its transformers config) and how they were made."""
    import gguf as gguf_lib

    reader = gguf_lib.GGUFReader(str(gguf))
    arch = _field(reader, "general.architecture")
    if arch not in EXACT_ARCHITECTURES:
        return _tensors_through_transformers(gguf), f"{arch}: quantised group-wise from transformers' GGUF loader"
    out: dict[str, torch.Tensor] = {}
    kinds: dict[str, int] = {}
    for tensor in reader.tensors:
        name, kind = hf_name(tensor.name), tensor.tensor_type.name
        if name is None:
            raise ValueError(f"unknown tensor {tensor.name!r} in a {arch} GGUF")
        width = int(tensor.shape[0])  # ggml order: the first dimension is the row width
        kinds[kind] = kinds.get(kind, 0) + 1
        if name == f"{EMBEDDING}.weight" and kind == "Q8_0":
            q, scale = q8_blocks(tensor.data, width)
            out[f"{EMBEDDING}.q8"], out[f"{EMBEDDING}.scale8"] = q, scale
            continue
        if kind in ("Q4_0", "Q4_1"):
            weight = q4_blocks(tensor.data, kind, width)
        elif name == "lm_head.weight":  # the head stays 8-bit: 4 bits re-rounded changed answers
            _store_q8(out, "lm_head", _float(gguf_lib, tensor))
            continue
        else:
            value = _float(gguf_lib, tensor)
            if name == f"{EMBEDDING}.weight":
                _store_q8(out, EMBEDDING, value)
                continue
            group = group_size_for(value.shape[-1]) if value.dim() == 2 else None
            if group is None:
                out[name] = value
                continue
            weight = quantize_groups(value, group)
        if arch in _PERMUTED and (".q_proj." in name or ".k_proj." in name):
            heads = config.num_attention_heads if ".q_proj." in name else config.num_key_value_heads
            weight = weight.rows(reverse_permutation(weight.q.shape[0], heads))
        _store(out, name.removesuffix(".weight"), weight)
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    return out, f"{arch}: from the GGUF's own blocks ({summary})"


def _store(out: dict[str, torch.Tensor], module: str, weight: Int4Weight) -> None:
    out[f"{module}.q4"] = pack_nibbles(weight.q)
    out[f"{module}.scale"], out[f"{module}.minimum"] = weight.scale, weight.minimum


def _store_q8(out: dict[str, torch.Tensor], module: str, value: torch.Tensor) -> None:
    blocks = Q8Embedding.from_weight(value, torch.float32)
    out[f"{module}.q8"], out[f"{module}.scale8"] = blocks.q, blocks.scale


def _float(gguf_lib, tensor) -> torch.Tensor:
    value = np.asarray(gguf_lib.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    return torch.from_numpy(value.copy()).reshape([int(d) for d in reversed(tensor.shape)])


def _field(reader, key: str) -> str:
    field = reader.fields.get(key)
    return bytes(field.parts[field.data[0]]).decode() if field is not None else ""


def _tensors_through_transformers(gguf: Path) -> dict[str, torch.Tensor]:
    """Any architecture transformers reads: its de-quantised weights, quantised group-wise here."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out: dict[str, torch.Tensor] = {}
    linears = {name for name, m in model.named_modules() if type(m) is torch.nn.Linear}
    embedding = model.get_input_embeddings()
    embed_name = next(name for name, m in model.named_modules() if m is embedding)
    head = model.get_output_embeddings()
    head_name = next((name for name, m in model.named_modules() if m is head), None)
    tied = head is not None and head.weight is embedding.weight
    for name, value in model.state_dict().items():
        module = name.rpartition(".")[0]
        group = group_size_for(value.shape[-1]) if value.dim() == 2 else None
        eight_bit = value.dim() == 2 and value.shape[-1] % Q8Embedding.BLOCK == 0
        if module == head_name and tied:
            continue  # built from the embedding's blocks at load
        if module in (embed_name, head_name) and name.endswith(".weight") and eight_bit:
            _store_q8(out, module, value)
        elif module in linears and name.endswith(".weight") and group is not None:
            _store(out, module, quantize_groups(value, group))
        else:
            out[name] = value.float().contiguous()
        if module == embed_name and module in linears:  # not expected: an embedding is no Linear
            raise ValueError(f"{module} is both the embedding and a Linear layer")
    return out
