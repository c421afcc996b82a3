"""The report of a run (``secateurs.json``), as dataclasses: the run, its walk, per-layer records, structured
changes, tuning and training. ``Report.to_json`` and ``Report.from_json`` are the one serialiser; the JSON Schema
shipped beside this module (``report_schema.json``) is generated from these classes (``json_schema``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .serialize import from_json_value, json_schema, to_json_value

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("report_schema.json")


@dataclass
class LayerRecord:
    """One pruned weight matrix: its achieved sparsity (and the plan's, under an allocation)."""

    name: str
    shape: list[int]
    sparsity: float
    target_sparsity: float | None = None
    pattern: str | None = None
    dampening: float | None = None  # lambda, when the Hessian needed more than the configured one
    dead_inputs: int | None = None  # input features no calibration token fired
    reconstruction_error: float | None = None  # ||(W - W') X|| / ||W X|| on the calibration inputs
    note: str | None = None


@dataclass
class TunedBlock:
    """EBFT on one block: the share of the dense block's update (output - input) the pruned block misses."""

    block: int
    error_before: float
    error_after: float
    kept: bool
    epoch_losses: list[float]


@dataclass
class EbftRecord:
    epochs: int
    lr: float
    target: str
    blocks: list[TunedBlock] = field(default_factory=list)
    precision: str = "float32"  # the tuning's products, as resolved on the device (auto: bfloat16 or float32)


@dataclass
class WalkRecord:
    """How the blocks were walked: the strategy, calibration windows per forward, passes and seconds per stage."""

    mode: str
    batch_size: int | None = None
    passes_per_block: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ebft: EbftRecord | None = None


@dataclass
class DistillRecord:
    epochs: int
    lr: float
    epoch_losses: list[float]  # mean KL to the dense model, nats per token
    seconds: float


@dataclass
class AllocationRecord:
    method: str
    note: str | None = None
    file: str | None = None
    outlier_ratios: list[float] | None = None
    owl_m: float | None = None
    owl_lambda: float | None = None
    block_sparsities: list[float] | None = None


@dataclass
class Size:
    parameters: int
    parameter_bytes: int


@dataclass
class CutLayer:
    """A width cut of one block: sizes before and after, and the re-fitted projection's relative error."""

    name: str
    reconstruction_error: float
    channels: list[int] | None = None
    heads: list[int] | None = None
    kv_heads: list[int] | None = None
    kept_heads: list[int] | None = None


@dataclass
class DepthCandidate:
    layers: list[int]
    perplexity: float | None = None
    block_influence: float | None = None


@dataclass
class StructuredRecord:
    """What a structured cut changed: parameters, the new sizes (width) or the removed layers (depth)."""

    before: Size
    after: Size
    parameters_removed: float
    sizes: dict[str, int] | None = None
    layers: list[CutLayer] = field(default_factory=list)
    removed_layers: list[int] | None = None
    kept_layers: list[int] | None = None
    search_windows: int | None = None
    candidates: list[DepthCandidate] = field(default_factory=list)


@dataclass
class EvaluationRecord:
    dataset: str
    seqlen: int
    windows: int | None = None


@dataclass
class LoraRecord:
    rank: int
    alpha: float
    parameters: int


@dataclass
class Milestone:
    step: int
    sparsity: float


@dataclass
class TrainingRecord:
    """LoRA recovery or training-time pruning: the data, the steps and the loss of each."""

    data: str
    steps: int
    batch_size: int
    seqlen: int
    lr: float
    seed: int
    losses: list[float]
    lora: LoraRecord | None = None
    milestones: list[Milestone] = field(default_factory=list)
    sparsity_before: float | None = None


@dataclass
class LlamaCppRecord:
    """llama.cpp's check of a GGUF file: greedy continuations of ``prompts`` prompts, ``new_tokens`` each, against
    the Hugging Face model's (``matches``: all equal); ``tokenizer_matches``: llama.cpp split the prompts' text
    into the same tokens."""

    version: str
    new_tokens: int
    prompts: int
    matches: bool
    tokenizer_matches: bool
    differing: list[str] = field(default_factory=list)


@dataclass
class GgufRecord:
    """A GGUF file written: ``tokenizer`` says whether the tokenizer and metadata came from the source GGUF."""

    path: str
    bytes: int
    outtype: str
    architecture: str
    tokenizer: str
    llama_cpp: LlamaCppRecord | None = None


@dataclass
class Report:
    """What ``secateurs.json`` holds. ``kind``: prune, finetune or train-prune. Sizes in MiB, times in seconds."""

    kind: str = "prune"
    recipe: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    dtype: str | None = None
    device: str | None = None
    calibration: list[int] | None = None  # token ids [windows, tokens]
    calibration_documents: list[int] | None = None  # the document each window came from (a document corpus)
    target_sparsity: float | None = None
    sparsity: float | None = None
    pruned_parameters: int | None = None
    prune_seconds: float | None = None
    walk: WalkRecord | None = None
    allocation: AllocationRecord | None = None
    distill: DistillRecord | None = None
    structured: StructuredRecord | None = None
    gguf: GgufRecord | None = None
    training: TrainingRecord | None = None
    layers: list[LayerRecord] = field(default_factory=list)
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    evaluation: EvaluationRecord | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    peak_rss_mib_after_prune: float | None = None
    peak_cuda_mib: float | None = None
    weight_file_bytes: int | None = None
    checkpoint_format: str | None = None
    offload: str | None = None
    ranks: int | None = None
    peak_rss_mib_per_rank: list[float] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return to_json_value(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: str | dict[str, Any]) -> Report:
        """A report from its JSON text or parsed dict (a newer schema version is refused)."""
        document = json.loads(data) if isinstance(data, str) else data
        version = document.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(f"report schema version {version!r} is not one this secateurs reads (<= {SCHEMA_VERSION})")
        return from_json_value(cls, document)

    @classmethod
    def read(cls, path: str | Path) -> Report:
        return cls.from_json(Path(path).read_text())


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``secateurs.json`` (what ``report_schema.json`` holds)."""
    schema = json_schema(Report)
    schema["title"] = f"secateurs report, schema version {SCHEMA_VERSION}"
    return schema


def write_schema(path: Path = SCHEMA_FILE) -> Path:
    """Regenerate the shipped schema file from the classes above (after changing them):
    ``python -c "from secateurs.report.schema import write_schema; write_schema()"``."""
    path.write_text(json.dumps(report_schema(), indent=2) + "\n")
    return path
