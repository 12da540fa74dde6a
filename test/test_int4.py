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

"""Four-bit weights (sage_irp_ros/weights/int4.py, gguf_int4.py, int4_loader.py): the GGUF's own blocks, the
kernel's product, the 8-bit head, the 4-bit conversion cache, and the fallback without the kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from sage_irp_ros.weights import gguf_int4

from sage_irp_ros.compat import torch_kernels
from sage_irp_ros.weights.int4 import (Int4Linear, Q8Embedding, Q8Linear, int4_layers, pack_nibbles, quantize_groups,
                                       unpack_nibbles)
from tiny_models import load_on_cpu, prompt_logits

gguf = pytest.importorskip("gguf")
CPU = torch.device("cpu")


def _kernel_or_skip():
    why = torch_kernels.int4_unavailable(CPU)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_gguf_q4_blocks_are_read_exactly(kind):
    """Blocks written by gguf's own quantiser de-quantise to gguf's own values, bit for bit."""
    weights = np.random.default_rng(0).normal(0, 0.05, size=(6, 96)).astype(np.float32)
    qtype = getattr(gguf.GGMLQuantizationType, kind)
    raw = gguf.quants.quantize(weights, qtype)
    want = gguf.quants.dequantize(raw, qtype)
    got = gguf_int4.q4_blocks(raw, kind, 96).dequantize().numpy()
    assert np.array_equal(got, want)


def test_gguf_q8_blocks_are_read_exactly():
    weights = np.random.default_rng(1).normal(0, 0.05, size=(5, 64)).astype(np.float32)
    raw = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
    q, scale = gguf_int4.q8_blocks(raw, 64)
    got = Q8Embedding(q, scale, torch.float32).dequantize().numpy()
    assert np.array_equal(got, gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0))


def test_group_quantisation_error_is_half_a_step_and_nibbles_round_trip():
    weight = torch.randn(8, 64)
    q4 = quantize_groups(weight, 32)
    step = q4.scale.float().repeat_interleave(32, dim=1)
    assert ((q4.dequantize() - weight).abs() <= step / 2 + 1e-3).all()
    assert torch.equal(unpack_nibbles(pack_nibbles(q4.q)), q4.q)


def test_q_k_row_permutation_matches_transformers():
    from transformers import modeling_gguf_pytorch_utils as loader

    processor = getattr(loader, "LlamaTensorProcessor", None) or getattr(loader, "LlamaConverter", None)
    if processor is None:
        pytest.skip("this transformers has no llama GGUF tensor processor")
    rows = torch.arange(24 * 3, dtype=torch.float32).reshape(24, 3)
    converter = processor(config={"num_attention_heads": 4, "num_key_value_heads": 4})
    want = torch.as_tensor(converter._reverse_permute_weights(rows.numpy(), 4, 4))
    assert torch.equal(rows[gguf_int4.reverse_permutation(24, 4)], want)


@pytest.mark.parametrize("rows", [1, 6])
def test_int4_linear_is_the_product_with_its_dequantised_weights(rows):
    _kernel_or_skip()
    torch.manual_seed(0)
    q4 = quantize_groups(torch.randn(48, 64) * 0.05, 32)
    layer = Int4Linear(q4, torch.randn(48), torch.float32, CPU)
    x = torch.randn(rows, 64)
    want = F.linear(x.bfloat16().float(), q4.dequantize(), layer.bias)
    assert layer.reason == "" and layer.packed.dtype == torch.uint8
    assert torch.allclose(layer(x), want, atol=0.02, rtol=0.02)  # bf16 activations and output


def test_q8_linear_is_the_8bit_product_at_int8_bytes():
    _kernel_or_skip()
    table = Q8Embedding.from_weight(torch.randn(96, 64) * 0.05, torch.float32)
    head = Q8Linear(table.q, table.scale, torch.float32, CPU)
    x = torch.randn(3, 64)
    want = F.linear(x.bfloat16().float(), table.dequantize())
    assert torch.allclose(head(x), want, atol=0.03, rtol=0.02)
    assert head.high.nbytes + head.low.nbytes < 1.3 * table.q.numel()


def test_without_the_kernel_the_same_weights_run_dequantised(monkeypatch):
    q4 = quantize_groups(torch.randn(16, 32), 32)
    monkeypatch.setattr(torch_kernels, "int4_unavailable", lambda device: "no kernel here (test)")
    layer = Int4Linear(q4, None, torch.float32, CPU)
    x = torch.randn(2, 32)
    assert layer.reason and "de-quantised" in repr(layer)
    assert torch.allclose(layer(x), F.linear(x, q4.dequantize()))
    table = Q8Embedding.from_weight(torch.randn(24, 32), torch.float32)
    head = Q8Linear(table.q, table.scale, torch.float32, CPU)
    assert head.reason and torch.allclose(head(x), F.linear(x, table.dequantize()))


def test_hf_folder_int4_replaces_every_linear_and_keeps_logits_close(tiny_plain_model_dir):
    _kernel_or_skip()
    fp32 = load_on_cpu(path=str(tiny_plain_model_dir))
    int4 = load_on_cpu(path=str(tiny_plain_model_dir), weight_quantization="int4", int4_dense_above_rows=0)
    assert int4.weight_quantization == "int4" and int4.quantized_layers == 2 * 7 + 1
    assert isinstance(int4.model.get_output_embeddings(), Q8Linear)
    assert isinstance(int4.model.get_input_embeddings(), Q8Embedding)
    assert int4.footprint_mb < 0.4 * fp32.footprint_mb
    want, got = prompt_logits(fp32), prompt_logits(int4)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8
    assert (got.log_softmax(-1) - want.log_softmax(-1)).abs().mean() < 0.1


def test_a_dense_copy_serves_products_of_more_rows_with_the_same_weights(tiny_plain_model_dir, monkeypatch):
    """The copy AMX CPUs get (made here on any CPU: the arithmetic is the same, only slower without AMX)."""
    _kernel_or_skip()
    from sage_irp_ros.compat import torch_kernels as kernels

    monkeypatch.setattr(kernels, "cpu_has_amx_bf16", lambda: True)
    lean = load_on_cpu(path=str(tiny_plain_model_dir), weight_quantization="int4", int4_dense_above_rows=0)
    dual = load_on_cpu(path=str(tiny_plain_model_dir), weight_quantization="int4", int4_dense_above_rows=4,
                       precision="bf16")
    assert dual.footprint_mb > lean.footprint_mb
    layer = next(m for m in dual.model.modules() if isinstance(m, Int4Linear))
    assert layer.dense is not None
    x = torch.randn(8, layer.in_features, dtype=torch.bfloat16)
    few = torch.cat([layer(x[:4]), layer(x[4:])])  # 4 rows each: the int4 kernel
    many = layer(x)  # 8 rows: the bf16 copy of the same weights
    assert (many.float() - few.float()).abs().max() <= 0.02 * few.float().abs().max()


def test_without_amx_int4_layers_keep_no_copy(tiny_plain_model_dir, monkeypatch):
    """int4_dense_above_rows asks for the copy; a CPU without AMX does not get it (it would not be faster)."""
    _kernel_or_skip()
    from sage_irp_ros.compat import torch_kernels as kernels

    monkeypatch.setattr(kernels, "cpu_has_amx_bf16", lambda: False)
    lm = load_on_cpu(path=str(tiny_plain_model_dir), weight_quantization="int4", int4_dense_above_rows=3,
                     precision="bf16")  # a key no other test loads: the resident model is built here
    layers = [m for m in lm.model.modules() if isinstance(m, (Int4Linear, Q8Linear)) and not m.reason]
    assert layers and all(getattr(m, "dense", None) is None for m in layers)


def test_the_amx_probe_agrees_with_the_cpu_flags():
    from pathlib import Path

    from sage_irp_ros.compat.torch_kernels import cpu_has_amx_bf16

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists() or "flags" not in cpuinfo.read_text():
        pytest.skip("no x86 /proc/cpuinfo flags here")
    assert cpu_has_amx_bf16() <= ("amx_bf16" in cpuinfo.read_text().split())  # the OS may still refuse tiles


def test_auto_is_int4_on_cpu_only_where_the_kernel_is_usable(monkeypatch):
    from sage_irp_ros.weights import loader as model_loader

    monkeypatch.setattr(model_loader, "int4_unavailable", lambda device: "")
    assert model_loader.resolve_quantization("auto", CPU) == "int4"
    assert model_loader.resolve_quantization("int8", CPU) == "int8"
    monkeypatch.setattr(model_loader, "int4_unavailable", lambda device: "no kernel (test)")
    assert model_loader.resolve_quantization("auto", CPU) == "none"


@pytest.fixture(scope="module")
def cache4(tmp_path_factory):
    return tmp_path_factory.mktemp("cache4")


def test_embedded_gguf_int4_cache_is_the_gguf_exactly(cache4):
    """The cache's 4-bit tensors de-quantise to the very weights of the fp32 conversion (the same blocks),
    the folder says its format and is a fifth of the fp32 copy."""
    from safetensors.torch import load_file

    from sage_irp_ros.weights.embedded_model import converted_gguf, embedded_gguf
    from sage_irp_ros.weights.int4 import Int4Weight
    from sage_irp_ros.weights.int4_loader import WEIGHTS, converted_int4, folder_format
    from sage_irp_ros.weights.cache import entries

    folder = converted_int4(embedded_gguf(), cache4)
    assert converted_int4(embedded_gguf(), cache4) == folder  # converted once
    stored = load_file(str(folder / WEIGHTS))
    plain = load_on_cpu(pack_cpu_weights=False).model.state_dict()
    modules = [k.removesuffix(".q4") for k in stored if k.endswith(".q4")]
    assert len(modules) == 210
    for module in modules:
        weight = Int4Weight(unpack_nibbles(stored[f"{module}.q4"]), stored[f"{module}.scale"],
                            stored[f"{module}.minimum"])
        assert torch.equal(weight.dequantize(), plain[f"{module}.weight"]), module
    table = Q8Embedding(stored["model.embed_tokens.q8"], stored["model.embed_tokens.scale8"], torch.float32)
    assert torch.equal(table.dequantize(), plain["model.embed_tokens.weight"])
    assert folder_format(folder) == gguf_int4.FORMAT
    sizes = dict(entries(cache4))
    assert sizes[folder] < 120 * 2**20
    assert folder_format(converted_gguf(embedded_gguf())) == "fp32"


def test_embedded_model_loads_from_the_4bit_cache(cache4):
    _kernel_or_skip()
    int4 = load_on_cpu(weight_quantization="int4", cache_dir=str(cache4))
    fp32 = load_on_cpu()
    assert int4.quantized_layers == len(int4_layers(int4.model)) == 211  # 210 Linear layers and the head
    assert isinstance(int4.model.get_output_embeddings(), Q8Linear)
    assert int4.footprint_mb < 0.3 * fp32.footprint_mb
    want, got = prompt_logits(fp32), prompt_logits(int4)  # the same weights; bf16 activations
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.8
    assert (got.log_softmax(-1) - want.log_softmax(-1)).abs().mean() < 0.1
    assert not any(t.is_meta for t in int4.model.parameters())
