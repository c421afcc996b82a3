"""``secateurs prune``: the recipe from the flags (over a ``--recipe`` file), the job from the rest."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import RecipeError
from ..evaluate import Evaluation
from ..pipeline import PruneJob, run_prune
from .build import build_recipe, fields_of
from .output import emit, prune_document, prune_lines
from .parser import CliOptions, Flag, given


def evaluation(fields: dict) -> Evaluation | None:
    """The evaluation stage from its flags: on with ``--eval``, its other flags go with it."""
    settings = fields.pop("evaluation", None)
    if settings is None:
        return None
    if "dataset" not in settings:
        named = " and ".join("{evaluation." + key + "}" for key in settings)
        raise RecipeError(f"{named} go with {{evaluation.dataset}}: give it, or drop them")
    return Evaluation(**settings)


def run(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    values = given(args, rows)
    recipe = build_recipe(values, cli.recipe, cli.preset)
    fields = fields_of(values, "job")
    job = PruneJob(recipe=recipe, evaluation=evaluation(fields), **fields)
    report = run_prune(job)
    out = Path(job.out).expanduser()
    emit(cli.json, prune_lines(report, out), prune_document(report, out))
