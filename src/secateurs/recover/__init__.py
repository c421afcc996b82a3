"""Recovery and training-time pruning: LoRA fine-tuning that keeps a pruned model's zeros, gradual magnitude,
movement and iterative pruning. Each command loads a model, trains on windows of a corpus (checkpoints every
K steps beside the output, ``--resume``), measures perplexity before and after, and writes the model with a
report and the loss curve."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data as data_module
from ..checks import check_choice, check_fraction, check_positive, check_whole
from ..errors import RecipeError, ResumeError
from ..evaluate import Evaluation, perplexity
from ..extras import require
from ..io import check_output_folder, load, save
from ..models import check_token_ids, find_blocks, find_targets, resolve_device
from ..models.discover import Target
from ..pipeline.options import JobOptions
from ..report import (
    EvaluationRecord,
    LayerRecord,
    LoraRecord,
    Milestone,
    Report,
    TrainingRecord,
    machine,
    peak_rss_mib,
    versions,
)
from .rules import GradualMagnitude, HoldMasks, Iterative, Movement
from .schedule import default_schedule
from .train import Checkpoints, NoRule, TrainSettings, train

SCHEDULES = ("gradual", "iterative")
GRADUAL_METHODS = ("magnitude", "movement")
ONE_SHOT_METHODS = ("magnitude", "wanda", "ria", "sparsegpt")


@dataclass(frozen=True)
class Training:
    """``steps`` optimizer steps of ``batch_size`` windows of ``seqlen`` tokens from ``data``, at peak learning
    rate ``lr`` (warm-up, cosine decay), a resumable checkpoint every ``checkpoint_every`` steps."""

    data: str = "c4"
    steps: int = 300
    batch_size: int = 4
    seqlen: int = 256
    lr: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            check_whole(getattr(self, name), name, 1, "4")
        check_whole(self.seqlen, "seqlen", 2, "256")
        check_positive(self.lr, "lr", "1e-4")


@dataclass(frozen=True)
class Lora:
    """LoRA adapters of ``rank`` on every pruned Linear, scaled by ``alpha`` (default twice the rank)."""

    rank: int = 8
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_whole(self.rank, "rank", 1, "8")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha", "16")


@dataclass(frozen=True)
class TrainPruning:
    """Pruning while training: ``gradual`` (``method`` magnitude or movement on the cubic schedule, masks every
    ``prune_every`` steps) or ``iterative`` (``rounds`` one-shot prunings by ``method``), to ``final_sparsity``."""

    schedule: str = "gradual"
    method: str = "magnitude"
    final_sparsity: float = 0.5
    rounds: int = 3
    prune_every: int | None = None

    def __post_init__(self) -> None:
        check_choice(self.schedule, "schedule", SCHEDULES)
        allowed = GRADUAL_METHODS if self.schedule == "gradual" else ONE_SHOT_METHODS
        if self.method not in allowed:
            raise RecipeError(
                f"{{method}} {self.method!r} does not go with {{schedule}} {self.schedule}: choose {', '.join(allowed)}"
            )
        check_fraction(self.final_sparsity, "final_sparsity", "0.5")
        if self.final_sparsity == 0:
            raise RecipeError("{final_sparsity} 0 prunes nothing: give e.g. 0.5")
        check_whole(self.rounds, "rounds", 1, "3")
        if self.prune_every is not None:
            check_whole(self.prune_every, "prune_every", 1, "10")


@dataclass(kw_only=True)
class TrainJob(JobOptions):
    """LoRA recovery of a pruned ``model`` (``lora``) or pruning while training (``pruning``): one of the two."""

    model: str
    out: str | Path
    training: Training = field(default_factory=Training)
    lora: Lora | None = None
    pruning: TrainPruning | None = None
    evaluation: Evaluation | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.lora is None) == (self.pruning is None):
            raise RecipeError("a training job is LoRA recovery ({lora}) or pruning while training ({pruning}): one")

    @property
    def kind(self) -> str:
        return "finetune" if self.lora is not None else "train-prune"


def _targets(model: nn.Module, two_dimensional_only: bool = False) -> list[Target]:
    name, blocks = find_blocks(model)
    targets = [t for i, block in enumerate(blocks) for t in find_targets(block, f"{name}.{i}")]
    return [t for t in targets if t.expert is None] if two_dimensional_only else targets


def training_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.training"


def add_lora(model: nn.Module, targets: list[Target], rank: int, alpha: float | None) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft) on every pruned Linear of the blocks."""
    peft = require("peft")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model  # noqa: N806 (peft's names)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=0.0,
        target_modules=sorted({t.name for t in targets}),
        fan_in_fan_out=any(t.transposed for t in targets),  # GPT-2's Conv1D stores [in, out]
    )
    return get_peft_model(model, config)


