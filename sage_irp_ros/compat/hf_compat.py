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

"""Every difference between transformers 4.x and 5.x that this package relies on, in one place.

A Jetson on JetPack 6 (Python 3.10, NVIDIA's torch 2.3-2.5) gets transformers 4.x from pip; a Python 3.11+
machine gets 5.x. The rest of the package calls these helpers instead of spelling a version's argument
names, so every feature works on both. What differs:

- the KV-cache argument of ``forward``/``generate``: ``past_key_values`` (4.x, 5.x up to ~5.20) and
  ``cache`` (later 5.x, where ``past_key_values`` is deprecated). A wrong name is swallowed by
  ``**kwargs`` and silently ignored, so the name is read from the model's own ``forward`` signature;
- the dtype argument of ``from_pretrained``: ``dtype`` (4.56+, 5.x) and ``torch_dtype`` (older 4.x);
- ``DynamicCache(config=...)`` (4.56+) and the older ``DynamicCache()``; repeating a static cache's rows;
- ``logits_to_keep`` (4.50+) and ``num_logits_to_keep`` (older);
- a GGUF-loaded model may carry a GGUF quantizer that must be dropped before ``save_pretrained``.

A feature that cannot work on the installed version is logged ONCE (``warn_once``), never silently lost.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import torch
import transformers
from packaging.version import Version

from sage_irp_ros.compat import once

log = logging.getLogger(__name__)

TRANSFORMERS_VERSION = Version(transformers.__version__)


def warn_once(key: str, message: str) -> bool:
    """Log ``message`` on this module's logger the first time ``key`` is seen in this process."""
    return once.warn_once(log, key, message)


def _forward_parameters(model: Any) -> frozenset[str]:
    """Names of ``model.forward``'s parameters (a PEFT wrapper is looked through).

    Asked at every decoding step, so read once per model class.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _class_forward_parameters(type(base))


@functools.lru_cache(maxsize=64)
def _class_forward_parameters(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters) - {"self"}
    except (TypeError, ValueError, AttributeError):  # a C-implemented or otherwise opaque forward
        return frozenset()


def cache_argument(model: Any) -> str | None:
    """The keyword ``model.forward`` and ``generate`` take the KV cache under, or None if neither.

    Read from the signature, not the version: the rename happened inside 5.x, and remote-code models
    keep whichever name they were written with.
    """
    params = _forward_parameters(model)
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` under the name this model takes; empty for ``cache=None`` or no such argument."""
    name = cache_argument(model) if cache is not None else None
    return {} if name is None else {name: cache}


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The ``from_pretrained`` dtype argument: ``dtype`` on 4.56+ and 5.x, ``torch_dtype`` before."""
    return {"dtype": dtype} if TRANSFORMERS_VERSION >= Version("4.56") else {"torch_dtype": dtype}


def new_cache(model: Any, max_len: int, static: bool = True):
    """An empty KV cache for ``model``: static (``max_len`` positions, fixed addresses) or dynamic.

    None for a model whose ``forward`` takes no cache argument (said once in the log).
    """
    if cache_argument(model) is None:
        warn_once(f"cache-arg:{type(model).__name__}",
                  f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`: every "
                  "decoding step runs the whole sequence (slow)")
        return None
    from transformers import DynamicCache, StaticCache

    config = model.config
    if static:
        return StaticCache(config=config, max_cache_len=max_len)
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers < 4.56: no config argument, layers are created lazily
        return DynamicCache()


def cache_length(cache: Any) -> int:
    """Tokens held in the cache (0 for an empty or unknown cache)."""
    try:
        return int(cache.get_seq_length())
    except (AttributeError, IndexError, TypeError):
        return 0


def repeat_cache_rows(cache: Any, rows: int) -> None:
    """Give every row its own copy of a one-row prompt cache, in place (static or dynamic layers).

    ``DynamicCache.batch_repeat_interleave`` does it for dynamic layers; static layers (4.57 and 5.x)
    have no such method, so their preallocated key/value tensors are repeated here.
    """
    from transformers import DynamicCache

    if isinstance(cache, DynamicCache):
        cache.batch_repeat_interleave(rows)
        return
    for layer in cache.layers:
        layer.keys = layer.keys.repeat(rows, 1, 1, 1)
        layer.values = layer.values.repeat(rows, 1, 1, 1)
        layer.batch_size = rows


def prefill_kwargs(model: Any, keep: int | torch.Tensor = 1) -> dict[str, Any]:
    """Ask the model for the last position's logits only (``keep`` a 1-D tensor: the logits at those
    positions), under the name this version uses; empty where the model returns every position's."""
    params = _forward_parameters(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: keep}
    return {}


