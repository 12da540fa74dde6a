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

"""Load a causal language model once and keep it resident (keep-alive).

Sources: a local Hugging Face folder, a GGUF file (converted once to a cached folder: its own 4-bit blocks
for ``weight_quantization: int4``, else de-quantised safetensors), or either of those plus a PEFT LoRA
adapter (optionally merged for decoding speed; merged before any quantisation). With no path the
embedded SmolLM2-135M-Instruct is used. Loaded models are cached in-process by their identity, so
re-configuring a node with the same settings returns the resident model instead of loading again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sage_irp_ros.config.settings import ModelConfig
from sage_irp_ros.weights.cpu_packing import pack_linear_weights, packed_bytes
from sage_irp_ros.weights.int8 import quantize_model
from sage_irp_ros.compat.torch_kernels import cpu_has_native_bf16, int4_unavailable
from sage_irp_ros.weights.embedded_model import EMBEDDED_NAME, converted_gguf, default_cache_dir, embedded_gguf
from sage_irp_ros.weights.int4 import int4_layers, quantize_model_int4
from sage_irp_ros.weights.int4_loader import converted_int4, load_int4_folder
from sage_irp_ros.errors import ModelLoadError
from sage_irp_ros.weights.llama_cpp_model import open_gguf, resolve_forward

log = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_cache: dict[tuple, "LoadedModel"] = {}
_cache_lock = threading.Lock()


@dataclass
class LoadedModel:
    """A resident model with what the engine and the status reports need to know about it."""

    model: Any
    tokenizer: Any
    model_id: str
    device: torch.device
    dtype: torch.dtype
    footprint_mb: float
    load_s: float
    context_window: int
    key: tuple = field(default=(), repr=False)
    over_budget: bool = False
    packed_layers: int = 0  # Linear layers in oneDNN's blocked layout (model.pack_cpu_weights)
    quantized_layers: int = 0  # Linear layers holding int8/int4 weights (model.weight_quantization)
    weight_quantization: str = "none"  # what model.weight_quantization resolved to ("gguf": llama.cpp's blocks)
    forward: str = "torch"  # what computes the logits: torch, or llama_cpp (``model`` is then its forward)
    row_cost: float | None = None  # a 4-row decoding step's time over a 1-row step's (measured at warm-up)

    @property
    def precision(self) -> str:
        return {v: k for k, v in _DTYPES.items()}[self.dtype]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA; on CPU bf16 where the CPU has native bf16, else fp32.

    bf16 on such a CPU answered as well as fp32 on the held-out questions (docs/performance.md,
    "Answer quality"); elsewhere half precision on CPU is slow and only used on request.
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return _DTYPES[precision]


def resolve_quantization(mode: str, device: torch.device) -> str:
    """``auto`` is int4 on CPU where PyTorch's int4 kernel is usable, else none (CUDA: unmeasured yet)."""
    if mode != "auto":
        return mode
    if device.type != "cpu":
        return "none"
    why = int4_unavailable(device)
    if why:
        log.warning("model.weight_quantization auto: full-width weights (%s)", why)
    return "none" if why else "int4"