def merge_lora(peft_model: nn.Module, masks: HoldMasks) -> nn.Module:
    """W + s B A, then the pruning mask: every pruned weight exactly zero, N:M groups intact."""
    model = peft_model.merge_and_unload()
    masks.targets = _targets(model, two_dimensional_only=True)
    masks.apply()
    return model


def _windows(source: str, tokenizer: Any, count: int, seqlen: int, seed: int) -> torch.Tensor:
    return data_module.calibration_windows(data_module.load_corpus(source), tokenizer, count, seqlen, seed)


def _evaluate(model: nn.Module, ids: torch.Tensor | None, job: TrainJob, device: torch.device) -> float | None:
    if ids is None or job.evaluation is None:
        return None
    model.to(device)
    return perplexity(model, ids, job.evaluation.seqlen, job.evaluation.windows, 1, device, progress=False)


def _check(job: TrainJob) -> tuple[Path, torch.device, Path]:
    out = check_output_folder(job.out, job.overwrite, source=job.model)
    device = resolve_device(job.device)
    folder = training_folder(out)
    if job.resume and not (folder / "train-state.json").is_file():
        raise ResumeError(f"nothing to resume for {out} (no {folder.name}): run without --resume")
    return out, device, folder


def _load(job: TrainJob) -> tuple[nn.Module, Any, torch.Tensor, torch.Tensor | None]:
    """The model, its tokenizer, the training windows and the evaluation tokens, checked before any training."""
    model, tokenizer = load(job.model, job.dtype, trust_pickle=job.trust_pickle)
    training = job.training
    windows = _windows(training.data, tokenizer, training.steps * training.batch_size, training.seqlen, training.seed)
    evaluation = job.evaluation
    eval_ids = data_module.evaluation_ids(evaluation.dataset, tokenizer, evaluation.seqlen) if evaluation else None
    for ids in (windows, eval_ids):
        if ids is not None:
            check_token_ids(model, ids)  # before any training time is spent
    return model, tokenizer, windows, eval_ids


def _finetune(
    job: TrainJob, model: nn.Module, windows: torch.Tensor, settings: TrainSettings, folder: Path, device: torch.device
) -> tuple[nn.Module, HoldMasks, TrainingRecord]:
    """LoRA on the pruned Linears, merged back with the masks re-applied: every zero stays zero."""
    targets = _targets(model, two_dimensional_only=True)
    masks = HoldMasks(targets)
    sparsity_before = masks.sparsity()
    peft_model = add_lora(model, targets, job.lora.rank, job.lora.alpha)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    losses = train(
        peft_model, trainable, windows, settings, NoRule(), Checkpoints(folder, job.resume), device, job.progress
    )
    model = merge_lora(peft_model, masks)
    lora = LoraRecord(job.lora.rank, job.lora.alpha or 2 * job.lora.rank, sum(p.numel() for p in trainable.values()))
    return model, masks, _training_record(job, losses, lora=lora, sparsity_before=sparsity_before)


