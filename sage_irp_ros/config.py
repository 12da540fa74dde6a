"""Typed, validated configuration for the IRP core, loaded from YAML.

One schema serves three front doors: a plain YAML file with the research system's sections
(``llm_irp:``, ``snarc:``, ``memory:``), a ROS 2 parameters file (``/**: ros__parameters:`` wrapping the
same sections) and ROS parameters set at run time (flattened ``section.key`` names). Every key is
declared once, here, with its type, range and description; the ROS node derives its parameter
descriptors from the same declarations, so the two cannot drift apart.

Validation fails with one :class:`ConfigError` that names every bad key and its allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
ENERGIES = ("consensus", "response", "seed")
POWER_MODES = ("efficiency", "balanced", "performance")
PROBE_BACKENDS = ("auto", "jtop", "nvml", "sysfs")
MEMORY_LIMIT_ACTIONS = ("warn", "error")
DECODERS = ("auto", "hf", "static")
WEIGHT_QUANTIZATIONS = ("none", "int8")


class ConfigError(ValueError):
    """A configuration value is unknown or out of range; the message names each key."""


def _key(doc: str, *, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] | None = None, lo_open: bool = False) -> dict[str, Any]:
    """Field metadata: a one-line description and the allowed range or choices."""
    return {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "lo_open": lo_open}


@dataclass(frozen=True)
class IRPConfig:
    """``llm_irp:`` — the research system's keys plus the package's batching, deadline and limits."""

    irp_iterations: int = field(default=3, metadata=_key(
        "Candidate answers per question (the research loop's iterations)", lo=1, hi=64))
    initial_temperature: float = field(default=0.7, metadata=_key(
        "Sampling temperature of the first candidate", lo=0.0, hi=5.0, lo_open=True))
    min_temperature: float = field(default=0.54, metadata=_key(
        "Temperature floor; reaching it halts refinement", lo=0.0, hi=5.0, lo_open=True))
    temp_reduction: float = field(default=0.053, metadata=_key(
        "Temperature decrease per candidate", lo=0.0, hi=5.0))
    max_tokens: int = field(default=150, metadata=_key(
        "Maximum new tokens per candidate", lo=1, hi=8192))
    energy_convergence_threshold: float = field(default=0.1, metadata=_key(
        "Halt when the best energy falls below this", lo=0.0, hi=1.0))
    energy_plateau_window: int = field(default=3, metadata=_key(
        "Halt when this many last energies lie within energy_plateau_delta", lo=2, hi=64))
    energy_plateau_delta: float = field(default=0.05, metadata=_key(
        "Spread of the last energies that counts as a plateau", lo=0.0, hi=1.0))
    model_keep_alive: bool = field(default=True, metadata=_key(
        "Keep the model resident between questions (false: release it after each answer)"))
    max_memory_mb: int = field(default=0, metadata=_key(
        "Budget for the loaded model's weights in MB; 0 disables the check", lo=0, hi=1_000_000))
    memory_limit_action: str = field(default="warn", metadata=_key(
        "What exceeding max_memory_mb does", choices=MEMORY_LIMIT_ACTIONS))
    device: str = field(default="auto", metadata=_key("Inference device", choices=DEVICES))
    precision: str = field(default="auto", metadata=_key(
        "Weight precision; auto = fp16 on CUDA, bf16 on a CPU with native bf16 (AVX512-BF16/AMX), else fp32",
        choices=PRECISIONS))
    enable_thermal_monitoring: bool = field(default=True, metadata=_key(
        "Follow the 'throttled' topic and use the throttled_* limits while it is true"))
    thermal_throttle_threshold: float = field(default=85.0, metadata=_key(
        "Zone temperature in deg C at which the diagnostics node reports throttling", lo=20.0, hi=130.0))
    pack_cpu_weights: bool = field(default=True, metadata=_key(
        "On CPU, reorder Linear weights once into oneDNN's blocked layout at load: the same fp32/bf16 "
        "arithmetic, 1.5-2x faster decoding of several candidates (a tied output head gets its own copy)"))
    decoder: str = field(default="auto", metadata=_key(
        "Decode loop: static = the package's own loop (static KV cache, shared prefill, greedy rows at "
        "temperature 0), hf = transformers' generate; auto = static", choices=DECODERS))
    weight_quantization: str = field(default="none", metadata=_key(
        "Linear weights (output head and tied embedding included) as int8 per output channel, LoRA merged "
        "first: a quarter of fp32's memory; fast on CUDA, slower than fp32 on CPU (docs/performance.md)",
        choices=WEIGHT_QUANTIZATIONS))
    power_mode: str = field(default="balanced", metadata=_key(
        "CPU threads for inference: efficiency = half the cores, balanced = all but one, "
        "performance = all", choices=POWER_MODES))
    candidates_per_round: int = field(default=0, metadata=_key(
        "Candidates sampled together in one generate call; 0 = all at once, 1 = the sequential "
        "research loop", lo=0, hi=64))
    energy: str = field(default="consensus", metadata=_key(
        "Energy that ranks candidates: consensus (agreement with the other candidates, model "
        "confidence, repetition), response (model confidence, finish, length, repetition) or seed "
        "(the research formula, dominated by temperature)", choices=ENERGIES))
    greedy_candidate: bool = field(default=True, metadata=_key(
        "Add the greedy (temperature 0) continuation as one more row of the first batched call, so "
        "the pick can never miss the plain greedy answer; off reproduces the research loop's sampling"))
    deadline_s: float = field(default=0.0, metadata=_key(
        "Per-question time budget; on expiry the best answer so far is returned. 0 = none",
        lo=0.0, hi=3600.0))
    max_question_chars: int = field(default=4000, metadata=_key(
        "Longest accepted question (characters)", lo=1, hi=1_000_000))
    throttled_candidates: int = field(default=1, metadata=_key(
        "Candidates per question while the platform is throttled", lo=1, hi=64))
    throttled_max_tokens: int = field(default=64, metadata=_key(
        "Maximum new tokens while the platform is throttled (capped at max_tokens)", lo=1, hi=8192))
    min_available_memory_mb: int = field(default=256, metadata=_key(
        "Refuse new questions with out_of_memory while available RAM is below this; 0 = never",
        lo=0, hi=1_000_000))
    seed: int = field(default=-1, metadata=_key(
        "Random seed for sampling; -1 = not seeded", lo=-1, hi=2**31 - 1))


@dataclass(frozen=True)
class ModelConfig:
    """``model:`` — which weights to load. Empty ``path`` selects the embedded SmolLM2-135M-Instruct."""

    path: str = field(default="", metadata=_key(
        "Local Hugging Face folder, or a .gguf file; empty = embedded SmolLM2-135M-Instruct"))
    gguf_file: str = field(default="", metadata=_key(
        "GGUF file name inside 'path' when path is a folder holding a GGUF"))
    adapter_path: str = field(default="", metadata=_key("Local PEFT LoRA adapter folder; empty = none"))
    merge_adapter: bool = field(default=True, metadata=_key(
        "Merge the LoRA adapter into the base weights at load (faster decoding)"))
    cache_dir: str = field(default="", metadata=_key(
        "Where converted models are cached; empty = $XDG_CACHE_HOME/sage_irp_ros"))
    warmup: bool = field(default=True, metadata=_key(
        "Run one short generation after load so the first question is not slower"))


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
        return (self.surprise_weight, self.novelty_weight, self.arousal_weight,
                self.reward_weight, self.conflict_weight)


@dataclass(frozen=True)
class MemoryConfig:
    """``memory:`` — conversation history and the salient-exchange store."""

    circular_buffer_size: int = field(default=5, metadata=_key(
        "Earlier exchanges of a conversation kept as context", lo=0, hi=100))
    verbatim_storage: bool = field(default=True, metadata=_key(
        "Store question and answer text; false stores SHA-256 digests only"))
    consolidation_interval: int = field(default=100, metadata=_key(
        "Every this many stored exchanges, checkpoint the WAL and record a consolidation summary; "
        "0 = never", lo=0, hi=1_000_000))
    db_path: str = field(default="", metadata=_key(
        "SQLite file for salient exchanges; empty = $XDG_DATA_HOME/sage_irp_ros/memory.db; "
        "'none' disables storage"))
    max_conversations: int = field(default=1000, metadata=_key(
        "Conversation histories kept in RAM (least recently used dropped first)", lo=1, hi=1_000_000))
    max_rows: int = field(default=20_000, metadata=_key(
        "Retention: keep at most this many stored exchanges (the oldest are deleted at each "
        "consolidation); 0 = no limit", lo=0, hi=100_000_000))
    max_age_days: float = field(default=90.0, metadata=_key(
        "Retention: delete stored exchanges older than this at each consolidation; 0 = keep forever",
        lo=0.0, hi=36_500.0))


@dataclass(frozen=True)
class NodeConfig:
    """``node:`` — ROS-side behaviour of the IRP node (ignored by the plain Python API)."""

    autostart: bool = field(default=True, metadata=_key(
        "Configure and activate by itself, without a lifecycle manager"))
    queue_size: int = field(default=8, metadata=_key("Questions waiting for inference", lo=1, hi=10_000))
    status_period_s: float = field(default=1.0, metadata=_key(
        "Period of the status heartbeat", lo=0.05, hi=3600.0))
    shutdown_timeout_s: float = field(default=10.0, metadata=_key(
        "How long shutdown and deactivate wait for the running question before cancelling it",
        lo=0.0, hi=600.0))
    throttled_timeout_s: float = field(default=5.0, metadata=_key(
        "A 'throttled' value older than this is stale: treated as not throttled (status says "
        "stale); 0 = never stale", lo=0.0, hi=3600.0))


@dataclass(frozen=True)
class DiagnosticsConfig:
    """``diagnostics:`` — the diagnostics node and its probes."""

    backend: str = field(default="auto", metadata=_key(
        "Probe backend: auto picks jtop, then NVML, then sysfs", choices=PROBE_BACKENDS))
    rate_hz: float = field(default=1.0, metadata=_key("Publishing rate of /diagnostics", lo=0.01, hi=100.0))
    latency_warn_s: float = field(default=10.0, metadata=_key(
        "IRP inference latency above which the status is WARN", lo=0.0, hi=3600.0))
    stale_timeout_s: float = field(default=5.0, metadata=_key(
        "IRP status older than this is STALE", lo=0.1, hi=3600.0))
    sysfs_root: str = field(default="/", metadata=_key(
        "Root under which /sys, /proc and /etc are read (a recorded tree in tests)"))


SECTIONS: dict[str, type] = {
    "llm_irp": IRPConfig,
    "model": ModelConfig,
    "snarc": SnarcConfig,
    "memory": MemoryConfig,
    "node": NodeConfig,
    "diagnostics": DiagnosticsConfig,
}


@dataclass(frozen=True)
class SageConfig:
    """The whole configuration: one frozen dataclass per YAML section."""

    llm_irp: IRPConfig = field(default_factory=IRPConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    snarc: SnarcConfig = field(default_factory=SnarcConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "SageConfig":
        """Build from nested sections (or a ROS params mapping); raise ConfigError on any bad key."""
        data = unwrap_ros_parameters(data or {})
        flat: dict[str, Any] = {}
        problems: list[str] = []
        if not isinstance(data, Mapping):
            raise ConfigError(f"configuration must be a mapping of sections, got {type(data).__name__}")
        for section, values in data.items():
            if section not in SECTIONS:
                problems.append(f"{section}: unknown section (allowed: {', '.join(SECTIONS)})")
                continue
            if not isinstance(values, Mapping):
                problems.append(f"{section}: must be a mapping of keys")
                continue
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        try:
            config = cls().with_updates(flat)
        except ConfigError as exc:
            problems += str(exc).splitlines()[1:]
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(p.strip() for p in problems))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SageConfig":
        """Load a YAML file: plain sections or a ROS 2 ``ros__parameters`` file."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
        return cls.from_mapping(data)

    def with_updates(self, flat: Mapping[str, Any]) -> "SageConfig":
        """Return a copy with ``section.key`` values replaced; every value is checked."""
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        problems: list[str] = []
        for dotted, value in flat.items():
            section, _, key = dotted.partition(".")
            spec = SECTIONS.get(section)
            fields_ = {f.name: f for f in dataclasses.fields(spec)} if spec else {}
            if key not in fields_:
                allowed = ", ".join(fields_) if fields_ else ", ".join(SECTIONS)
                problems.append(f"{dotted}: unknown key (allowed: {allowed})")
                continue
            try:
                sections[section][key] = _coerce(fields_[key], value)
            except ConfigError as exc:
                problems.append(f"{dotted}: {exc}")
        built = {name: SECTIONS[name](**values) for name, values in sections.items()}
        problems += _cross_checks(built["llm_irp"])
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return SageConfig(**built)

    # -- views ----------------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every key (the ROS parameter names)."""
        return {f"{name}.{key}": value for name in SECTIONS
                for key, value in dataclasses.asdict(getattr(self, name)).items()}


