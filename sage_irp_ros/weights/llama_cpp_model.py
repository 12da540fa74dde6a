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

"""A GGUF model on llama.cpp's forward (``model.forward``): when it is chosen, and what it loads.

``auto`` chooses llama.cpp for a GGUF (the embedded model included) on a CPU, without a LoRA adapter,
with ``model.weight_quantization: auto``, where llama-cpp-python is installed: its kernels read the GGUF's
own blocks, the output head included, and were measured faster than the torch paths on the CPUs at hand
(docs/performance.md). Everything else (a Hugging Face folder, an adapter, CUDA, a weight format asked
for by name) stays on torch; a request that cannot be met falls back to torch with one log line saying why.

The tokenizer (and its chat template) is the GGUF's own as transformers reads it, saved once into the
conversion cache (``<cache>/<gguf stem>-<content key>-tokenizer``): reading it from the GGUF takes
seconds, the saved copy a fraction of one. No torch weights are loaded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from sage_irp_ros.config.settings import ModelConfig
from sage_irp_ros.errors import ModelLoadError
from sage_irp_ros.weights.cache import content_key

log = logging.getLogger(__name__)

_MARKER = "tokenizer_config.json"


def resolve_forward(cfg: ModelConfig, device: torch.device, gguf: Path | None, adapter: Path | None) -> str:
    """``torch`` or ``llama_cpp`` for this model and device (see the module docstring)."""
    if cfg.forward == "torch":
        return "torch"
    from sage_irp_ros.decoding.llama_cpp_forward import unavailable

    why = ("the model is not a GGUF" if gguf is None else
           "a LoRA adapter is set (adapters run on torch)" if adapter is not None else
           f"the device is {device.type}" if device.type != "cpu" else
           f"model.weight_quantization is {cfg.weight_quantization}" if cfg.weight_quantization != "auto" else
           unavailable())
    if not why:
        return "llama_cpp"
    if cfg.forward == "llama_cpp":
        log.warning("model.forward llama_cpp: using torch instead: %s", why)
    return "torch"


def open_gguf(gguf: Path, cache_dir: Path, threads: int, kv_cells: int, kv_type: str = "f16",
              progress: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(the llama.cpp forward with ``kv_cells`` KV cells of ``kv_type``, the tokenizer) of ``gguf``;
    ModelLoadError when llama.cpp cannot load it."""
    from sage_irp_ros.decoding.llama_cpp_forward import LlamaCppForward

    tokenizer = _tokenizer(gguf, cache_dir, progress or log.info)
    try:
        forward = LlamaCppForward(gguf, n_ctx=kv_cells, threads=threads, kv_type=kv_type)
    except RuntimeError as exc:
        raise ModelLoadError(str(exc)) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return forward, tokenizer


def _tokenizer(gguf: Path, cache_dir: Path, say: Callable[[str], None]):
    from transformers import AutoTokenizer

    gguf = gguf.resolve()
    target = cache_dir / f"{gguf.stem}-{content_key(gguf, cache_dir)}-tokenizer"
    if not (target / _MARKER).is_file():
        say(f"reading the tokenizer of {gguf.name} once, into {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=target.parent))
        try:
            AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
            tmp.rename(target)
        except OSError as exc:
            if not (target / _MARKER).is_file():  # else another process finished first
                raise ModelLoadError(f"cannot write the tokenizer to {target}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - transformers and gguf raise many types for a bad file
            raise ModelLoadError(f"cannot read the tokenizer of GGUF file {gguf}: {type(exc).__name__}: {exc}") \
                from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(target))
