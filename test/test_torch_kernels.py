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

"""torch_kernels: PyTorch's private kernels on the tested torch releases, the plain path (said once) elsewhere."""

import logging

import pytest
from packaging.specifiers import SpecifierSet
import torch
from torch import nn

from sage_irp_ros.compat import once, torch_kernels, versions
from sage_irp_ros.weights.cpu_packing import is_packed, pack_linear_weights
from sage_irp_ros.weights.int8 import Int8Linear, quantize_per_channel


def _pretend_untested(monkeypatch) -> None:
    """Every kernel's tested range excludes the running torch; the once-per-kernel log starts empty."""
    monkeypatch.setattr(versions, "TESTED_TORCH", SpecifierSet("<1"))
    once.forget()


def test_every_kernel_is_used_on_the_torch_the_package_pins():
    assert torch_kernels.torch_version() in SpecifierSet(">=2.13")  # setup.py's lower bound
    if torch.backends.mkldnn.is_available():
        assert torch_kernels.unavailable("onednn_linear") == ""
    assert torch_kernels.unavailable("int8_weight_mm") == ""
    assert torch_kernels.int8_weight_mm_kernel() is torch._weight_int8pack_mm


def test_local_build_tags_do_not_count(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.1+cpu")
    assert str(torch_kernels.torch_version()) == "2.13.1"


def test_unknown_kernel_names_fail_loudly():
    with pytest.raises(KeyError, match="unknown kernel"):
        torch_kernels.unavailable("int3_weight_mm")


def test_untested_torch_leaves_weights_unpacked_and_says_so_once(monkeypatch, caplog):
    _pretend_untested(monkeypatch)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros.compat.torch_kernels"):
        for _ in range(2):
            packed, why_not = pack_linear_weights(model)
            assert packed == 0 and not is_packed(model)
            if torch.backends.mkldnn.is_available():
                assert "outside the versions the private onednn_linear kernel was tested on" in why_not
    assert caplog.text.count("onednn_linear") == (1 if torch.backends.mkldnn.is_available() else 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_untested_torch_gives_the_int8_kernels_product_through_public_ops(monkeypatch, caplog, dtype):
    torch.manual_seed(0)
    linear = nn.Linear(64, 24).to(dtype)
    x = torch.randn(3, 5, 64).to(dtype)
    fast = Int8Linear(linear)(x)
    assert fast.shape == (3, 5, 24)
    _pretend_untested(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="sage_irp_ros.compat.torch_kernels"):
        plain_layers = [Int8Linear(linear) for _ in range(3)]
    assert all(layer._mm is not torch._weight_int8pack_mm for layer in plain_layers)
    assert caplog.text.count("int8_weight_mm") == 1
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(plain_layers[0](x).float(), fast.float(), **tol)
    qweight, scale = quantize_per_channel(linear.weight)
    want = nn.functional.linear(x.float(), qweight.float() * scale[:, None], linear.bias.float())
    torch.testing.assert_close(plain_layers[0](x).float(), want, **tol)
