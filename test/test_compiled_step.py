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

"""The compiled decode step (sage_irp_ros/decoding/compiled_step.py) serving the decode engine's fixed shapes.

One test compiles with inductor (the tiny random Llama: seconds cold, about two warm); the others use
dynamo's ``eager`` backend or a backend of their own, which trace the same graph without generating code.
"""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from packaging.specifiers import SpecifierSet

from sage_irp_ros.compat import versions
from sage_irp_ros.decoding import compiled_step
from sage_irp_ros.decoding.generator import GenerationRequest
from sage_irp_ros.decoding.compiled_step import CompiledStep, bucket_length, bucket_rows, why_not
from sage_irp_ros.config.settings import IRPConfig
from sage_irp_ros.weights.embedded_model import transformers_major
from sage_irp_ros.decoding.torch_generator import TorchGenerator
from sage_irp_ros.irp.engine import IRPEngine
from tiny_models import load_on_cpu

TEMPS = [0.0, 0.9, 0.0]  # two greedy rows and a sampled one: 3 rows, padded to 4

# transformers 4.57's static cache made dynamo compile one graph per position (5 graphs for one shape):
# compiled_step.why_not refuses it, and the graph-counting tests run on 5.x only.
needs_transformers_5 = pytest.mark.skipif(int(transformers_major()) < 5,
                                          reason="the compiled step is tested with transformers 5.x only")


@pytest.fixture(autouse=True)
def _compile_allowed(monkeypatch):
    monkeypatch.delenv("SAGE_IRP_ROS_COMPILE", raising=False)


@pytest.fixture(scope="module")
def tiny(tiny_plain_model_dir):
    return load_on_cpu(path=str(tiny_plain_model_dir))


def _request(lm, temps=TEMPS, tokens=12):
    ids = lm.tokenizer("What is 2+2? Answer:")["input_ids"]
    return GenerationRequest(ids, temps, tokens, min_new_tokens=tokens)


def _generate(lm, step_fn=None, seed=0, **kw):
    torch.manual_seed(seed)
    return TorchGenerator(lm, step_fn=step_fn).generate(_request(lm, **kw))


def _tokens(batch):
    return [c.token_ids for c in batch.candidates]


class _Counting:
    """A torch.compile backend that counts compiled graphs and calls (``eager`` otherwise)."""

    def __init__(self, block: threading.Event | None = None, fail: bool = False, fail_call: bool = False):
        self.graphs, self.calls, self.block, self.fail, self.fail_call = 0, 0, block, fail, fail_call

    def __call__(self, gm, example_inputs):
        if self.block is not None:
            self.block.wait(30)
        if self.fail:
            raise RuntimeError("no compiler today")
        self.graphs += 1

        def run(*args):
            self.calls += 1
            if self.fail_call:
                raise RuntimeError("kernel crashed")
            return gm.forward(*args)
        return run


def test_buckets():
    assert [bucket_rows(n) for n in (1, 2, 3, 4, 5, 6, 8, 9, 64, 65)] == [1, 2, 4, 4, 8, 8, 8, 16, 64, 65]
    assert bucket_length(190, 8192) == 256 and bucket_length(256, 8192) == 256 and bucket_length(257, 8192) == 512
    assert bucket_length(300, 400) == 400  # capped by the context window
    assert bucket_length(450, 400) == 450  # never below what the request needs


@needs_transformers_5
def test_why_not(monkeypatch):
    cpu = torch.device("cpu")
    assert why_not("off", cpu) == "llm_irp.compile is off"
    assert why_not("on", cpu) == ""  # torch 2.13 and g++ here
    assert why_not("auto", cpu) == compiled_step.AUTO_ON_CPU  # by measurement: eager on a CPU
    assert "mps" in why_not("auto", torch.device("mps"))
    monkeypatch.setattr(compiled_step.shutil, "which", lambda name: None)
    assert "C++ compiler" in why_not("on", cpu)
    monkeypatch.setattr(versions, "TESTED_TORCH", SpecifierSet(">=9"))
    assert "outside the versions" in why_not("on", cpu)


