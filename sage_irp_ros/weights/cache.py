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

"""The conversion cache's keys and housekeeping: a GGUF is known by its content, not its path.

Keyed by path, every new venv or clone converted the same embedded GGUF again (~26 s) and left another
540 MB copy (six copies, 3.1 GB, seen on one machine). The key is now the file's size and SHA-256; the
hash (~0.3 s for 100 MB) is computed once per path, size and mtime and remembered in ``index.json`` in the
cache folder, so a start does not read the whole GGUF again. ``sage_irp cache list|clear`` shows and
removes what is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

INDEX = "index.json"


def content_key(gguf: Path, cache_dir: Path) -> str:
    """``<size>-<sha256[:16]>`` of ``gguf``, hashed once per (path, size, mtime) and remembered."""
    gguf = gguf.resolve()
    stat = gguf.stat()
    index = _read_index(cache_dir)
    seen = index.get(str(gguf))
    if seen and seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
        return seen["key"]
    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    key = f"{stat.st_size}-{digest.hexdigest()[:16]}"
    index[str(gguf)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "key": key}
    _write_index(cache_dir, index)
    return key


def entries(cache_dir: Path) -> list[tuple[Path, int]]:
    """(folder, bytes) of every converted model (or a llama.cpp model's tokenizer) in the cache, finished
    conversions only."""
    if not cache_dir.is_dir():
        return []
    return [(path, _size(path)) for path in sorted(cache_dir.iterdir())
            if path.is_dir() and ((path / "config.json").is_file() or (path / "tokenizer_config.json").is_file())]


def clear(cache_dir: Path) -> tuple[int, int]:
    """Remove every converted model, unfinished conversion and the index; returns (folders, bytes)."""
    if not cache_dir.is_dir():
        return 0, 0
    count = freed = 0
    for path in list(cache_dir.iterdir()):
        if path.is_dir():
            freed += _size(path)
            shutil.rmtree(path, ignore_errors=True)
            count += 1
        elif path.name == INDEX:
            path.unlink(missing_ok=True)
    return count, freed


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _read_index(cache_dir: Path) -> dict:
    try:
        data = json.loads((cache_dir / INDEX).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # missing or damaged: hash again
        return {}


def _write_index(cache_dir: Path, index: dict) -> None:
    """Write atomically (temporary file + rename): two processes starting at once never see half a file."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=cache_dir)
        with os.fdopen(fd, "w") as handle:
            json.dump(index, handle, indent=1)
        os.replace(tmp, cache_dir / INDEX)
    except OSError:  # a read-only cache still works, it only hashes again next time
        pass
