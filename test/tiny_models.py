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

"""Build real, tiny transformers models (and LoRA adapters) on disk for fast tests.

The models are random but real: a Llama architecture with hidden size 64, a BPE tokenizer trained
here with the `tokenizers` library and saved as PreTrainedTokenizerFast, loaded back through the
normal ``from_pretrained(folder)`` path the package uses for users' models.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported inside the functions, so torch-free test venvs can import this
    import torch


CORPUS = [
    "What is the difference between knowledge and understanding?",
    "Are you aware of this conversation?", "What is 2+2? The answer is 4.",
    "When you generate a response, are you discovering it or creating it?",
    "How does compression affect meaning?", "The robot moves to the kitchen and picks up the cup.",
    "Knowledge is information; understanding is knowing why.", "Yes. No. Maybe. I think so.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,!?;:'\"()-+=/",
] * 20
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build_tokenizer(out: Path, chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|endoftext|>", "<|im_start|>",
                                                                  "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_tiny_model(out: Path, *, chat_template: bool = True, seed: int = 0, layers: int = 2,
                     max_positions: int = 512, hidden: int = 64) -> Path:
    """A random Llama (hidden 64) with its tokenizer in ``out``; returns ``out``."""
    import torch  # here, not at the top: the torch-free tests (Python 3.10/3.12 matrix) share this conftest
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, chat_template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


def build_lora_adapter(base: Path, out: Path, *, rank: int = 4, seed: int = 1,
                       target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A LoRA adapter for ``base`` with non-zero weights (so merging changes the logits)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=8, target_modules=list(target_modules),
                                                  init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    return Path(out)


def load_on_cpu(**model):
    """``load_model`` as a test uses it: the given ``model:`` keys, on the CPU unless they say otherwise.

    fp32 full-width weights unless the test asks otherwise: ``precision: auto`` means bf16 on CPUs with
    native bf16 and ``weight_quantization: auto`` int4 where PyTorch's int4 kernel is usable, and a test's
    arithmetic must not depend on the machine it runs on; for the same reason int4 weights get no bf16
    copy for many-row products (``int4_dense_above_rows``, kept only on CPUs with AMX).
    """
    from sage_irp_ros.config.settings import SageConfig
    from sage_irp_ros.weights.loader import load_model

    cfg = SageConfig.from_mapping({"model": {"device": "cpu", "precision": "fp32", "weight_quantization": "none",
                                             "int4_dense_above_rows": 0, **model}})
    return load_model(cfg.model)


def prompt_logits(lm, text: str = "What is 2+2?") -> torch.Tensor:
    """The model's logits for every position of ``text``."""
    import torch

    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return lm.model(ids).logits