def test_transformers_4_is_refused(monkeypatch):
    from sage_irp_ros.weights import embedded_model

    monkeypatch.setattr(embedded_model, "transformers_major", lambda: "4")
    assert "transformers 5.x only" in why_not("on", torch.device("cpu"))


def test_off_is_honoured(tiny, monkeypatch):
    assert compiled_step.for_model(tiny, "off") is None
    assert IRPEngine(tiny, IRPConfig(compile="off")).generator.step_fn is None
    assert IRPEngine(tiny, IRPConfig(compile="auto")).generator.step_fn is None  # auto: eager on CPU
    monkeypatch.setenv("SAGE_IRP_ROS_COMPILE", "off")  # the environment overrides on
    assert IRPEngine(tiny, IRPConfig(compile="on")).generator.step_fn is None


def test_on_where_unknown_warns_once_and_decodes_eagerly(tiny, monkeypatch, caplog):
    monkeypatch.setattr(versions, "TESTED_TORCH", SpecifierSet(">=9"))
    with caplog.at_level(logging.WARNING):
        assert compiled_step.for_model(tiny, "on") is None
        assert compiled_step.for_model(tiny, "on") is None
    said = [r.getMessage() for r in caplog.records if "outside the versions" in r.getMessage()]
    assert len(said) <= 1 and all("eagerly" in m for m in said)


def test_inductor_step_gives_the_eager_tokens(tiny):
    """Compiled (inductor, padded to 4 rows, cache bucketed to 256) = eager (3 rows, exact cache length)."""
    step = CompiledStep(tiny.model, context_window=tiny.context_window, background=False)
    step.request([step.shapes(3, len(_request(tiny).prompt_ids) + 12)])
    assert not step.failed and step.ready_shapes == {(4, 256)}
    want, got = _generate(tiny), _generate(tiny, step)
    assert _tokens(got) == _tokens(want)
    for a, b in zip(got.candidates, want.candidates):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_padding_rows_do_not_change_the_rows_or_the_random_draws(tiny):
    """The eager step at the bucketed shapes (no compiled shape ready) samples exactly as without them."""
    step = CompiledStep(tiny.model, context_window=tiny.context_window, backend=_Counting(fail=True))
    step.failed = "never compile in this test"
    for seed in (0, 1):
        want = _generate(tiny, seed=seed, temps=[0.9, 1.2, 0.7])
        got = _generate(tiny, step, seed=seed, temps=[0.9, 1.2, 0.7])
        assert _tokens(got) == _tokens(want)


def test_compile_error_falls_back_to_eager_with_one_warning(tiny, caplog):
    step = CompiledStep(tiny.model, context_window=tiny.context_window, backend=_Counting(fail=True),
                        background=False)
    with caplog.at_level(logging.WARNING):
        step.request([(4, 256)])
        got = _generate(tiny, step)
    assert "no compiler today" in step.failed and not step.ready_shapes
    assert sum("decoding eagerly" in r.getMessage() for r in caplog.records) == 1
    assert _tokens(got) == _tokens(_generate(tiny))


def test_a_failing_compiled_call_is_redone_eagerly(tiny, caplog):
    backend = _Counting()
    step = CompiledStep(tiny.model, context_window=tiny.context_window, backend=backend, background=False)
    step.request([(4, 256)])
    backend.calls, backend.fail_call = 0, True
    with caplog.at_level(logging.WARNING):
        got = _generate(tiny, step)
    assert backend.calls == 1 and "kernel crashed" in step.failed
    assert _tokens(got) == _tokens(_generate(tiny))  # the cache was rewound before the eager step