def unwrap_ros_parameters(data: Any) -> Any:
    """Return the sections inside a ROS 2 params file (``/**: ros__parameters: {...}``), else ``data``.

    When several node entries are present, their parameters are merged (a wildcard entry first).
    """
    if not isinstance(data, Mapping) or not any(
            isinstance(v, Mapping) and "ros__parameters" in v for v in data.values()):
        return data
    merged: dict[str, Any] = {}
    for node_name in sorted(data, key=lambda name: 0 if "*" in str(name) else 1):
        params = data[node_name].get("ros__parameters", {}) if isinstance(data[node_name], Mapping) else {}
        for section, values in params.items():
            if isinstance(values, Mapping):
                merged.setdefault(section, {}).update(values)
            else:  # a top-level scalar parameter: keep it so validation names it
                merged[section] = values
    # Node-private parameters that are not part of the core schema (e.g. use_sim_time) are ROS's own.
    merged.pop("use_sim_time", None)
    return merged


def describe_keys() -> Iterator[tuple[str, dataclasses.Field]]:
    """Yield ``("section.key", field)`` for every configuration key, in declaration order."""
    for name, spec in SECTIONS.items():
        for f in dataclasses.fields(spec):
            yield f"{name}.{f.name}", f


def allowed_range(f: dataclasses.Field) -> str:
    """Human-readable allowed values of a key, for messages and docs."""
    meta = f.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    if f.type in ("bool", bool):
        return "true or false"
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is None and hi is None:
        return "a string"
    left = "(" if meta.get("lo_open") else "["
    return f"{left}{lo}, {hi}]"


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert a YAML/ROS value to the field's type and check its range."""
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    meta = f.metadata
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{value!r} is not allowed; use {allowed_range(f)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"must be a number in {allowed_range(f)}, got {value!r}")
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"must be a whole number in {allowed_range(f)}, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"must be a finite number in {allowed_range(f)}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    if too_low or (hi is not None and value > hi):
        raise ConfigError(f"{value!r} is out of range; allowed {allowed_range(f)}")
    return value


def _cross_checks(irp: IRPConfig) -> list[str]:
    """Rules that involve more than one key."""
    problems = []
    if irp.min_temperature > irp.initial_temperature:
        problems.append(
            f"llm_irp.min_temperature: {irp.min_temperature} is above llm_irp.initial_temperature "
            f"{irp.initial_temperature}; allowed (0, initial_temperature]")
    return problems