def allocated_static_cache(model: Any, rows: int, length: int, heads: list[int], head_dims: list[int],
                           dtype: torch.dtype, device: Any):
    """A StaticCache of ``rows`` x ``length`` positions with every layer allocated now (not at its first
    update): 5.x takes each layer's key/value heads and head size, 4.x one of each for all layers."""
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=length)
    if TRANSFORMERS_VERSION.major >= 5:
        cache.early_initialization(rows, heads, head_dims, dtype, device)
    else:
        if len(set(heads)) > 1 or len(set(head_dims)) > 1:
            raise ValueError("transformers 4.x allocates every layer of a static cache alike; this model's "
                             f"layers differ (heads {sorted(set(heads))}, head sizes {sorted(set(head_dims))})")
        cache.early_initialization(rows, heads[0], head_dims[0], dtype, device)
    return cache


def cache_position_kwargs(model: Any, start: int, length: int, device: Any) -> dict[str, Any]:
    """``cache_position`` (the cache slots the new tokens are written to) where ``forward`` takes it (4.x).

    4.x infers it from a static cache's content (the slots of row 0 holding a non-zero key), which a
    padding token with a zero embedding (``padding_idx``) leaves out; 5.x counts the tokens fed instead.
    """
    if not takes_cache_position(model):
        return {}
    return {"cache_position": torch.arange(start, start + length, device=device)}


def takes_cache_position(model: Any) -> bool:
    """Whether ``model.forward`` takes ``cache_position`` (4.x; 5.x tracks it in the cache)."""
    return "cache_position" in _forward_parameters(model)


def select_cache_rows(cache: Any, rows: torch.Tensor) -> None:
    """Keep (and repeat) the cache's rows at the indices ``rows``, in place (static or dynamic layers):
    a prefilled row per prompt becomes one row per candidate, and rows of a finished group leave."""
    from transformers import DynamicCache

    if isinstance(cache, DynamicCache):
        cache.batch_select_indices(rows)
        return
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
        layer.batch_size = int(rows.numel())


def drop_gguf_quantizer(model: Any) -> None:
    """Forget the GGUF quantizer of a de-quantised model so ``save_pretrained`` writes plain tensors."""
    model.hf_quantizer = None
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        del config.quantization_config


def attend_over_kv_heads_when_traced() -> None:
    """Let a compiled decode step attend as the eager one does: over the key/value heads themselves.

    transformers' SDPA attention (5.x) runs a one-token query on the key/value heads (``pack_gqa``) only
    when ``is_torchdynamo_compiling()`` is False; traced, it repeats every layer's whole cache to all query
    heads each step (``repeat_kv``): 5x slower than eager at 8 rows x 2048 positions, growing with both.
    The check is that module's global, read at call time: made to answer what it answers in eager mode.
    This changes transformers for the whole process, which only ever matters to a traced step.
    """
    try:
        from transformers.integrations import sdpa_attention
    except ImportError:
        return
    if hasattr(sdpa_attention, "pack_gqa") and hasattr(sdpa_attention, "is_torchdynamo_compiling"):
        sdpa_attention.is_torchdynamo_compiling = _never_compiling


def _never_compiling() -> bool:
    return False