@needs_transformers_5
def test_background_compile_swaps_in_while_eager_answers(tiny):
    release = threading.Event()
    backend = _Counting(block=release)
    step = CompiledStep(tiny.model, context_window=tiny.context_window, backend=backend)
    want = _generate(tiny)
    got = _generate(tiny, step)  # asks for (4, 256) on its first step; the compile blocks in the backend
    assert _tokens(got) == _tokens(want) and backend.calls == 0 and not step.ready_shapes
    release.set()
    assert step.wait(60) and step.ready_shapes == {(4, 256)}
    before = backend.calls
    assert _tokens(_generate(tiny, step)) == _tokens(want)
    assert backend.calls - before == 11  # every step after the prefill'd first token ran compiled
    assert backend.graphs == 1  # one graph for every question of this shape


@needs_transformers_5
def test_engine_queues_its_usual_shape_and_keeps_one_step_per_model(tiny, monkeypatch):
    backend = _Counting()
    monkeypatch.setattr(compiled_step, "DEFAULT_BACKEND", backend)
    # the default question: two prompts (the plain one: greedy + sampled rows; a variant: sampled rows)
    cfg = IRPConfig(candidates=3, max_tokens=20, compile="on", sampled_prompts="2", stopping="off")
    engine = IRPEngine(tiny, cfg)
    step = engine.generator.step_fn
    assert isinstance(step, CompiledStep) and IRPEngine(tiny, cfg).generator.step_fn is step
    assert step.wait(60)
    assert (bucket_rows(IRPEngine.usual_rows(cfg)), 256) in step.ready_shapes
    assert len(engine.round_requests(engine.init_state("What is 2+2?"))) == 2  # two prompts, one engine
    before, calls = backend.calls, step.calls
    refined = engine.refine("What is 2+2?")
    assert len(refined.irp.energies) == 4 and refined.irp.step == "compiled"
    longest = max(len(c.token_ids) for c in refined.candidates)
    # one compiled call per forward pass of the engine: as many as the longest row's tokens after its first
    assert backend.calls - before == step.calls - calls >= longest - 1 > 0


@needs_transformers_5
def test_cli_cache_warm_compiles_the_configured_shapes(tiny_plain_model_dir, tmp_path, monkeypatch, capsys):
    from sage_irp_ros.tools import cli

    monkeypatch.setattr(compiled_step, "DEFAULT_BACKEND", _Counting())
    config = tmp_path / "sage.yaml"
    config.write_text(f"model:\n  path: {tiny_plain_model_dir}\n  device: cpu\n  precision: fp32\n"
                      "llm_irp:\n  candidates: 3\n  max_tokens: 40\nthrottle:\n  max_tokens: 16\n", encoding="utf-8")
    assert cli.main(["cache", "warm", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "4 rows x 256 positions" in out and "1 rows x 256 positions" in out and "decode step ready" in out
    monkeypatch.setattr(versions, "TESTED_TORCH", SpecifierSet(">=9"))
    assert cli.main(["cache", "warm", "--config", str(config)]) == 1  # where compiling is not known to work


@needs_transformers_5
def test_pooled_cache_as_for_cuda_graphs_is_reused_and_gives_the_eager_tokens(tiny):
    """CUDA graphs need one cache per shape for every question (fixed addresses); the same logic on CPU."""
    backend = _Counting()
    step = CompiledStep(tiny.model, context_window=tiny.context_window, backend=backend, background=False)
    step.pooled = True
    step.request([(4, 256)])
    pooled = step._pool[(4, 256)]
    for text in ("What is 2+2? Answer:", "Are you aware of this conversation?"):
        ids = tiny.tokenizer(text)["input_ids"]
        request = GenerationRequest(ids, TEMPS, 10, min_new_tokens=10)
        torch.manual_seed(0)
        want = TorchGenerator(tiny).generate(request)
        torch.manual_seed(0)
        got = TorchGenerator(tiny, step_fn=step).generate(request)
        assert _tokens(got) == _tokens(want)
    assert step._pool[(4, 256)] is pooled and backend.graphs == 1
