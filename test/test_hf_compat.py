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

"""transformers 4.x / 5.x compatibility: shared prefill really runs once, on whichever version is installed.

scripts/test_matrix.sh runs this file on transformers 4.57.6 and the main suite runs it on 5.x, so both
major versions are covered by the same assertions.
"""

import logging

import pytest
import torch
import transformers

from sage_irp_ros.compat import hf_compat, once
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.config.settings import SageConfig
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.weights.loader import load_model


def _loaded(model_dir):
    cfg = SageConfig.from_mapping({"model": {"path": str(model_dir), "device": "cpu"}})
    return load_model(cfg.model)


class ForwardLog:
    """Records the (rows, tokens) shape of every forward call's input_ids."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self._handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.shapes.append(tuple(ids.shape))

    def close(self):
        self._handle.remove()


def test_cache_argument_is_the_one_forward_takes(tiny_model_dir):
    lm = _loaded(tiny_model_dir)
    name = hf_compat.cache_argument(lm.model)
    expected = "cache" if "cache" in hf_compat._forward_parameters(lm.model) else "past_key_values"
    assert name == expected
    if hf_compat.TRANSFORMERS_VERSION.major == 4:
        assert name == "past_key_values"


@pytest.mark.parametrize("static", [True, False])
def test_prefill_runs_once_for_all_rows(tiny_model_dir, static):
    lm = _loaded(tiny_model_dir)
    prompt = lm.tokenizer("What is the difference between knowledge and understanding?")["input_ids"]
    rows = 4
    forwards = ForwardLog(lm.model)
    try:
        torch.manual_seed(0)
        batch = TorchGenerator(lm, static_cache=static).generate(
            GenerationRequest(prompt, [0.7, 0.6, 0.5, 0.4][:rows], max_new_tokens=5))
    finally:
        forwards.close()
    assert len(batch.candidates) == rows
    prompt_passes = [shape for shape in forwards.shapes if shape[1] > 1]
    # One forward over the whole prompt for one row; everything after decodes one token per row.
    assert prompt_passes == [(1, len(prompt))], f"transformers {transformers.__version__}: {forwards.shapes}"
    assert all(shape == (rows, 1) for shape in forwards.shapes[1:])


class _NoCacheForward(torch.nn.Module):
    """A model whose forward takes no KV cache argument (as some remote-code models)."""

    config = None

    def forward(self, input_ids):
        raise AssertionError("not run")


def test_model_without_cache_argument_is_said_once(caplog):
    once.forget()
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros.compat.hf_compat"):
        assert hf_compat.new_cache(_NoCacheForward(), 16) is None
        assert hf_compat.new_cache(_NoCacheForward(), 16) is None
    said = [r.getMessage() for r in caplog.records if "takes neither" in r.getMessage()]
    assert len(said) == 1 and "_NoCacheForward" in said[0]


def test_dtype_argument_matches_the_version(tiny_model_dir):
    kwargs = hf_compat.dtype_kwargs(torch.float16)
    assert list(kwargs) == ["dtype" if hf_compat.TRANSFORMERS_VERSION >= hf_compat.Version("4.56") else "torch_dtype"]
    cfg = SageConfig.from_mapping({"model": {"path": str(tiny_model_dir), "device": "cpu", "precision": "bf16"}})
    lm = load_model(cfg.model)
    assert next(lm.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("rows", [2, 5])
def test_repeat_cache_rows(tiny_model_dir, rows, static):
    lm = _loaded(tiny_model_dir)
    cache = hf_compat.new_cache(lm.model, 8, static)
    ids = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        lm.model(input_ids=ids, use_cache=True, **hf_compat.cache_kwargs(lm.model, cache))
    assert hf_compat.cache_length(cache) == 3
    hf_compat.repeat_cache_rows(cache, rows)
    layer_keys = cache.layers[0].keys if hasattr(cache, "layers") else cache.key_cache[0]
    assert layer_keys.shape[0] == rows
