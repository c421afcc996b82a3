"""``secateurs sweep``: a grid of methods, patterns and sparsities from one dense model, with a table and a plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data import Calibration
from ..evaluate import Evaluation
from ..sweep import SWEEP_JSON, SWEEP_MARKDOWN, SweepJob, run_sweep
from .build import fields_of
from .output import emit
from .parser import CliOptions, Flag, given


def run(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    fields = fields_of(given(args, rows), "job")
    evaluation = fields.pop("evaluation", {})
    calibration = fields.pop("calibration", {})
    job = SweepJob(evaluation=Evaluation(**{"dataset": "wikitext2", **evaluation}), **fields)
    if calibration:
        job.calibration = Calibration(**calibration)
    state = run_sweep(job)
    document = {
        "out": str(Path(job.out) / SWEEP_JSON),
        "dense_perplexity": state["dense"]["perplexity"],
        "points": [{k: p[k] for k in ("method", "pattern", "sparsity", "perplexity")} for p in state["points"]],
    }
    emit(cli.json, [(Path(job.out) / SWEEP_MARKDOWN).read_text().rstrip()], document)
