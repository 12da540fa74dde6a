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

"""The configuration schema: one frozen dataclass per section, every key with its doc, range and timing.

Sections by concern, in the order the docs list them:

- ``model:`` what to load and how to run it (weights, adapter, device, precision, packing, memory budget,
  keep-alive, CPU threads);
- ``llm_irp:`` how a question is answered: candidate sampling, selection, halting, deadline, limits;
- ``throttle:`` what changes while the platform reports thermal throttling;
- ``snarc:`` salience weights and threshold;
- ``history:`` conversation history kept in RAM as context;
- ``memory:`` the SQLite store of salient exchanges and its retention;
- ``node:`` the IRP node's ROS-side behaviour;
- ``diagnostics:`` the diagnostics node and its probes;
- ``remote:`` candidate generation on a serving engine (vLLM, llama.cpp server) instead of on board.

Each key's metadata holds a one-line ``doc``, the allowed range or choices, ``applies`` (when a value set
at run time takes effect in the node that reads it: live, configure or read-only) and ``off``: for the
keys where one value switches a behaviour off, that value and what it means. ROS parameter descriptors
and docs/interface.md's parameter table are generated from this metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
ENERGIES = ("consensus", "response", "seed")
POWER_MODES = ("efficiency", "balanced", "performance")
PROBE_BACKENDS = ("auto", "jtop", "nvml", "sysfs")
MEMORY_LIMIT_ACTIONS = ("warn", "error")
WEIGHT_QUANTIZATIONS = ("auto", "none", "int8", "int4")
FORWARDS = ("auto", "torch", "llama_cpp")
KV_CACHE_TYPES = ("f16", "q8_0")
COMPILE_MODES = ("auto", "on", "off")
STOPPING_MODES = ("auto", "parallel", "sequential", "off")
FALLBACKS = ("local", "none")
LIVE, CONFIGURE, READ_ONLY = "live", "configure", "read-only"
_BETWEEN_ROUNDS = ("; checked between rounds, so it acts only when candidates_per_round is below candidates "
                   "(in the default single round every candidate is already sampled)")


def _key(doc: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] | None = None, lo_open: bool = False, applies: str = LIVE,
         off: str | None = None) -> dict[str, Any]:
    """Field metadata: a one-line description, the allowed range or choices, when it applies, its off value."""
    return {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open, "applies": applies,
            "off": off}


@dataclass(frozen=True)
class ModelConfig:
    """``model:`` — which weights to load and how to run them; read when the model is loaded."""

    path: str = field(default="", metadata=_key(
        "Local Hugging Face folder, or a .gguf file; empty = embedded SmolLM2-135M-Instruct", applies=CONFIGURE))
    gguf_file: str = field(default="", metadata=_key(
        "GGUF file name inside 'path' when path is a folder holding a GGUF", applies=CONFIGURE))
    adapter_path: str = field(default="", metadata=_key(
        "Local PEFT LoRA adapter folder; empty = none", applies=CONFIGURE))
    merge_adapter: bool = field(default=True, metadata=_key(
        "Merge the LoRA adapter into the base weights at load (faster decoding)", applies=CONFIGURE))
    cache_dir: str = field(default="", metadata=_key(
        "Where converted models are cached; empty = $XDG_CACHE_HOME/sage_irp_ros", applies=CONFIGURE))
    warmup: bool = field(default=True, metadata=_key(
        "Run one short generation after load so the first question is not slower", applies=CONFIGURE))
    device: str = field(default="auto", metadata=_key(
        "Inference device; auto = cuda when available, else cpu", choices=DEVICES, applies=CONFIGURE))
    precision: str = field(default="auto", metadata=_key(
        "Weight precision; auto = fp16 on CUDA, bf16 on a CPU with native bf16 (AVX512-BF16/AMX), else fp32",
        choices=PRECISIONS, applies=CONFIGURE))
    forward: str = field(default="auto", metadata=_key(
        "What computes the model's logits: llama_cpp = llama.cpp's kernels in process over a GGUF's own blocks "
        "(llama-cpp-python; rows share one KV cache; the package keeps its sampling, constraints and log-probs), "
        "torch = PyTorch (HF folders, LoRA adapters, CUDA); auto = llama_cpp for a GGUF on CPU without an "
        "adapter when llama-cpp-python is installed and weight_quantization is auto, else torch "
        "(docs/performance.md)", choices=FORWARDS, applies=CONFIGURE))
    weight_quantization: str = field(default="auto", metadata=_key(
        "int4: Linear weights 4-bit in groups (a Q4_0/Q4_1 GGUF's own blocks; others quantised at load), "
        "embedding and output head 8-bit blocks, on PyTorch's int4 kernel with bf16 activations: about 2x "
        "faster decoding and a fifth of fp32's memory; int8: per output channel (slower than fp32 on CPU); "
        "auto = int4 on CPU where the kernel is usable, else none; LoRA merged first; replaces "
        "pack_cpu_weights (docs/performance.md)", choices=WEIGHT_QUANTIZATIONS, applies=CONFIGURE))
    int4_dense_above_rows: int = field(default=4, metadata=_key(
        "With int4 weights on a CPU with AMX, products of more rows than this (batched questions, prompts) "
        "run on a bf16 copy of the weights kept as well: PyTorch's CPU int4 kernel costs grow with every 4 rows, "
        "a bf16 product's on AMX barely (+2 bytes per weight); without AMX no copy is made (it is not faster "
        "there)", lo=0, hi=4096, applies=CONFIGURE,
        off="0 = no copy: int4 only, least memory"))
    kv_cache_cells: int = field(default=4096, metadata=_key(
        "On llama.cpp's forward, the KV cells every decoding row shares (one per token of a prompt or a row's "
        "answer; about 22 KB each for SmolLM2-135M, made resident at load): fewer take less memory and let "
        "fewer questions decode at once (a question reserves its prompt and llm_irp.max_tokens per row; 512 "
        "stay free for scoring given answers)", lo=1024, hi=131072, applies=CONFIGURE))
    kv_cache_type: str = field(default="f16", metadata=_key(
        "On llama.cpp's forward, how the KV cells hold keys and values: f16, or q8_0 = 8-bit blocks with "
        "flash attention, about half the cache's memory (12 KB a cell for SmolLM2-135M) with answers and "
        "step times measured in docs/performance.md", choices=KV_CACHE_TYPES, applies=CONFIGURE))
    pack_cpu_weights: bool = field(default=True, metadata=_key(
        "On CPU, reorder Linear weights once into oneDNN's blocked layout at load: the same fp32/bf16 "
        "arithmetic, 1.5-2x faster decoding of several candidates (a tied output head gets its own copy)",
        applies=CONFIGURE))
    max_memory_mb: int = field(default=0, metadata=_key(
        "Budget for the loaded model's weights in MB (the diagnostics node warns above it too)",
        lo=0, hi=1_000_000, applies=CONFIGURE, off="0 = no budget"))
    memory_limit_action: str = field(default="warn", metadata=_key(
        "What a model over max_memory_mb does: warn and serve, or error (configure fails)",
        choices=MEMORY_LIMIT_ACTIONS, applies=CONFIGURE))
    keep_alive: bool = field(default=True, metadata=_key(
        "Keep the model resident between questions (false: release it after each answer)", applies=CONFIGURE))
    power_mode: str = field(default="balanced", metadata=_key(
        "CPU threads for inference: efficiency = half the cores, balanced = all but one, performance = all",
        choices=POWER_MODES, applies=CONFIGURE))


@dataclass(frozen=True)
class IRPConfig:
    """``llm_irp:`` — candidate sampling, selection and halting (the research system's keys), deadline, limits."""

    candidates: int = field(default=3, metadata=_key(
        "Sampled candidate answers per question, one per temperature of the annealed schedule", lo=1, hi=64))
    initial_temperature: float = field(default=0.7, metadata=_key(
        "Sampling temperature of the first candidate", lo=0.0, hi=5.0, lo_open=True))
    min_temperature: float = field(default=0.54, metadata=_key(
        "Temperature floor: the schedule stops at the candidate that reaches it", lo=0.0, hi=5.0, lo_open=True))
    temp_reduction: float = field(default=0.053, metadata=_key(
        "Temperature decrease from one candidate to the next", lo=0.0, hi=5.0))
    max_tokens: int = field(default=150, metadata=_key("Maximum new tokens per candidate", lo=1, hi=8192))
    candidates_per_round: int = field(default=0, metadata=_key(
        "Candidates sampled together in one batched call (a round); 1 = the sequential research loop",
        lo=0, hi=64, off="0 = all candidates in one round"))
    energy: str = field(default="consensus", metadata=_key(
        "Energy that ranks candidates: consensus (agreement with the other candidates, model confidence, "
        "repetition), response (model confidence, finish, length, repetition) or seed (the research formula, "
        "dominated by temperature)", choices=ENERGIES))
    greedy_candidate: bool = field(default=True, metadata=_key(
        "Add the greedy (temperature 0) continuation as one more row of the first round, so the pick can "
        "never miss the plain greedy answer; off reproduces the research loop's sampling"))
    sampled_prompts: str = field(default="2", metadata=_key(
        "Phrasings of the prompt the sampled candidates use, in turn: comma-separated indices into the prompt "
        "bank (0 = the plain prompt; 1-3 = system prompts, docs/performance.md 'Prompt-diverse candidates'); "
        "the greedy row always uses the plain prompt; chosen on the tuning half", off="0 = the plain prompt only"))
    stopping: str = field(default="auto", metadata=_key(
        "How a question's candidates stop early (docs/performance.md 'Adaptive IRP'): parallel = every row at "
        "once, rows dropped and the question ended between decode steps by the rules below; sequential = the "
        "greedy row alone first, the sampled rows only when it is not confident; auto = sequential where an "
        "extra row costs most of a row (measured at load: a CPU with llama.cpp's forward), else parallel",
        choices=STOPPING_MODES, off="off = every row to its end"))
    stop_greedy_nll: float = field(default=0.8, metadata=_key(
        "A finished greedy row with mean negative log-likelihood at or under this ends its question",
        lo=0.0, hi=10.0, off="0 = off"))
    stop_greedy_confidence: float = field(default=0.3, metadata=_key(
        "A finished greedy row whose calibrated confidence alone is at or over this ends its question",
        lo=0.0, hi=1.0, off="0 = off"))
    stop_agree_rows: int = field(default=2, metadata=_key(
        "The question ends when this many finished rows agree (word F1 >= stop_agree_f1)", lo=0, hi=64,
        off="0 = off"))
    stop_agree_f1: float = field(default=0.5, metadata=_key(
        "Word overlap (F1) that counts as agreeing, for stop_agree_rows", lo=0.0, hi=1.0))
    stop_prune_margin: float = field(default=2.0, metadata=_key(
        "A sampled row whose last 8 tokens' mean NLL exceeds the most confident row's by more than this many "
        "nats is dropped", lo=0.0, hi=20.0, off="0 = off"))
    energy_convergence_threshold: float = field(default=0.1, metadata=_key(
        "Halt when the best energy falls below this (also sets the result's irp.converged)" + _BETWEEN_ROUNDS,
        lo=0.0, hi=1.0))
    energy_plateau_window: int = field(default=3, metadata=_key(
        "Halt when this many last energies lie within energy_plateau_delta" + _BETWEEN_ROUNDS, lo=2, hi=64))
    energy_plateau_delta: float = field(default=0.05, metadata=_key(
        "Spread of the last energies that counts as a plateau" + _BETWEEN_ROUNDS, lo=0.0, hi=1.0))
    compile: str = field(default="auto", metadata=_key(
        "Compile the decode step (inductor on CPU, CUDA graphs on CUDA), in the background while the eager "
        "step answers, kernels cached on disk; auto = on CUDA only (on a CPU it measured slower at the "
        "default row counts and 200+ MB larger), on = also on CPU (needs a C++ compiler); a tested torch "
        "only, else eager with one warning", choices=COMPILE_MODES, off="off = always the eager step"))
    deadline_s: float = field(default=0.0, metadata=_key(
        "Per-question time budget; on expiry the best answer so far is returned", lo=0.0, hi=3600.0,
        off="0 = no deadline"))
    max_question_chars: int = field(default=4000, metadata=_key(
        "Longest accepted question (characters)", lo=1, hi=1_000_000))
    min_available_memory_mb: int = field(default=256, metadata=_key(
        "Refuse new questions with out_of_memory while available RAM is below this", lo=0, hi=1_000_000,
        off="0 = no check"))
    min_confidence: float = field(default=0.0, metadata=_key(
        'An ok result whose calibrated confidence is below this says "confident": false (the answer is '
        "still given); a question's own min_confidence wins", lo=0.0, hi=1.0, off="0 = off (always confident)"))
    seed: int = field(default=-1, metadata=_key(
        "Random seed for sampling", lo=-1, hi=2**31 - 1, off="-1 = not seeded"))


@dataclass(frozen=True)
class ThrottleConfig:
    """``throttle:`` — answering while the platform reports thermal throttling (the ``throttled`` topic)."""

    enabled: bool = field(default=True, metadata=_key(
        "Follow the 'throttled' topic; while it is true answer greedily (one row at temperature 0) with "
        "throttle.max_tokens"))
    max_tokens: int = field(default=64, metadata=_key(
        "Maximum new tokens of a throttled answer (capped at llm_irp.max_tokens)", lo=1, hi=8192))
    stale_timeout_s: float = field(default=5.0, metadata=_key(
        "A 'throttled' value older than this is stale: treated as not throttled (status says stale)",
        lo=0.0, hi=3600.0, off="0 = never stale"))


@dataclass(frozen=True)
class SnarcConfig:
    """``snarc:`` — salience weights and threshold."""

    salience_threshold: float = field(default=0.15, metadata=_key(
        "An exchange is salient when its weighted total reaches this", lo=0.0, hi=1.0))
    surprise_weight: float = field(default=0.2, metadata=_key("Weight of surprise", lo=0.0, hi=10.0))
    novelty_weight: float = field(default=0.2, metadata=_key("Weight of novelty", lo=0.0, hi=10.0))
    arousal_weight: float = field(default=0.2, metadata=_key("Weight of arousal", lo=0.0, hi=10.0))
    reward_weight: float = field(default=0.2, metadata=_key("Weight of reward", lo=0.0, hi=10.0))
    conflict_weight: float = field(default=0.2, metadata=_key("Weight of conflict", lo=0.0, hi=10.0))

    @property
    def weights(self) -> tuple[float, float, float, float, float]:
        """The five dimension weights, in SNARC order."""
        return (self.surprise_weight, self.novelty_weight, self.arousal_weight,
                self.reward_weight, self.conflict_weight)


@dataclass(frozen=True)
class HistoryConfig:
    """``history:`` — the conversation histories kept in RAM and given to the model as context."""

    depth: int = field(default=5, metadata=_key(
        "Earlier exchanges of a conversation kept as context (a circular buffer)", lo=0, hi=100))
    max_conversations: int = field(default=1000, metadata=_key(
        "Conversation histories kept in RAM (least recently used dropped first)", lo=1, hi=1_000_000))


@dataclass(frozen=True)
class MemoryConfig:
    """``memory:`` — the SQLite store of salient exchanges and its retention."""

    db_path: str = field(default="", metadata=_key(
        "SQLite file for salient exchanges; empty = $XDG_DATA_HOME/sage_irp_ros/memory.db; 'none' disables "
        "storage", applies=CONFIGURE))
    verbatim_storage: bool = field(default=True, metadata=_key(
        "Store question and answer text; false stores SHA-256 digests only"))
    consolidation_interval: int = field(default=100, metadata=_key(
        "Every this many stored exchanges, checkpoint the WAL, apply retention and record a consolidation "
        "summary", lo=0, hi=1_000_000, off="0 = never (nothing is pruned)"))
    max_rows: int = field(default=20_000, metadata=_key(
        "Retention: keep at most this many stored exchanges (the oldest are deleted at each consolidation)",
        lo=0, hi=100_000_000, off="0 = no limit"))
    max_age_days: float = field(default=90.0, metadata=_key(
        "Retention: delete stored exchanges older than this at each consolidation", lo=0.0, hi=36_500.0,
        off="0 = keep forever"))


@dataclass(frozen=True)
class NodeConfig:
    """``node:`` — ROS-side behaviour of the IRP node (ignored by the plain Python API)."""

    autostart: bool = field(default=True, metadata=_key(
        "Configure and activate by itself, without a lifecycle manager (edge.launch.py sets it false and "
        "drives the lifecycle itself)", applies=READ_ONLY))
    queue_size: int = field(default=8, metadata=_key("Questions waiting for inference", lo=1, hi=10_000))
    batch_size: int = field(default=8, metadata=_key(
        "Questions answered at once, their rows sharing each decoding step; a question arriving meanwhile "
        "joins at the next step (two questions of one conversation never decode together; while "
        "throttled: one at a time)", lo=1, hi=64,
        off="1 = one question at a time"))
    batch_wait_s: float = field(default=0.05, metadata=_key(
        "With batch_size above 1, how long the worker waits for more questions before starting a batch that "
        "is not full (the questions of a burst arrive milliseconds apart)", lo=0.0, hi=10.0,
        off="0 = start at once"))
    status_period_s: float = field(default=1.0, metadata=_key(
        "Period of the status heartbeat", lo=0.05, hi=3600.0))
    shutdown_timeout_s: float = field(default=10.0, metadata=_key(
        "How long shutdown and deactivate wait for the running question before cancelling it", lo=0.0, hi=600.0))


@dataclass(frozen=True)
class DiagnosticsConfig:
    """``diagnostics:`` — the diagnostics node and its probes (declared by the diagnostics node only)."""

    backend: str = field(default="auto", metadata=_key(
        "Probe backend: auto picks jtop, then NVML, then sysfs", choices=PROBE_BACKENDS))
    rate_hz: float = field(default=1.0, metadata=_key(
        "Publishing rate of /diagnostics (and of 'throttled')", lo=0.01, hi=100.0))
    latency_warn_s: float = field(default=10.0, metadata=_key(
        "IRP inference latency above which the status is WARN", lo=0.0, hi=3600.0))
    stale_timeout_s: float = field(default=5.0, metadata=_key(
        "IRP status older than this is STALE", lo=0.1, hi=3600.0))
    sysfs_root: str = field(default="/", metadata=_key(
        "Root under which /sys, /proc and /etc are read (a recorded tree in tests)"))
    throttle_threshold_c: float = field(default=85.0, metadata=_key(
        "Zone temperature in deg C at or above which the platform counts as throttled", lo=20.0, hi=130.0))


@dataclass(frozen=True)
class RemoteConfig:
    """``remote:`` — generate candidates on a serving engine over HTTP (docs/reliability.md, "Remote generation").

    The API key itself is never a key here: only the name of the environment variable or the file that
    holds it, so it appears in no parameter dump, status or log line.
    """

    url: str = field(default="", metadata=_key(
        "Base URL of an OpenAI-compatible server (vLLM, llama.cpp server), e.g. https://gpu-host:8000; "
        "empty = generate on board", applies=CONFIGURE, off="empty = the on-board model"))
    model: str = field(default="", metadata=_key(
        "Model name sent with every request; empty = the first model the server lists", applies=CONFIGURE))
    api_key_env: str = field(default="SAGE_IRP_API_KEY", metadata=_key(
        "Environment variable holding the API key (sent as a Bearer token); unset or empty = no key",
        applies=CONFIGURE))
    api_key_file: str = field(default="", metadata=_key(
        "File holding the API key (wins over api_key_env); empty = none", applies=CONFIGURE))
    timeout_s: float = field(default=60.0, metadata=_key(
        "Longest wait for one generation request (a question's deadline cuts it shorter)", lo=0.1, hi=3600.0,
        applies=CONFIGURE))
    connect_timeout_s: float = field(default=3.0, metadata=_key(
        "Longest wait to connect to the server", lo=0.05, hi=600.0, applies=CONFIGURE))
    verify_tls: bool = field(default=True, metadata=_key(
        "Verify the server's TLS certificate (https URLs); false only on a trusted test network",
        applies=CONFIGURE))
    ca_file: str = field(default="", metadata=_key(
        "CA bundle (PEM) that signs the server's certificate; empty = the system's", applies=CONFIGURE))
    fallback: str = field(default="local", metadata=_key(
        "local: keep the on-board model loaded and answer on board while the server is unreachable (and for "
        "choices / json_schema questions); none: load no model at all (a robot without a GPU)",
        choices=FALLBACKS, applies=CONFIGURE))
    max_concurrency: int = field(default=8, metadata=_key(
        "Requests in flight at once (the rows of a question and of questions decoded together)", lo=1, hi=256,
        applies=CONFIGURE))
    use_n: bool = field(default=False, metadata=_key(
        "Ask for rows sharing a temperature in one request with n (vLLM honours n; llama.cpp ignores it)",
        applies=CONFIGURE))
    breaker_failures: int = field(default=3, metadata=_key(
        "Consecutive failed requests that open the circuit breaker (no requests until its backoff ends)",
        lo=1, hi=1000, applies=CONFIGURE))
    breaker_backoff_s: float = field(default=2.0, metadata=_key(
        "First backoff of an open breaker; doubled after each failed trial", lo=0.01, hi=3600.0,
        applies=CONFIGURE))
    breaker_max_backoff_s: float = field(default=30.0, metadata=_key(
        "Longest backoff of an open breaker", lo=0.01, hi=3600.0, applies=CONFIGURE))


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "llm_irp": IRPConfig,
    "throttle": ThrottleConfig,
    "snarc": SnarcConfig,
    "history": HistoryConfig,
    "memory": MemoryConfig,
    "node": NodeConfig,
    "diagnostics": DiagnosticsConfig,
    "remote": RemoteConfig,
}
