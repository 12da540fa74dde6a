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

"""The conversion cache in 4-bit form: a GGUF converted once to ``weights.safetensors`` of int4 blocks.

The fp32 conversion of the embedded GGUF is 540 MB on disk and in memory; its 4-bit form is about a
fifth of that. :func:`converted_int4` writes the folder (config, tokenizer, the tensors of
:func:`gguf_int4.tensors_from_gguf`, ``format.json``) into a temporary folder and renames it, keyed like the
fp32 conversion by the GGUF's content plus :data:`gguf_int4.FORMAT`. :func:`load_int4_folder` builds the
model without ever materialising float weights: the architecture is created on the meta device, the
Linear layers and the embedding are replaced by :class:`~sage_irp_ros.weights.int4.Int4Linear` /
:class:`~sage_irp_ros.weights.int4.Q8Embedding`, and the small float tensors (norms, biases) are assigned.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from sage_irp_ros.errors import ModelLoadError
from sage_irp_ros.weights.gguf_int4 import EMBEDDING, FORMAT, tensors_from_gguf
from sage_irp_ros.weights.int4 import Int4Linear, Int4Weight, Q8Embedding, Q8Linear, unpack_nibbles
from sage_irp_ros.weights.cache import content_key

log = logging.getLogger(__name__)
WEIGHTS = "weights.safetensors"
FORMAT_FILE = "format.json"
_SECONDS_PER_MB = 0.1  # measured on a 2-core x86 CPU: the block copy is cheaper than de-quantising


def converted_int4(gguf: Path, cache_dir: Path, progress: Callable[[str], None] | None = None) -> Path:
    """A 4-bit cache folder converted from ``gguf`` (converting on first use)."""
    from sage_irp_ros.weights.embedded_model import _Ticker, transformers_major

    gguf = gguf.resolve()
    target = cache_dir / f"{gguf.stem}-{content_key(gguf, cache_dir)}-tf{transformers_major()}-{FORMAT}"
    if (target / FORMAT_FILE).is_file():
        return target
    say = progress or log.info
    size_mb = gguf.stat().st_size / 2**20
    say(f"converting {gguf.name} ({size_mb:.0f} MB) to 4-bit blocks once, into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _Ticker(say, f"converting {gguf.name}", expected_s=size_mb * _SECONDS_PER_MB):
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            tmp.rename(target)
        except OSError as exc:
            if (target / FORMAT_FILE).is_file():  # another process finished first
                return target
            raise ModelLoadError(f"cannot write converted model to {target}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tensors, source = tensors_from_gguf(gguf, config)
    except Exception as exc:  # transformers and gguf raise many types for a bad file
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {type(exc).__name__}: {exc}") from exc
    config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / WEIGHTS), metadata={"format": FORMAT})
    (out / FORMAT_FILE).write_text(json.dumps({"format": FORMAT, "source": source, "gguf": gguf.name}, indent=1))


def folder_format(folder: Path) -> str:
    """The stored weights' format of a cache folder: ``int4-v1``..., ``fp32`` for a plain conversion,
    ``tokenizer`` for the tokenizer of a model on llama.cpp's forward (no weights)."""
    if not (folder / "config.json").is_file():
        return "tokenizer"
    try:
        return json.loads((folder / FORMAT_FILE).read_text())["format"]
    except (OSError, ValueError, KeyError):
        return "fp32"


def load_int4_folder(folder: Path, dtype: torch.dtype, device: torch.device, dense_above_rows: int = 0):
    """(model, tokenizer) from a folder written by :func:`converted_int4`; raises ModelLoadError.
    ``dense_above_rows``: see :class:`~sage_irp_ros.weights.int4.Int4Linear`."""
    from safetensors.torch import load
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        # read, not memory-mapped: a tensor kept from a mapping keeps the whole file's pages resident
        tensors = load((folder / WEIGHTS).read_bytes())
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        _replace_quantized(model, tensors, dtype, device, dense_above_rows)
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in tensors.items()},
                              strict=False, assign=True)
        _rebuild_meta_buffers(model, device)
    except ModelLoadError:
        raise
    except Exception as exc:  # a truncated file, a format from another version
        raise ModelLoadError(f"cannot load 4-bit model from {folder}: {type(exc).__name__}: {exc} "
                             "(`sage_irp cache clear` removes it; it is converted again)") from exc
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ModelLoadError(f"4-bit model in {folder} lacks tensors: {', '.join(left[:5])}")
    model.config.tie_word_embeddings = False  # separate tensors now: the head is int4, the embedding int8
    return model.eval(), tokenizer


def _replace_quantized(model: torch.nn.Module, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
                       device: torch.device, dense_above_rows: int = 0) -> None:
    """Put an Int4Linear where ``<module>.q4`` is stored and a Q8Embedding for the embedding (pops them)."""
    for key in [k for k in tensors if k.endswith(".q4")]:
        module = key.removesuffix(".q4")
        weight = Int4Weight(unpack_nibbles(tensors.pop(key)), tensors.pop(f"{module}.scale"),
                            tensors.pop(f"{module}.minimum"))
        bias = tensors.pop(f"{module}.bias", None)
        parent, _, attr = module.rpartition(".")
        setattr(model.get_submodule(parent), attr, Int4Linear(weight, bias, dtype, device, dense_above_rows))
    if f"{EMBEDDING}.q8" in tensors:
        old = model.get_input_embeddings()
        model.set_input_embeddings(Q8Embedding(tensors.pop(f"{EMBEDDING}.q8"), tensors.pop(f"{EMBEDDING}.scale8"),
                                               dtype, getattr(old, "padding_idx", None)).to(device))
    if "lm_head.q8" in tensors:
        model.lm_head = Q8Linear(tensors.pop("lm_head.q8"), tensors.pop("lm_head.scale8"), dtype, device,
                                 dense_above_rows)
    elif "lm_head.q4" not in tensors and isinstance(model.get_input_embeddings(), Q8Embedding):
        embedding = model.get_input_embeddings()  # tied: the head reads the embedding's blocks
        model.lm_head = Q8Linear(embedding.q, embedding.scale, dtype, device, dense_above_rows)


def _rebuild_meta_buffers(model: torch.nn.Module, device: torch.device) -> None:
    """Modules whose buffers are computed, not stored (rotary embeddings), are built again on ``device``."""
    for name, module in list(model.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        try:  # transformers 4.x takes device=, 5.x builds on the current default device
            with torch.device(device):
                fresh = type(module)(config=model.config)
        except TypeError as exc:
            raise ModelLoadError(f"cannot rebuild {name} ({type(module).__name__}) for a 4-bit model") from exc
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, fresh)
