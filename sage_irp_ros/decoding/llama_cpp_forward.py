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

"""llama.cpp's forward over a GGUF, in process: one KV cache, one sequence id per decoding row.

Why: on CPUs without AMX (AVX2 laptops, AMD Zen servers, a Jetson's ARM cores) llama.cpp's ggml kernels
read a GGUF's 4-bit blocks several times faster than PyTorch's int4 kernel, and its output head reads the
GGUF's own quantised head instead of a full-width one. This module is only the forward: the package keeps
its own sampling, constraints and untempered log-probs on the logits it returns
(:mod:`~sage_irp_ros.decoding.llama_cpp_generator`).

Layout: one llama.cpp context with a unified KV cache (``kv_unified``): every row is a sequence id; a
prompt is prefilled once into one sequence and shared with its other rows by ``llama_memory_seq_cp``
(the cells are shared, not copied); a finished row's cells are freed with ``llama_memory_seq_rm``, so its
id serves the next row at once. :meth:`LlamaCppForward.step` decodes one token for every given sequence
in one ``llama_decode`` call. Prompts are not reused across calls: a prefix decoded in another batch gives
slightly different floats, and a greedy answer must not depend on the question asked before it.

Only llama-cpp-python's public C bindings (``llama_cpp.llama_*``) are used; it is an optional package
(``scripts/setup.sh`` installs it from a prebuilt wheel when one is at hand): :func:`unavailable` says why
it cannot be used here.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

MAX_SEQUENCES = 64  # rows decoded at once at most (questions x candidates); more wait for a free id
SCORING_SEQUENCE = MAX_SEQUENCES - 1  # the last id scores given answers (between two decode steps); rows use the others
BATCH_TOKENS = 512  # prompt tokens per llama_decode call while prefilling

KV_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0"}  # KV cache cell types: ggml's type names

_init_lock = threading.Lock()
_initialised = False


def unavailable() -> str:
    """'' when llama-cpp-python can be imported here; otherwise why not."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed"
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken build raises anything from its shared library
        return f"llama-cpp-python does not load: {type(exc).__name__}: {exc}"
    return ""


def _llama():
    """The bindings, initialised once per process, with llama.cpp's own log quiet (errors only)."""
    global _initialised
    import llama_cpp

    with _init_lock:
        if not _initialised:
            logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback reads this level
            llama_cpp.llama_backend_init()
            _initialised = True
    return llama_cpp


class LlamaCppForward:
    """A GGUF loaded by llama.cpp, with ``n_ctx`` KV cells shared by up to :data:`MAX_SEQUENCES` rows;
    ``kv_type`` one of :data:`KV_TYPES` (q8_0 halves the cache and turns flash attention on, which a
    quantised V cache needs)."""

    def __init__(self, gguf: Path, *, n_ctx: int, threads: int, kv_type: str = "f16"):
        L = _llama()
        self._L = L
        params = L.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = L.llama_model_load_from_file(str(gguf).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp cannot load {gguf}")
        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = cparams.n_ubatch = BATCH_TOKENS
        cparams.n_seq_max = MAX_SEQUENCES
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = max(1, threads)
        cparams.no_perf = True
        if kv_type != "f16":
            cparams.type_k = cparams.type_v = getattr(L, KV_TYPES[kv_type])
            cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            L.llama_model_free(self._model)
            raise RuntimeError(f"llama.cpp cannot create a context of {n_ctx} cells for {gguf}")
        self._memory = L.llama_get_memory(self._ctx)
        vocab = L.llama_model_get_vocab(self._model)
        self.vocab_size = int(L.llama_vocab_n_tokens(vocab))
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.context_window = int(L.llama_model_n_ctx_train(self._model))
        self.size_mb = float(L.llama_model_size(self._model)) / 2**20
        self.config = SimpleNamespace(vocab_size=self.vocab_size, max_position_embeddings=self.context_window)
        self._batch = L.llama_batch_init(max(BATCH_TOKENS, MAX_SEQUENCES), 0, 1)
        self._lock = threading.Lock()
        # Held by a generator for a whole call: sequence ids are the context's, not the caller's.
        self.busy = threading.RLock()
        # Freed with the last reference (the resident cache may hand one model to several engines).
        self._free = weakref.finalize(self, _free_handles, L, self._batch, self._ctx, self._model)

    # -- sequences ------------------------------------------------------------------------------------
    def prefill(self, seq: int, ids: Sequence[int], *, at: int = 0, logits_from: int | None = None) -> np.ndarray:
        """Decode ``ids`` into sequence ``seq`` from position ``at``; the last position's logits ``(vocab,)``,
        or with ``logits_from`` those of ``ids[logits_from:]``, ``(len(ids) - logits_from, vocab)``.

        Only the positions asked for go through the output head (49152 x 576 on SmolLM2), so scoring an
        answer after a long prompt costs the answer's head rows, and llama.cpp's output buffer grows to the
        answer's length, not the prompt's.
        """
        first = len(ids) - 1 if logits_from is None else logits_from
        out = []
        with self._lock:
            for start in range(0, len(ids), BATCH_TOKENS):
                chunk = ids[start:start + BATCH_TOKENS]
                self._fill([(token, at + start + i, seq, start + i >= first) for i, token in enumerate(chunk)])
                self._decode()
                outputs = sum(start + i >= first for i in range(len(chunk)))
                if outputs:
                    out.append(self._logits(outputs))
            return out[-1][-1] if logits_from is None else np.concatenate(out)

    def share(self, source: int, target: int) -> None:
        """Let sequence ``target`` continue from ``source``'s cells (the prompt is stored once)."""
        self._L.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def free(self, seq: int, keep: int = 0) -> None:
        """Drop sequence ``seq``'s cells from position ``keep`` on (0: all; its id can serve another row)."""
        self._L.llama_memory_seq_rm(self._memory, seq, keep, -1)

    def step(self, tokens: Sequence[int], positions: Sequence[int], seqs: Sequence[int]) -> np.ndarray:
        """One token for each sequence at its position, in one call: logits ``(rows, vocab)`` (a copy)."""
        with self._lock:
            self._fill([(t, p, s, True) for t, p, s in zip(tokens, positions, seqs)])
            self._decode()
            return self._logits(len(tokens))

    def close(self) -> None:
        """Free llama.cpp's memory now (else when the last reference goes)."""
        self._free()

    # -- one llama_decode call ------------------------------------------------------------------------
    def _fill(self, entries: list[tuple[int, int, int, bool]]) -> None:
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)

    def _decode(self) -> None:
        code = self._L.llama_decode(self._ctx, self._batch)
        if code != 0:  # 1: no KV cells left for this batch; < 0: an error
            raise MemoryError(f"llama.cpp could not decode {self._batch.n_tokens} tokens (code {code}): "
                              f"the KV cache of {self.n_ctx} cells is full") if code == 1 else RuntimeError(
                f"llama_decode failed with code {code}")

    def _logits(self, rows: int) -> np.ndarray:
        pointer = self._L.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(rows, self.vocab_size)).copy()


def _free_handles(L, batch, ctx, model) -> None:
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
