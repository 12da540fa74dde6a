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

"""A compiled decode step (``llm_irp.compile``): ``torch.compile`` of the decode engine's step, never in the way.

Why: a decode step of a small model is many small ops (norms, rotary, attention, masks) around the
matrix products; eager PyTorch pays Python and dispatch overhead for each. Compiling the step fuses
them: inductor's C++ kernels on CPU, inductor + CUDA graphs (``mode="reduce-overhead"``) on CUDA.

How it stays out of the way of answering:

- **fixed shapes**: a compiled graph is specialised to its shapes, so the KV cache length is rounded up
  to a multiple of :data:`LENGTH_BUCKET` (capped by the context window) and the row count up to a power
  of two (:func:`bucket_rows`): the decode engine (:mod:`sage_irp_ros.decoding.engine`) is built at that
  shape, its slot count and cache length, so every question, and every row joining or leaving between
  steps, goes through the same graph; free slots are stepped but never sampled. A shape is compiled once
  per process, not per question;
- **in the background**: a shape is compiled on a daemon thread (warm-up on dummy inputs of that shape,
  under ``inference_mode`` like the engine); until it is ready the eager step answers, then the compiled
  function is swapped in (one attribute write per shape). ``sage_irp cache warm`` compiles ahead of time;
- **a persistent compile cache** in ``<cache dir>/compile`` (inductor's FX graph and AOT caches, via
  ``TORCHINDUCTOR_CACHE_DIR``; a value already in the environment wins), so a restart skips code
  generation;
- **never fails a question**: where compiling is not known to work (:func:`why_not`) or fails, the eager
  step is used and one WARN line says why.

The graph has no breaks for the transformers Llama family: hf_compat's signature introspection (which
argument takes the cache) is resolved once here, outside the compiled region; ``cpu_packing``'s
pre-packed weights enter the graph as one opaque operator each (inductor's own lowering of that oneDNN op
wants the weights frozen into the graph: a copy of them, and no compile cache). The CUDA path (CUDA
graphs, one pooled cache per shape) is not measured yet.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from sage_irp_ros.compat import hf_compat, torch_kernels, versions

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
AUTO_ON_CPU = "llm_irp.compile auto compiles on CUDA only (on CPU set it to on)"
ENV_OFF = "SAGE_IRP_ROS_COMPILE"  # "off" in the environment overrides llm_irp.compile (debugging, tests)
LENGTH_BUCKET = 256  # KV cache lengths are multiples of this (up to the context window)
MAX_ROW_BUCKET = 64  # row counts are powers of two up to this; above it, the count itself
DEFAULT_BACKEND = "inductor"
PROMPT_GUESS = 96  # prompt tokens assumed when queueing the usual shape ahead of the first question
MAX_SHAPES = 6  # compiled shapes per model (each is a graph in memory); other shapes run eagerly

Step = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, Any], torch.Tensor]


def bucket_rows(rows: int) -> int:
    """The compiled row count for ``rows``: the next power of two (1, 2, 4, 8 ...), or ``rows`` above 64."""
    if rows > MAX_ROW_BUCKET:
        return rows
    return 1 << max(0, rows - 1).bit_length()


def bucket_length(length: int, context_window: int) -> int:
    """The static cache length for ``length`` positions: a multiple of :data:`LENGTH_BUCKET`, capped by the
    context window (never below ``length``)."""
    rounded = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
    return max(length, min(rounded, context_window)) if context_window > 0 else rounded


def compile_cache_dir() -> Path:
    """Where compiled kernels persist between runs: ``<user cache dir>/compile``."""
    from sage_irp_ros.weights.embedded_model import default_cache_dir

    return default_cache_dir() / "compile"


def use_compile_cache(folder: Path | None = None) -> Path:
    """Keep compiled kernels in ``folder`` (default :func:`compile_cache_dir`) unless the environment
    already names a folder; returns the folder in use."""
    return torch_kernels.use_inductor_cache(Path(folder) if folder is not None else compile_cache_dir())


def why_not(mode: str, device: torch.device) -> str:
    """'' when ``mode`` asks to compile and compiling is known to work on ``device``; otherwise why not.

    ``auto`` compiles on CUDA only: on a 2-core CPU the compiled step measured 20 % faster at one row but
    slower at the default 4-8 rows with 4-bit weights, 30 s of compiling per shape and 200+ MB more memory
    (docs/performance.md, "Compiled step"); ``on`` compiles on a CPU too.
    """
    if mode == "off":
        return "llm_irp.compile is off"
    if mode not in MODES:
        return f"unknown llm_irp.compile {mode!r} (one of {', '.join(MODES)})"
    if mode == "auto" and device.type == "cpu":
        return AUTO_ON_CPU
    from sage_irp_ros.weights.embedded_model import transformers_major

    if int(transformers_major()) < 5:  # measured: 4.57's static cache recompiled the step at every position
        return "compiling the decode step was tested with transformers 5.x only"
    if not torch_kernels.is_tested():
        return (f"torch {torch.__version__} is outside the versions compiling the decode step was tested on "
                f"(torch{versions.TESTED_TORCH})")
    if device.type == "cpu":
        compilers = (os.environ.get("CXX") or "", torch_kernels.inductor_cxx(), "g++", "clang++")
        if not any(shutil.which(c) for c in compilers if c):
            return "no C++ compiler (g++) on PATH, which inductor needs on CPU"
        return ""
    if device.type == "cuda":
        import importlib.util

        return "" if importlib.util.find_spec("triton") is not None else "triton is not installed"
    return f"compiling is not known to work on {device.type}"


class CompiledStep:
    """The decode engine's step over one model: eager until a shape's compiled function is ready.

    The generator asks :meth:`shapes` for the engine's slot count and cache length and the engine calls
    the object like its eager step ``(model, tokens, positions, cache, mask)``. ``backend``/``mode`` go to
    ``torch.compile`` (tests pass a cheap backend); ``background=False`` compiles on the calling thread
    (``sage_irp cache warm``).
    """

    def __init__(self, model: torch.nn.Module, *, context_window: int, backend: str | Callable = "inductor",
                 mode: str | None = None, background: bool = True, max_shapes: int = MAX_SHAPES):
        self.model, self.context_window, self.background = model, context_window, background
        self.device = next(model.parameters()).device
        self.cache_name = hf_compat.cache_argument(model)  # resolved here, outside the compiled region
        self._eager = _step_function(model, self.cache_name)
        if mode is None and self.device.type == "cuda":
            mode = "reduce-overhead"  # CUDA graphs: the whole step is one launch
        self.cuda_graphs = mode == "reduce-overhead"
        self.max_shapes = max_shapes
        self.pooled = self.cuda_graphs  # one cache per shape, reused by every question (fixed addresses)
        self._pool: dict[tuple[int, int], Any] = {}
        self._compiled: Callable | None = None
        self._compile_args: dict[str, Any] = {"backend": backend, "mode": mode, "dynamic": False}
        self._ready: set[tuple[int, int]] = set()  # read by the decode thread, grown by the compiler
        self._wanted: list[tuple[int, int]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running = False  # a compiler (thread or caller) is working through _wanted
        self.failed = ""  # why compiling was given up ('' while it works)
        self.compile_s: dict[tuple[int, int], float] = {}
        self.last_compiled = False  # the last call ran the compiled function
        self.calls = 0  # calls that ran the compiled function

    def shapes(self, rows: int, length: int) -> tuple[int, int]:
        """(rows with padding, cache length) for a request of ``rows`` rows and ``length`` positions."""
        return bucket_rows(rows), bucket_length(length, self.context_window)

    def pooled_cache(self, rows: int, length: int) -> Any:
        """With CUDA graphs (``pooled``), the one cache a ready shape's graph was recorded on: the decode
        engine of that shape decodes in it, so the graph's addresses stay valid. None otherwise."""
        shape = (rows, length)
        return self._pool.get(shape) if self.pooled and shape in self._ready else None

    def __call__(self, model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                 cache: Any, mask: torch.Tensor) -> torch.Tensor:
        """The decode engine's step: the compiled function where this shape is ready, else the eager step;
        :attr:`last_compiled` says which ran, :attr:`calls` counts the compiled ones."""
        shape = (tokens.shape[0], _cache_length(cache))
        compiled = self._compiled
        self.last_compiled = False
        if (model is not self.model or compiled is None or shape not in self._ready or self.failed
                or (self.pooled and cache is not self._pool.get(shape))):  # a graph recorded on another cache
            if model is self.model and not self.failed and shape not in self._ready:
                self.request([shape])
            return self._eager(tokens, positions, cache, mask)
        try:
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
                logits = compiled(tokens, positions, cache, mask).clone()  # a graph's output is overwritten next
            else:
                logits = compiled(tokens, positions, cache, mask)
        except Exception as exc:  # a guard or run-time failure: eager from now on, this step again
            self._give_up(f"the compiled step failed: {type(exc).__name__}: {exc}")
            _rewind(cache, mask)
            return self._eager(tokens, positions, cache, mask)
        self.last_compiled = True
        self.calls += 1
        return logits

    def request(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Queue ``shapes`` (rows, cache length) for compiling (in the background unless constructed
        with ``background=False``, where this compiles them before returning)."""
        with self._lock:
            for shape in shapes:
                if (shape not in self._wanted and shape not in self._ready
                        and len(self._wanted) + len(self._ready) < self.max_shapes):
                    self._wanted.append(shape)
            if not self._wanted or self.failed or self._running:
                return
            self._running = True
            if self.background:
                self._thread = threading.Thread(target=self._work, name="sage-compile", daemon=True)
                self._thread.start()
                return
        self._work()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the queued shapes; True when every one compiled (False on failure or timeout)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            return not self.failed and not self._wanted

    @property
    def ready_shapes(self) -> set[tuple[int, int]]:
        return set(self._ready)

    def _work(self) -> None:
        """Compile queued shapes one after another until none is left (or one fails)."""
        if self.background:
            _yield_to_answers()
        while True:
            with self._lock:
                if not self._wanted or self.failed:
                    self._running = False
                    return
                shape = self._wanted[0]
            start = time.monotonic()
            try:
                self._compile(*shape)
            except Exception as exc:  # never fail a question: the eager step goes on answering
                self._give_up(f"compiling the decode step for {shape[0]} rows x {shape[1]} positions failed: "
                              f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self._running = False
                return
            self.compile_s[shape] = time.monotonic() - start
            with self._lock:
                self._wanted.remove(shape)
                self._ready.add(shape)  # the swap: the decode thread uses it from its next step on
            log.info("decode step compiled for %d rows x %d positions in %.1f s", *shape, self.compile_s[shape])

    @torch.inference_mode()
    def _compile(self, rows: int, length: int) -> None:
        """Compile (or load from the cache) and run the step on dummy inputs of this shape."""
        if self._compiled is None:
            use_compile_cache()
            hf_compat.attend_over_kv_heads_when_traced()
            self._compiled = torch.compile(self._eager, **self._compile_args)
        from sage_irp_ros.decoding.slots import SlotCache  # the engine's own cache: the same guards

        slots = SlotCache(self.model, rows, length)
        _, prompt_cache = slots.prefill([0])
        slots.insert(range(rows), prompt_cache, 1)
        if self.pooled:  # this shape's questions will decode in this cache (see pooled_cache)
            _static(slots.cache)
            self._pool[(rows, length)] = slots.cache
        tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        compiled = self._compiled
        for _ in range(3 if self.cuda_graphs else 1):  # CUDA graphs record on a later call than the first
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            slots.step(lambda model, *args: compiled(*args), tokens)

    def _give_up(self, reason: str) -> None:
        with self._lock:
            first = not self.failed
            self.failed = self.failed or reason
            self._wanted.clear()
        if first:
            log.warning("%s; decoding eagerly", reason)


def _cache_length(cache: Any) -> int:
    """The static cache's allocated length (its positions), 0 when unknown."""
    try:
        return int(cache.layers[0].max_cache_len)
    except (AttributeError, IndexError, TypeError):
        return 0


_step_numbers = itertools.count()


def _step_function(model: torch.nn.Module, cache_name: str) -> Callable[..., torch.Tensor]:
    """The step itself (what is compiled): the engine's masked step over ``model`` with the cache argument's
    name fixed.

    A function with a code object of its own: dynamo keeps compiled graphs, and counts recompiles against
    its limit (8), per code object, so each model's step gets its own, freed with it.
    """
    def step(tokens: torch.Tensor, positions: torch.Tensor, cache: Any, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=tokens[:, None], position_ids=positions, attention_mask=mask, use_cache=True,
                     **{cache_name: cache}).logits[:, -1]

    code = step.__code__.replace(co_name=f"decode_step_{next(_step_numbers)}")
    return types.FunctionType(code, step.__globals__, code.co_name, step.__defaults__, step.__closure__)


def _yield_to_answers() -> None:
    """Lower the compiler thread's CPU priority (Linux: per thread, inherited by the C++ compilers it runs)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not permitted: compile at the same priority
        pass


def _static(cache: Any) -> None:
    """Mark a cache's tensors as fixed-address inputs (CUDA graphs then neither copy nor skip them)."""
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values", "cumulative_length"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                torch_kernels.mark_static_address(tensor)


def _rewind(cache: Any, mask: torch.Tensor) -> None:
    """Put a static cache's fill level back to the step's write column, the last one the mask marks (a failed
    compiled step may have advanced it)."""
    column = int(mask[0].nonzero().max()) if bool(mask[0].any()) else 0
    for layer in getattr(cache, "layers", ()):
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):
            length.fill_(column)


