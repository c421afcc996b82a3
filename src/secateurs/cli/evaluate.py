"""``secateurs eval``: perplexity and zero-shot tasks of a saved model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OutputError
from ..io import write_json_atomic
from ..pipeline import EvalJob, run_evaluation
from ..report.markdown import evaluation_table
from .build import fields_of
from .output import emit
from .parser import CliOptions, Flag, given


def check_results_file(path: str) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder: give a file name such as results.json")
    if not out.parent.is_dir():
        raise OutputError(f"the folder {out.parent} does not exist: create it first, or choose another --out")
    return out


def run(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    fields = fields_of(given(args, rows), "job")
    if "ppl" not in fields:
        fields["ppl"] = () if fields.get("tasks") else ("wikitext2",)
    out = check_results_file(cli.out) if cli.out else None
    result = run_evaluation(EvalJob(**fields))
    document = {"model": str(result.model)}
    if len(result.perplexities) == 1:  # the shape `secateurs eval --ppl SET` has always printed
        ((name, value),) = result.perplexities.items()
        document.update(dataset=name, seqlen=result.seqlen, windows=result.windows, perplexity=round(value, 4))
    document.update({k: v for k, v in result.to_dict().items() if k != "model" and v != {}})  # no empty sections
    if out is not None:
        write_json_atomic(out, document)
    emit(cli.json, [evaluation_table(result.perplexities, result.tasks)], document)
