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

"""The conversion cache is keyed by a GGUF's content; ``sage_irp cache list|clear``."""

from __future__ import annotations

import json
import os
import shutil

from sage_irp_ros.tools.cli import main
from sage_irp_ros.weights.embedded_model import converted_gguf, transformers_major
from sage_irp_ros.weights.cache import INDEX, clear, content_key, entries


def _gguf(path, payload: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + payload)
    return path


def test_copies_at_two_paths_share_one_conversion(tmp_path):
    cache = tmp_path / "cache"
    first = _gguf(tmp_path / "venv1" / "m.gguf", b"x" * 5000)
    second = tmp_path / "venv2" / "m.gguf"
    second.parent.mkdir()
    shutil.copy(first, second)
    key = content_key(first, cache)
    assert key == content_key(second, cache) and key.startswith("5004-")
    # a finished conversion (what _convert leaves) for the first path, by this transformers generation
    done = cache / f"m-{key}-tf{transformers_major()}"
    done.mkdir()
    (done / "config.json").write_text("{}")
    assert converted_gguf(second, cache) == done  # found by content: no second conversion


def test_hash_is_remembered_and_a_changed_file_gets_a_new_key(tmp_path):
    cache = tmp_path / "cache"
    gguf = _gguf(tmp_path / "m.gguf", b"a" * 100)
    key = content_key(gguf, cache)
    index = json.loads((cache / INDEX).read_text())
    assert index[str(gguf.resolve())]["key"] == key
    index[str(gguf.resolve())]["key"] = "remembered"  # a start reads the index, not the file
    (cache / INDEX).write_text(json.dumps(index))
    assert content_key(gguf, cache) == "remembered"
    _gguf(gguf, b"b" * 100)
    os.utime(gguf, ns=(1, 1))
    assert content_key(gguf, cache) not in ("remembered", key)


def test_damaged_index_is_hashed_again(tmp_path):
    cache = tmp_path / "cache"
    gguf = _gguf(tmp_path / "m.gguf", b"c" * 10)
    key = content_key(gguf, cache)
    (cache / INDEX).write_text("{not json")
    assert content_key(gguf, cache) == key


def test_cli_lists_and_clears_the_cache(tmp_path, capsys):
    cache = tmp_path / "cache"
    for name in ("a-1", "b-2"):
        (cache / name).mkdir(parents=True)
        (cache / name / "config.json").write_text("{}")
        (cache / name / "model.safetensors").write_bytes(b"\0" * 2**20)
    (cache / ".convert-tmp").mkdir()  # an unfinished conversion: not listed, but cleared
    assert [p.name for p, _ in entries(cache)] == ["a-1", "b-2"]
    assert main(["cache", "list", "--dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "a-1" in out and "b-2" in out and "2 cached models, 2 MB" in out
    assert main(["cache", "clear", "--dir", str(cache)]) == 0
    assert "removed 3 cached models" in capsys.readouterr().out
    assert list(cache.iterdir()) == [] and clear(tmp_path / "absent") == (0, 0)
