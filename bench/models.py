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

"""Models and prompts shared by the benchmark scripts (only torch and transformers needed here).

- ``DEMO_QUESTIONS``: the research report's five demo questions (spec, last section).
- Random models with a real model's exact architecture: weights do not change speed, so a random
  Qwen2.5-0.5B-Instruct-shaped model gives realistic timings without the weights (no hub access).
"""

from __future__ import annotations

import time

# The demo questions live in one place; sage_irp_ros.tools.cli imports only the standard library at module
# level, so this keeps bench.models (and the GPU check that imports it) free of the package's dependencies.
from sage_irp_ros.tools.cli import DEMO_QUESTIONS  # noqa: E402

# Earlier exchanges for "a question in a conversation": the first four demo questions with answers of
# a typical length (the research system rendered them as a CONVERSATION HISTORY context block).
DEMO_HISTORY = (
    (DEMO_QUESTIONS[0], "Knowledge is having information: facts, definitions and procedures you can recall. "
                        "Understanding is knowing how those facts connect and why they hold, so you can "
                        "explain them, apply them to new situations and notice when something does not fit."),
    (DEMO_QUESTIONS[1], "I can use the messages of this conversation while I write an answer, so in that "
                        "limited sense I keep track of it. I do not have experiences or awareness the way a "
                        "person does; I process text and produce a reply."),
    (DEMO_QUESTIONS[2], "2 + 2 = 4."),
    (DEMO_QUESTIONS[3], "Both, in a way. I generate each word from patterns learned during training, so the "
                        "answer is created step by step, but it is shaped by what I learned, which can feel "
                        "like discovering something that was already implied by the question."),
)

# Qwen2.5-0.5B-Instruct's architecture (its config.json), 494 M parameters with tied embeddings.
QWEN05B_SHAPE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                     rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                     bos_token_id=151643, eos_token_id=151645)
# SmolLM2-135M(-Instruct)'s architecture, 134.5 M parameters with tied embeddings.
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                     rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                     bos_token_id=1, eos_token_id=2)
# A toy shape for dry runs of the scripts.
TINY_SHAPE = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)

SHAPES = {"qwen05b-shape": ("qwen2", QWEN05B_SHAPE), "smollm2-shape": ("llama", SMOLLM2_SHAPE),
          "tiny": ("llama", TINY_SHAPE)}


def random_model(shape: str, dtype=None, device="cpu", seed: int = 0):
    """A randomly initialised causal LM with the named architecture; returns (model, seconds to build)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kind, values = SHAPES[shape]
    config = (Qwen2Config if kind == "qwen2" else LlamaConfig)(**values)
    start = time.monotonic()
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32)
    model.eval()
    return model, time.monotonic() - start


def weight_bytes(model) -> int:
    """Bytes of distinct parameters and buffers (tied embeddings counted once)."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total
