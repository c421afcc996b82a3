"""``secateurs bench``: protocol S, inference speed and memory as ratios to the first model."""

from __future__ import annotations

import argparse
import dataclasses

from ..bench.settings import BenchJob, SpeedSettings
from .build import fields_of
from .output import emit
from .parser import CliOptions, Flag, given


def run(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    from ..bench.speed import markdown, run_speed  # the harness: imported only by this command

    fields = fields_of(given(args, rows), "job")
    settings = dataclasses.replace(SpeedSettings(), **fields.pop("settings", {}))
    job = BenchJob(settings=settings, **fields)
    result = run_speed(list(job.models), job.device, job.dtype, job.settings, out=job.out)
    emit(cli.json, [markdown(result).rstrip()], {"out": str(job.out), "models": len(result["models"])})
