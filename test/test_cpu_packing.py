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

"""oneDNN weight packing on CPU (model.pack_cpu_weights): same answers, loud fallback."""

import logging
import os
import shutil

import pytest
import torch
from torch import nn

from sage_irp_ros.weights import cpu_packing
from sage_irp_ros.weights.cpu_packing import PackedLinear, is_packed, pack_linear_weights
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from tiny_models import load_on_cpu, prompt_logits

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


def _load(path, pack=True, precision="fp32", **model):
    return load_on_cpu(path=str(path), precision=precision, pack_cpu_weights=pack, **model)


def _logits(lm):
    return prompt_logits(lm, "What is 2+2? The answer is")


def _linears(model):
    return [m for m in model.modules() if type(m) is nn.Linear]


def test_packed_model_gives_the_plain_models_logits_and_tokens(tiny_model_dir):
    plain, packed = _load(tiny_model_dir, pack=False), _load(tiny_model_dir, pack=True)
    assert plain is not packed  # packing is part of the resident model's identity
    assert plain.packed_layers == 0 and not is_packed(plain.model)
    assert packed.packed_layers == len(_linears(plain.model)) > 0 and not _linears(packed.model)
    torch.testing.assert_close(_logits(packed), _logits(plain), rtol=1e-5, atol=1e-5)
    torch.manual_seed(3)
    want = TorchGenerator(plain).generate(GenerationRequest([5, 6, 7], [0.7, 0.6, 0.5], 12, min_new_tokens=12))
    torch.manual_seed(3)
    got = TorchGenerator(packed).generate(GenerationRequest([5, 6, 7], [0.7, 0.6, 0.5], 12, min_new_tokens=12))
    assert [c.token_ids for c in got.candidates] == [c.token_ids for c in want.candidates]


def test_tied_head_gets_its_own_copy_and_is_counted(tiny_model_dir):
    plain, packed = _load(tiny_model_dir, pack=False), _load(tiny_model_dir, pack=True)
    head = packed.model.lm_head
    assert isinstance(head, PackedLinear)
    # the embedding keeps its plain matrix for the lookup; the head's packed copy is extra memory
    assert packed.model.model.embed_tokens.weight.shape == (head.out_features, head.in_features)
    extra_mb = head.nbytes / 2**20
    assert packed.footprint_mb == pytest.approx(plain.footprint_mb + extra_mb, rel=1e-6)


@pytest.mark.skipif(not torch.backends.cpu.get_cpu_capability().startswith("AVX512"),
                    reason="oneDNN's bf16 weight packing needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT")
def test_bf16_weights_are_packed_too(tiny_model_dir):
    plain, packed = _load(tiny_model_dir, pack=False, precision="bf16"), \
        _load(tiny_model_dir, pack=True, precision="bf16")
    assert packed.packed_layers > 0 and packed.dtype == torch.bfloat16
    torch.testing.assert_close(_logits(packed).float(), _logits(plain).float(), rtol=0.05, atol=0.05)


def test_unmerged_lora_layers_are_left_to_peft(tiny_model_dir, tiny_adapter_dir):
    plain = _load(tiny_model_dir, pack=False, adapter_path=str(tiny_adapter_dir), merge_adapter=False)
    packed = _load(tiny_model_dir, pack=True, adapter_path=str(tiny_adapter_dir), merge_adapter=False)
    lora_layers = [m for m in packed.model.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]
    assert lora_layers and all(type(m.base_layer) is nn.Linear for m in lora_layers)
    assert 0 < packed.packed_layers < len(_linears(plain.model))  # the rest of the model is packed
    torch.testing.assert_close(_logits(packed), _logits(plain), rtol=1e-5, atol=1e-5)


def test_a_failed_probe_leaves_the_model_plain_and_says_why(tiny_model_dir, tmp_path, monkeypatch, caplog):
    tiny_model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")  # not the resident copy
    monkeypatch.setitem(cpu_packing._PROBE_TOLERANCE, torch.float32, -1.0)  # no result can pass
    with caplog.at_level(logging.INFO, logger="sage_irp_ros.weights.loader"):
        lm = _load(tiny_model_dir, pack=True)
    assert lm.packed_layers == 0 and not is_packed(lm.model)
    assert "weights left unpacked (oneDNN probe failed" in caplog.text
    monkeypatch.undo()
    torch.testing.assert_close(_logits(lm), _logits(_load(tiny_model_dir, pack=False)))


def test_half_precision_is_not_packed():
    model = nn.Sequential(nn.Linear(8, 8)).half()
    assert pack_linear_weights(model) == (0, "packing is for fp32/bf16 CPU weights, not torch.float16 on cpu")
    assert type(model[0]) is nn.Linear


def test_packed_linear_with_bias_matches_for_any_row_count():
    torch.manual_seed(0)
    linear = nn.Linear(48, 40)
    model = nn.Sequential(linear)
    reference = nn.Linear(48, 40)
    reference.load_state_dict(linear.state_dict())
    assert pack_linear_weights(model, rows_hint=5) == (1, "")
    with torch.inference_mode():
        for shape in [(1, 48), (3, 48), (8, 48), (2, 7, 48)]:
            x = torch.randn(shape)
            torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_packing_bounds_onednns_shape_caches_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")  # the user's own choice
    assert pack_linear_weights(nn.Sequential(nn.Linear(8, 8))) == (1, "")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16" and os.environ["LRU_CACHE_CAPACITY"] == "64"
