"""Evaluating a model: ``evaluate`` an in-memory one, or ``run_evaluation`` a model from its source, on
perplexity sets and zero-shot tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data
from ..checks import check_whole
from ..evaluate import perplexity
from ..io import load
from ..models import resolve_device
from ..models.load import check_causal_lm
from ..report import versions
from ..report.serialize import to_json_value
from .options import JobOptions


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    dataset: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on ``dataset`` (wikitext2, c4, ptb, builtin or a text file) in windows of ``seqlen``
    tokens, the first ``max_windows`` of them; moves the model to ``device``."""
    check_causal_lm(model)
    device = resolve_device(device)
    ids = data.evaluation_ids(dataset, tokenizer, seqlen)
    model.to(device)
    return perplexity(model, ids, seqlen, max_windows, batch_size, device, progress=progress)


@dataclass(kw_only=True)
class EvalJob(JobOptions):
    """Perplexity on each of ``ppl`` and zero-shot accuracy on each of ``tasks`` (lm-eval names or task YAML
    files; ``limit``: the first N documents of each, a fraction when below 1) of the model at ``model``."""

    model: str | Path
    ppl: tuple[str, ...] = ("wikitext2",)
    tasks: tuple[str, ...] = ()
    seqlen: int = 2048
    max_windows: int | None = None
    limit: float | None = None
    batch_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_whole(self.seqlen, "seqlen", 2, "2048")
        check_whole(self.batch_size, "batch_size", 1, "1")
        if self.max_windows is not None:
            check_whole(self.max_windows, "max_windows", 1, "32")


@dataclass
class EvalResult:
    """Perplexity per set and accuracies per task (``acc``, ``acc_norm`` and their standard errors, fractions)."""

    model: str
    dtype: str
    perplexities: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    seqlen: int | None = None
    windows: int | None = None
    limit: float | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_json_value(self)


def run_evaluation(job: EvalJob) -> EvalResult:
    """Load ``job.model`` and measure it. Every task and data set is read before the first measurement, so a
    missing one fails in seconds."""
    from ..evaluate.zero_shot import check_options, load_tasks, zero_shot

    device = resolve_device(job.device)
    check_options(job.limit, job.batch_size)
    loaded_tasks = load_tasks(job.tasks) if job.tasks else None
    model, tokenizer = load(job.model, job.dtype, trust_pickle=job.trust_pickle)
    ids = {name: data.evaluation_ids(name, tokenizer, job.seqlen) for name in job.ppl}
    result = EvalResult(str(job.model), job.dtype, limit=job.limit, versions=versions())
    if ids:
        model.to(device)
        for name, set_ids in ids.items():
            result.perplexities[name] = perplexity(
                model, set_ids, job.seqlen, job.max_windows, job.batch_size, device, progress=job.progress
            )
        result.seqlen, result.windows = job.seqlen, job.max_windows
    if loaded_tasks is not None:
        result.tasks = zero_shot(
            model,
            tokenizer,
            loaded_tasks,
            limit=job.limit,
            batch_size=job.batch_size,
            device=device,
            progress=job.progress,
        )
    return result