_per_model_lock = threading.Lock()
_ATTRIBUTE = "_sage_irp_compiled_step"  # on the model: the step lives (and is freed) with it


def for_model(lm: Any, mode: str, *, expect_rows: int = 0, expect_tokens: int = 0) -> CompiledStep | None:
    """The resident model's compiled step (one per model, kept across engines), or None for eager.

    ``expect_rows``/``expect_tokens``: the engine's usual request (rows, new tokens); that shape is
    queued at once so it compiles while the first questions are answered eagerly. ``auto`` where
    compiling is not known to work gives None, ``on`` there one WARN line saying why; ``off`` gives None.
    """
    if os.environ.get(ENV_OFF, "").strip().lower() == "off":
        mode = "off"
    if getattr(lm, "forward", "torch") != "torch":
        return None  # llama.cpp's forward: its own kernels, nothing of torch's to compile
    reason = why_not(mode, lm.device)
    if reason:
        if mode != "off" and reason != AUTO_ON_CPU:  # the chosen default says nothing
            hf_compat.warn_once(f"compile:{reason}", f"{reason}: the decode step runs eagerly")
        return None
    if hf_compat.cache_argument(lm.model) is None:
        return None  # decoding runs the whole sequence per step: nothing to compile
    with _per_model_lock:
        step = getattr(lm.model, _ATTRIBUTE, None)
        if step is None:
            step = CompiledStep(lm.model, context_window=lm.context_window, backend=DEFAULT_BACKEND)
            setattr(lm.model, _ATTRIBUTE, step)
    if expect_rows > 0 and expect_tokens > 0:
        step.request([step.shapes(expect_rows, expect_tokens + PROMPT_GUESS)])
    return step


def warm(lm: Any, shapes: Iterable[tuple[int, int]]) -> CompiledStep:
    """Compile the step of ``lm`` for ``shapes`` ((rows, new tokens) as requests have them) on this thread,
    filling the on-disk cache (``sage_irp cache warm``); the step is then the model's, ready."""
    step = for_model(lm, "on")
    if step is None:
        if getattr(lm, "forward", "torch") != "torch":
            raise RuntimeError("model.forward is llama_cpp: llama.cpp runs its own kernels, nothing to compile "
                               "(model.forward: torch compiles the torch step)")
        raise RuntimeError(why_not("on", lm.device) or "this model's forward takes no KV cache")
    step.background = False
    step.request([step.shapes(rows, tokens + PROMPT_GUESS) for rows, tokens in shapes])
    if step.failed:
        raise RuntimeError(step.failed)
    return step
