"""The machinery behind the flag table (``flags``): argparse parsers built from its rows, defaults read from the
dataclasses the rows' fields belong to, the values a user gave turned into nested settings, and a library
error's field paths rendered as the flags that set them."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..allocation import ALLOCATIONS
from ..bench.settings import BenchJob, SpeedSettings
from ..data import Calibration
from ..errors import RecipeError
from ..evaluate import Evaluation
from ..methods import METHODS, UPDATES, DSnoT
from ..pipeline import EvalJob, PruneJob
from ..pipeline.export import ExportJob
from ..pipeline.pack import PackJob, UnpackJob
from ..recipe import SparseRecipe, StructuredRecipe
from ..recover import Lora, Training, TrainJob, TrainPruning
from ..structured import STRUCTURED_METHODS
from ..sweep import SweepJob
from ..tuning import Distill, Ebft


@dataclass(frozen=True)
class CliOptions:
    """What only the command line has: a recipe file to start from, threads, processes, output style."""

    recipe: str | None = None
    preset: str | None = None
    threads: int | None = None
    workers: int = 1
    json: bool = False
    quiet: bool = False
    out: str | None = None


@dataclass(frozen=True)
class Flag:
    """One flag: ``name`` (``--sparsity``, or a positional ``model``) sets the field at ``path`` (or the first of
    several paths that applies). ``kind``: an argparse type, or ``switch`` (sets True), ``flip`` (sets False),
    ``bool`` (``--x``/``--no-x``), ``list`` (one or more values, repeatable), ``commas``/``floats`` (a comma
    list), ``limit``, ``many`` (a positional of one or more). ``convert`` turns the value into several ``fields``
    of the path; ``off``: the value that switches the field's stage off; ``shown``: the default as help says it
    (else the field's own)."""

    name: str
    path: str | tuple[str, ...]
    help: str
    kind: Any = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    convert: Callable[[Any], dict[str, Any]] | None = None
    fields: tuple[str, ...] = ()
    off: Any = None
    shown: str | None = None
    required: bool = False
    group: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return self.path if isinstance(self.path, tuple) else (self.path,)

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


def group(title: str, rows: Iterable[Flag]) -> tuple[Flag, ...]:
    return tuple(dataclasses.replace(row, group=title) for row in rows)


# The classes a path's parts may name: a root (before the first dot), then the stage fields below it.
ROOTS: dict[str, dict[str, list[type]]] = {
    "prune": {"recipe": [SparseRecipe, StructuredRecipe], "job": [PruneJob]},
    "eval": {"job": [EvalJob]},
    "sweep": {"job": [SweepJob]},
    "finetune": {"job": [TrainJob]},
    "train-prune": {"job": [TrainJob]},
    "pack": {"job": [PackJob]},
    "unpack": {"job": [UnpackJob]},
    "export": {"job": [ExportJob]},
    "bench": {"job": [BenchJob]},
}


def stage_classes(stage: str) -> list[type]:
    """The classes a stage field may hold, by the field's name."""
    return {
        "method": [*METHODS.values(), *STRUCTURED_METHODS.values()],
        "update": list(UPDATES.values()),
        "allocation": list(ALLOCATIONS.values()),
        "refine": [DSnoT],
        "ebft": [Ebft],
        "distill": [Distill],
        "calibration": [Calibration],
        "evaluation": [Evaluation],
        "training": [Training],
        "lora": [Lora],
        "pruning": [TrainPruning],
        "settings": [SpeedSettings],
    }.get(stage, [])


def _default(classes: list[type], name: str) -> tuple[bool, Any]:
    for cls in classes:
        for field in dataclasses.fields(cls):
            if field.name == name:
                if field.default is not dataclasses.MISSING:
                    return True, field.default
                if field.default_factory is not dataclasses.MISSING:
                    return True, field.default_factory()
    return False, None


def default_text(row: Flag, command: str) -> str | None:
    """The default help shows: the row's ``shown``, else the field's default in its dataclass."""
    if row.shown is not None:
        return row.shown
    root, *parts = row.paths[0].split(".")
    classes = [CliOptions] if root == "cli" else ROOTS[command][root]
    for part in parts[:-1]:
        classes = stage_classes(part)
    found, value = _default(classes, parts[-1])
    if dataclasses.is_dataclass(value):  # a stage: its name
        value = getattr(value, "name", None)
    if not found or value is None or isinstance(value, bool):
        return None
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or None
    return f"{value:g}" if isinstance(value, float) else str(value)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _comma_floats(text: str) -> list[float]:
    try:
        return [float(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers, e.g. 0.3,0.5,0.7") from None


def _limit(text: str) -> int | float:
    """lm-eval's limit: a count of documents, or a fraction of them when below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value >= 1 and value.is_integer() else value


_KINDS: dict[str, dict[str, Any]] = {
    "switch": {"action": "store_const", "const": True},
    "flip": {"action": "store_const", "const": False},
    "bool": {"action": argparse.BooleanOptionalAction},
    "list": {"nargs": "+", "action": "extend"},
    "commas": {"type": _comma_list},
    "floats": {"type": _comma_floats},
    "limit": {"type": _limit},
    "many": {"nargs": "+"},
}


def add_flags(parser: argparse.ArgumentParser, rows: Sequence[Flag], command: str) -> None:
    groups: dict[str | None, Any] = {None: parser}
    for row in rows:
        target = groups.get(row.group) or groups.setdefault(row.group, parser.add_argument_group(row.group))
        options = dict(_KINDS[row.kind]) if isinstance(row.kind, str) else {"type": row.kind}
        if row.kind is str:
            options.pop("type")
        shown = default_text(row, command)
        options["help"] = row.help + (f" (default: {shown})" if shown else "")
        if row.choices:
            options["choices"] = row.choices
        if row.metavar:
            options["metavar"] = row.metavar
        if row.name.startswith("--"):
            options.update(dest=row.dest, default=None)
            if row.required:
                options["required"] = True
        target.add_argument(row.name, **options)


def given(args: argparse.Namespace, rows: Sequence[Flag]) -> list[tuple[Flag, Any]]:
    """The rows the user gave a value to, with the value."""
    return [(row, getattr(args, row.dest)) for row in rows if getattr(args, row.dest, None) is not None]


def flag_names(rows: Sequence[Flag]) -> Callable[[str], str]:
    """A library error's field path (``allocation.lam``, ``workers``) -> the flag that sets it."""
    names: dict[str, str] = {}
    for row in rows:
        for path in row.paths:
            relative = path.split(".", 1)[1]
            paths = [f"{relative}.{field}" for field in row.fields] if row.fields else [relative]
            for key in paths:
                names.setdefault(key, row.name)
    return lambda path: names.get(path, path)


def render(error: Exception, rows: Sequence[Flag]) -> str:
    return error.render(flag_names(rows)) if isinstance(error, RecipeError) else str(error)
