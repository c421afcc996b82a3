"""``secateurs finetune`` (LoRA recovery) and ``secateurs train-prune`` (pruning while training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recover import Lora, Training, TrainJob, TrainPruning, run_training
from .build import fields_of
from .output import emit
from .parser import CliOptions, Flag, given
from .prune import evaluation


def run(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    fields = fields_of(given(args, rows), "job")
    fields["training"] = Training(**fields.get("training", {}))
    if args.command == "finetune":
        fields["lora"] = Lora(**fields.get("lora", {}))
    else:
        fields["pruning"] = TrainPruning(**fields.get("pruning", {}))
    report = run_training(TrainJob(evaluation=evaluation(fields), **fields))
    out = Path(fields["out"]).expanduser()
    losses = report.training.losses
    lines = [
        f"{args.command}: {len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; sparsity {report.sparsity:.4f}"
    ]
    if report.perplexity_after is not None:
        lines.append(f"  perplexity    {report.perplexity_before:.2f} -> {report.perplexity_after:.2f}")
    lines += [f"  model         {out}", f"  report        {out / 'report.md'}"]
    summary = {
        "sparsity": report.sparsity,
        "perplexity_before": report.perplexity_before,
        "perplexity_after": report.perplexity_after,
        "peak_rss_mib": report.peak_rss_mib,
    }
    document = {"out": str(out), "final_loss": losses[-1], **{k: v for k, v in summary.items() if v is not None}}
    emit(cli.json, lines, document)