def apply_power_mode(power_mode: str) -> int:
    """Set torch's CPU threads from ``model.power_mode``; returns the thread count used."""
    cores = os.cpu_count() or 1
    threads = {"efficiency": max(1, cores // 2), "balanced": max(1, cores - 1),
               "performance": cores}[power_mode]
    torch.set_num_threads(threads)
    return threads


def load_model(model_cfg: ModelConfig, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Load (or return the resident copy of) the configured model. Raises ModelLoadError only."""
    say = progress or log.info
    device = resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.precision, device)
    folder, gguf = _locate(model_cfg)
    adapter = _check_adapter(model_cfg.adapter_path)
    if resolve_forward(model_cfg, device, gguf, adapter) == "llama_cpp":
        return _load_llama_cpp(model_cfg, gguf, device, say)
    quant = resolve_quantization(model_cfg.weight_quantization, device)
    pack = model_cfg.pack_cpu_weights and device.type == "cpu" and quant == "none"
    dense = model_cfg.int4_dense_above_rows if quant == "int4" and device.type == "cpu" else 0
    key = (_identity(folder), _identity(gguf), _identity(adapter), model_cfg.merge_adapter,
           str(device), str(dtype), pack, quant, dense)
    with _cache_lock:
        cached = _resident(key, say, str(device))
        if cached is not None:
            return cached
        start, cache_dir = time.monotonic(), _cache_dir(model_cfg)
        blocks = quant == "int4" and gguf is not None and adapter is None  # the GGUF's own 4-bit blocks
        if blocks:
            folder = converted_int4(gguf, cache_dir, say)
        elif gguf is not None:
            folder = converted_gguf(gguf, cache_dir, say)
        say(f"loading model from {folder} ({dtype}, {device})")
        if blocks:
            model, tokenizer = load_int4_folder(folder, dtype, device, dense)
        else:
            model, tokenizer = _from_pretrained(folder, dtype, device)
        model_id = EMBEDDED_NAME if not model_cfg.path else Path(model_cfg.path).name
        if adapter is not None:
            model = _attach_adapter(model, adapter, model_cfg.merge_adapter, folder)
            model_id += f"+{adapter.name}" + ("(merged)" if model_cfg.merge_adapter else "")
        model.eval()
        packed = quantized = 0
        if blocks:
            quantized = len(int4_layers(model))
            say(f"int4 weights in {quantized} Linear layers, from the GGUF's blocks")
        elif quant != "none":  # after the adapter merge: the merged weights are what gets quantised
            quantizer = (lambda m, d: quantize_model_int4(m, d, dense)) if quant == "int4" else (
                lambda m, d: quantize_model(m, quant, d))
            quantized, why_not = quantizer(model, device)
            say(f"{quant} weights in {quantized} Linear layers" if quantized else
                f"model.weight_quantization: weights left as they were ({why_not})")
        if device.type == "cpu":
            if pack:  # before _make_resident: reordering copies the weights out of the file anyway
                packed, why_not = pack_linear_weights(model)
                say(f"packed {packed} Linear layers for oneDNN" if packed else
                    f"model.pack_cpu_weights: weights left unpacked ({why_not})")
            _make_resident(model)
            _return_freed_memory()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedModel(
            model=model, tokenizer=tokenizer, model_id=model_id, device=device, dtype=dtype,
            footprint_mb=footprint_mb(model), load_s=time.monotonic() - start,
            context_window=int(getattr(model.config, "max_position_embeddings", 0) or 2048), key=key,
            packed_layers=packed, quantized_layers=quantized, weight_quantization=quant if quantized else "none")
        _check_budget(loaded, model_cfg)
        _cache[key] = loaded
        say(f"model {model_id} ready: {loaded.footprint_mb:.0f} MB in {loaded.load_s:.1f} s")
        return loaded


def _load_llama_cpp(model_cfg: ModelConfig, gguf: Path, device: torch.device,
                    say: Callable[[str], None]) -> LoadedModel:
    """The GGUF on llama.cpp's forward (:mod:`~sage_irp_ros.weights.llama_cpp_model`), kept resident."""
    threads = torch.get_num_threads()
    key = (_identity(gguf), "llama_cpp", threads, model_cfg.kv_cache_cells, model_cfg.kv_cache_type)
    with _cache_lock:
        cached = _resident(key, say, "llama.cpp")
        if cached is not None:
            return cached
        start, cache_dir = time.monotonic(), _cache_dir(model_cfg)
        say(f"loading {gguf.name} on llama.cpp's forward ({threads} thread(s), {model_cfg.kv_cache_cells} KV "
            f"cells of {model_cfg.kv_cache_type})")
        forward, tokenizer = open_gguf(gguf, cache_dir, threads, model_cfg.kv_cache_cells,
                                       model_cfg.kv_cache_type, say)
        _return_freed_memory()  # the tokenizer's file parse leaves ~30 MB of freed heap behind
        loaded = LoadedModel(
            model=forward, tokenizer=tokenizer, model_id=EMBEDDED_NAME if not model_cfg.path else Path(
                model_cfg.path).name, device=device, dtype=torch.float32, footprint_mb=forward.size_mb,
            load_s=time.monotonic() - start, context_window=forward.context_window or 2048, key=key,
            weight_quantization="gguf", forward="llama_cpp")
        _check_budget(loaded, model_cfg)
        _cache[key] = loaded
        say(f"model {loaded.model_id} ready on llama.cpp: {loaded.footprint_mb:.0f} MB in {loaded.load_s:.1f} s")
        return loaded


def _resident(key: tuple, say: Callable[[str], None], where: str) -> LoadedModel | None:
    """The model already loaded under ``key`` (under ``_cache_lock``), said so; None when there is none."""
    cached = _cache.get(key)
    if cached is not None:
        say(f"model {cached.model_id} already resident on {where}: not reloading")
    return cached


def _cache_dir(model_cfg: ModelConfig) -> Path:
    return Path(model_cfg.cache_dir).expanduser() if model_cfg.cache_dir else default_cache_dir()


def release(loaded: LoadedModel) -> None:
    """Drop a model from the resident cache so its memory can be freed (cleanup, keep_alive false)."""
    with _cache_lock:
        _cache.pop(loaded.key, None)
    if loaded.device.type == "cuda":
        torch.cuda.empty_cache()


def _make_resident(model: torch.nn.Module) -> None:
    """Copy CPU weights out of the memory-mapped safetensors file into process memory.

    Memory-mapped pages can be dropped and re-read by the kernel under memory pressure, which shows
    up as random slow tokens on a robot; keep-alive means the weights stay in RAM.
    """
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()


def _return_freed_memory() -> None:
    """Hand the heap that loading freed (fp32 copies replaced by bf16/int8/packed ones) back to the OS.

    glibc keeps freed blocks for reuse, so without this the process kept ~200 MB it no longer used
    after a bf16 or int8 load (measured: bench.speed.load_memory), and ~30 MB after parsing SmolLM2's
    tokenizer file (RSS read before and after the parse). A no-op where glibc is not the C library.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to trim
        pass


def footprint_mb(model: torch.nn.Module) -> float:
    """Bytes of parameters, buffers and packed weights (shared tensors counted once), in MB."""
    seen, total = set(), packed_bytes(model)
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total / 2**20


def _locate(cfg: ModelConfig) -> tuple[Path | None, Path | None]:
    """Return (hf_folder, gguf_file); exactly one is set."""
    if not cfg.path:
        return None, embedded_gguf()
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model.path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model.path {path} is a file but not a .gguf; give a folder or a GGUF file")
        return None, path
    if cfg.gguf_file:
        gguf = path / cfg.gguf_file
        if not gguf.is_file():
            raise ModelLoadError(f"model.gguf_file {cfg.gguf_file} not found in {path}")
        return None, gguf
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model.path {path} is not a Hugging Face model folder (no config.json); "
            "for a GGUF, set model.gguf_file or point model.path at the .gguf file")
    return path, None


def _check_adapter(adapter_path: str) -> Path | None:
    if not adapter_path:
        return None
    path = Path(adapter_path).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"model.adapter_path {path} is not a PEFT adapter folder (no adapter_config.json)")
    return path


def _identity(path: Path | None) -> tuple | None:
    """A path plus its modification time, so a replaced model is loaded again."""
    if path is None:
        return None
    probe = path / "config.json" if path.is_dir() else path
    return (str(path.resolve()), probe.stat().st_mtime_ns if probe.exists() else 0)


def _from_pretrained(folder: Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sage_irp_ros.compat import hf_compat

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), **hf_compat.dtype_kwargs(dtype))
        model.to(device)
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(f"out of memory loading {folder} on {device}: {exc}") from exc
    except Exception as exc:  # corrupt config, truncated safetensors, missing tokenizer files...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(f"cannot load model from {folder}: {type(exc).__name__}: {first_line}") from exc
    return model, tokenizer


def _attach_adapter(model, adapter: Path, merge: bool, base: Path):
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as exc:  # size mismatch, missing target modules, bad config
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"LoRA adapter {adapter} does not fit base model {base}: {type(exc).__name__}: {first_line}") from exc
    return peft_model.merge_and_unload() if merge else peft_model


def _check_budget(loaded: LoadedModel, model_cfg: ModelConfig) -> None:
    budget = model_cfg.max_memory_mb
    if not budget or loaded.footprint_mb <= budget:
        return
    message = (f"model {loaded.model_id} needs {loaded.footprint_mb:.0f} MB, over model.max_memory_mb "
               f"= {budget} MB")
    if model_cfg.memory_limit_action == "error":
        raise ModelLoadError(message + " (model.memory_limit_action: error)")
    loaded.over_budget = True
    log.warning(message)