def _train_prune(
    job: TrainJob, model: nn.Module, windows: torch.Tensor, settings: TrainSettings, folder: Path, device: torch.device
) -> tuple[HoldMasks, TrainingRecord]:
    rule = _pruning_rule(model, job.pruning, job.training.steps, windows, device)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    trainable = dict(model.named_parameters())
    losses = train(model, trainable, windows, settings, rule, Checkpoints(folder, job.resume), device, job.progress)
    if hasattr(rule, "final_update"):
        rule.final_update(job.training.steps)
    rule.apply()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    milestones = [Milestone(int(m["step"]), float(m["sparsity"])) for m in rule.history]
    return rule, _training_record(job, losses, milestones=milestones)


def _training_record(job: TrainJob, losses: list[float], **extra: Any) -> TrainingRecord:
    t = job.training
    return TrainingRecord(t.data, t.steps, t.batch_size, t.seqlen, t.lr, t.seed, losses, **extra)


def run_training(job: TrainJob) -> Report:
    """Run ``job`` (LoRA recovery or training-time pruning) and save the model with its report to ``job.out``."""
    out, device, folder = _check(job)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    model, tokenizer, windows, eval_ids = _load(job)
    seconds["load"] = time.perf_counter() - start
    start = time.perf_counter()
    before = _evaluate(model, eval_ids, job, device)
    seconds["eval_before"] = time.perf_counter() - start
    model.to(device)
    t = job.training
    settings = TrainSettings(steps=t.steps, batch_size=t.batch_size, lr=t.lr, checkpoint_every=t.checkpoint_every)
    start = time.perf_counter()
    if job.lora is not None:
        model, rule, record = _finetune(job, model, windows, settings, folder, device)
    else:
        rule, record = _train_prune(job, model, windows, settings, folder, device)
    seconds["train"] = time.perf_counter() - start
    start = time.perf_counter()
    after = _evaluate(model, eval_ids, job, device)
    seconds["eval_after"] = time.perf_counter() - start
    model.to("cpu")
    report = Report(
        kind=job.kind,
        model=str(job.model),
        recipe=job_settings(job),
        dtype=job.dtype,
        device=str(device),
        sparsity=rule.sparsity(),
        training=record,
        perplexity_before=before,
        perplexity_after=after,
        evaluation=_evaluation_record(job),
        seconds={k: round(v, 3) for k, v in seconds.items()},
        peak_rss_mib=peak_rss_mib(),
        versions=versions(),
        machine=machine(),
        layers=[_layer_record(target) for target in _targets(model)],
    )
    save(model, tokenizer, out, report, overwrite=job.overwrite)
    shutil.rmtree(folder, ignore_errors=True)
    return report


def job_settings(job: TrainJob) -> dict[str, Any]:
    """What the report's ``recipe`` holds for a training job: its pruning (or LoRA) and training settings."""
    from dataclasses import asdict

    stage = {"lora": asdict(job.lora)} if job.lora is not None else {"pruning": asdict(job.pruning)}
    return {**stage, "training": asdict(job.training)}


def _evaluation_record(job: TrainJob) -> EvaluationRecord | None:
    evaluation = job.evaluation
    return EvaluationRecord(evaluation.dataset, evaluation.seqlen, evaluation.windows) if evaluation else None


def _layer_record(target: Target) -> LayerRecord:
    weight = target.weight()
    return LayerRecord(target.name, list(weight.shape), float((weight == 0).float().mean()))


def _pruning_rule(
    model: nn.Module, pruning: TrainPruning, steps: int, windows: torch.Tensor, device: torch.device
) -> HoldMasks:
    targets = _targets(model)
    if pruning.schedule == "gradual":
        cubic = default_schedule(pruning.final_sparsity, steps, pruning.prune_every)
        return Movement(targets, cubic) if pruning.method == "movement" else GradualMagnitude(targets, cubic)
    from ..pipeline import prune

    calibration = windows[: min(len(windows), 64)]

    def one_shot(sparsity: float) -> None:
        model.eval()
        prune(model, {"method": pruning.method, "sparsity": sparsity}, calibration, device=device, progress=False)
        model.to(device).train()

    return Iterative(targets, pruning.rounds, steps, pruning.final_sparsity, one_shot)
