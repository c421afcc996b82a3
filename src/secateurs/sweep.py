"""Sweeps: one dense model pruned at every point of a grid (method x pattern x sparsity), the perplexity of
each point measured, and the results written as ``sweep.json``, a Markdown table ``sweep.md`` and a plot
``sweep.png`` of perplexity against sparsity per method.

The model, the calibration windows and the evaluation tokens are loaded once; each point prunes a deep copy
of the dense model. ``sweep.json`` is rewritten (atomically) after every finished point, so an interrupted
sweep resumes: a rerun with the same settings skips the points the file holds.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_module
from .data import Calibration
from .errors import OutputError, RecipeError
from .evaluate import Evaluation, perplexity
from .io import load, write_json_atomic, write_text_atomic
from .methods import method_class
from .methods.sparsegpt import BLOCKSIZE, DAMPENING
from .models import resolve_device, resolve_dtype
from .patterns import parse_pattern
from .pipeline import prune
from .pipeline.options import JobOptions
from .recipe import SparseRecipe
from .report import Report, machine, markdown_table, peak_rss_mib, versions
from .report.plots import new_figure, plots_available

SWEEP_JSON = "sweep.json"
SWEEP_MARKDOWN = "sweep.md"
SWEEP_PLOT = "sweep.png"
FORMAT = "secateurs-sweep/1"
UNSTRUCTURED = "unstructured"
# markers of the N:M points; unstructured points are joined by a line with round markers
NM_MARKERS = ("*", "D", "s", "^", "v", "P", "X")


@dataclass(frozen=True)
class SweepPoint:
    """One pruning of the grid: an N:M pattern fixes its own sparsity."""

    method: str
    pattern: str
    sparsity: float

    def recipe(self, job: SweepJob) -> SparseRecipe:
        """The point's recipe: the job's SparseGPT settings go to the methods that have them."""
        cls = method_class(self.method)
        names = {f.name for f in dataclasses.fields(cls)}
        settings = {k: v for k, v in (("blocksize", job.blocksize), ("dampening", job.dampening)) if k in names}
        sparsity = self.sparsity if self.pattern == UNSTRUCTURED else None
        return SparseRecipe(
            method=cls(**settings),
            sparsity=sparsity,
            pattern=self.pattern,
            ignore=job.ignore,
            true_sequential=job.true_sequential,
            calibration=job.calibration,
        )

    def key(self, fingerprint: str) -> str:
        """What identifies a finished point in ``sweep.json``: the point and the sweep's settings."""
        return f"{self.method}|{self.pattern}|{self.sparsity:g}|{fingerprint}"


def sweep_grid(methods: Sequence[str], sparsities: Sequence[float], patterns: Sequence[str]) -> list[SweepPoint]:
    """Every method at every sparsity for unstructured, and once per N:M pattern (which implies its sparsity)."""
    if not methods or not patterns:
        raise RecipeError("a sweep needs at least one method and one pattern: give --methods and --patterns")
    points: list[SweepPoint] = []
    for method in methods:
        for pattern in patterns:
            nm = parse_pattern(pattern)
            if nm is None and not sparsities:
                raise RecipeError("unstructured points need sparsities: give --sparsities, e.g. 0.3,0.5,0.7")
            levels = [nm.sparsity] if nm is not None else sparsities
            for sparsity in levels:
                point = SweepPoint(method, UNSTRUCTURED if nm is None else str(nm), round(float(sparsity), 6))
                if point not in points:
                    points.append(point)
    return points


def settings_fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _model_identity(source: str | Path) -> str:
    """A local model by its absolute path, so a rerun from another directory resumes; a hub id as given."""
    path = Path(str(source)).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


def _prepare_folder(out: str | Path) -> Path:
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file: choose a folder path for --out")
    if not out.parent.is_dir():
        raise OutputError(f"the folder {out.parent} does not exist: create it first, or choose another --out")
    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {out}: {error.strerror}: choose a writable place for --out") from error
    return out


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in keys if old.get(key) != new.get(key))


def load_state(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The sweep so far from ``out/sweep.json`` when its settings match; a fresh one otherwise (only with
    ``overwrite``: results from other settings are never mixed in or dropped silently)."""
    fresh = {"format": FORMAT, "settings": settings, "fingerprint": settings_fingerprint(settings)}
    fresh.update(dense=None, points=[])
    path = out / SWEEP_JSON
    if not path.exists() or overwrite:
        return fresh
    try:
        state = json.loads(path.read_text())
        old_settings = state["settings"]
        if not isinstance(state["points"], list):
            raise TypeError("'points' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise OutputError(
            f"{path} is not a readable sweep ({type(error).__name__}): pass --overwrite to start over, "
            "or choose another --out"
        ) from None
    if old_settings != settings:
        raise OutputError(
            f"{path} holds a sweep with other settings ({_differences(old_settings, settings)}): rerun with "
            "the same settings to resume it, choose another --out, or pass --overwrite to start over"
        )
    return state


def save_state(state: dict[str, Any], out: Path) -> None:
    """``sweep.json``, then the table and plot made from it; each file replaced atomically."""
    state.update(versions=versions(), machine=machine())
    write_json_atomic(out / SWEEP_JSON, state)
    write_text_atomic(out / SWEEP_MARKDOWN, sweep_markdown(state))
    if plots_available():
        plot_sweep(state, out / SWEEP_PLOT)


def _sorted_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    methods = list(dict.fromkeys(point["method"] for point in points))
    return sorted(
        points, key=lambda p: (methods.index(p["method"]), p["pattern"] != UNSTRUCTURED, p["pattern"], p["sparsity"])
    )


def sweep_markdown(state: dict[str, Any]) -> str:
    """The sweep as a Markdown table (with the plot), dense first, then by method, pattern and sparsity."""
    settings = state["settings"]
    dense = (state.get("dense") or {}).get("perplexity")
    rows: list[list[Any]] = [["dense", "–", 0.0, None, dense, 1.0 if dense else None, None]]
    for point in _sorted_points(state["points"]):
        ratio = point["perplexity"] / dense if dense else None
        rows.append(
            [
                point["method"],
                point["pattern"],
                point["sparsity"],
                point["achieved_sparsity"],
                point["perplexity"],
                ratio,
                point["prune_seconds"],
            ]
        )
    windows = settings["eval_windows"] or "all"
    lines = [
        f"# Sweep: {Path(settings['model']).name}",
        f"Calibration: {settings['calib']}, {settings['nsamples']} x {settings['seqlen']} tokens, seed "
        f"{settings['seed']}. Evaluation: {settings['eval']}, windows of {settings['eval_seqlen']} tokens "
        f"({windows}). dtype {settings['dtype']}.",
        f"![perplexity against sparsity]({SWEEP_PLOT})"
        if plots_available()
        else '(No plot: pip install "secateurs[plots]".)',
        markdown_table(
            ["method", "pattern", "sparsity", "achieved", "perplexity", "x dense", "prune s"],
            rows,
        ),
    ]
    return "\n\n".join(lines) + "\n"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def plot_sweep(state: dict[str, Any], path: Path) -> Path:
    sweep_figure(state).savefig(path)
    return path


def sweep_figure(state: dict[str, Any]) -> Any:
    """Perplexity against sparsity, one colour per method: unstructured points joined by a line, each N:M
    pattern its own marker; the dense model as a dashed line; log scale when the values span over 10x."""
    figure = new_figure(7, 4.5)
    axes = figure.add_subplot()
    points = [point for point in _sorted_points(state["points"]) if _finite(point["perplexity"])]
    methods = list(dict.fromkeys(point["method"] for point in points))
    nm_patterns = sorted({point["pattern"] for point in points if point["pattern"] != UNSTRUCTURED})
    for index, method in enumerate(methods):
        colour = f"C{index % 10}"
        line = [p for p in points if p["method"] == method and p["pattern"] == UNSTRUCTURED]
        if line:
            axes.plot([p["sparsity"] for p in line], [p["perplexity"] for p in line], "o-", color=colour, label=method)
        for pattern_index, pattern in enumerate(nm_patterns):
            nm = [p for p in points if p["method"] == method and p["pattern"] == pattern]
            if nm:
                axes.plot(
                    [p["sparsity"] for p in nm],
                    [p["perplexity"] for p in nm],
                    linestyle="none",
                    marker=NM_MARKERS[pattern_index % len(NM_MARKERS)],
                    markersize=10,
                    color=colour,
                    label=f"{method} {pattern}",
                )
    values = [p["perplexity"] for p in points]
    dense = (state.get("dense") or {}).get("perplexity")
    if _finite(dense):
        axes.axhline(dense, color="grey", linestyle="--", linewidth=1, label="dense")
        values.append(dense)
    if values and max(values) / min(values) > 10:
        axes.set_yscale("log")
    settings = state["settings"]
    axes.set_xlabel("sparsity (fraction of weights removed per layer)")
    axes.set_ylabel(f"perplexity ({Path(str(settings['eval'])).name})")
    axes.set_title(f"{Path(settings['model']).name}: perplexity against sparsity")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    axes.grid(True, which="both", alpha=0.3)
    return figure


def _point_record(point: SweepPoint, key: str, report: Report, value: float) -> dict[str, Any]:
    notes = sorted({layer.note for layer in report.layers if layer.note})
    return {
        "key": key,
        "method": point.method,
        "pattern": point.pattern,
        "sparsity": point.sparsity,
        "achieved_sparsity": report.sparsity,
        "perplexity": value,
        "prune_seconds": report.prune_seconds,
        "walk_mode": report.walk.mode if report.walk is not None else None,
        "device": report.device,
        # ru_maxrss only grows: this is the process's peak so far, not this point's own
        "process_peak_rss_mib": peak_rss_mib(),
        "layer_notes": notes,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@dataclass(kw_only=True)
class SweepJob(JobOptions):
    """Every method at every unstructured sparsity, and once per N:M pattern, from the dense ``model``; each point
    evaluated on ``evaluation``. The recipe settings ``ignore``, ``true_sequential``, and SparseGPT's
    ``blocksize`` and ``dampening`` apply to every point they fit."""

    model: str
    out: str | Path
    methods: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
    sparsities: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
    patterns: tuple[str, ...] = (UNSTRUCTURED, "2:4")
    evaluation: Evaluation = field(default_factory=lambda: Evaluation("wikitext2"))
    calibration: Calibration = field(default_factory=Calibration)
    ignore: tuple[str, ...] = ()
    true_sequential: bool | None = None
    blocksize: int = BLOCKSIZE
    dampening: float = DAMPENING
    batch_size: int | None = None
    overwrite: bool = False

    def settings(self) -> dict[str, Any]:
        """What decides every point's result: a rerun with the same settings resumes the sweep."""
        return {
            "model": _model_identity(self.model),
            "dtype": self.dtype,
            "calib": self.calibration.source,
            "nsamples": self.calibration.nsamples,
            "seqlen": self.calibration.seqlen,
            "seed": self.calibration.seed,
            "eval": self.evaluation.dataset,
            "eval_seqlen": self.evaluation.seqlen,
            "eval_windows": self.evaluation.windows,
            "ignore": list(self.ignore),
            "true_sequential": self.true_sequential,
            "blocksize": self.blocksize,
            "dampening": self.dampening,
            "batch_size": self.batch_size,
        }


def run_sweep(job: SweepJob) -> dict[str, Any]:
    """Run the sweep into the folder ``job.out`` (created if needed) and return its state (what ``sweep.json``
    holds): ``settings``, ``dense`` perplexity, and one entry per finished point."""
    points = sweep_grid(job.methods, job.sparsities, job.patterns)
    recipes = {point: point.recipe(job) for point in points}  # every recipe checked before any work
    resolve_dtype(job.dtype)
    device = resolve_device(job.device)
    folder = _prepare_folder(job.out)
    state = load_state(folder, job.settings(), job.overwrite)
    finished = {point["key"] for point in state["points"]}
    todo = [point for point in points if point.key(state["fingerprint"]) not in finished]
    if todo or state["dense"] is None:
        _run_points(job, state, folder, todo, recipes, device)
    save_state(state, folder)
    return state


def _run_points(
    job: SweepJob,
    state: dict[str, Any],
    folder: Path,
    todo: list[SweepPoint],
    recipes: dict[SweepPoint, SparseRecipe],
    device: torch.device,
) -> None:
    needs_calibration = any(recipes[point].statistics is not None for point in todo)
    corpus = data_module.load_corpus(job.calibration.source) if needs_calibration else None
    model, tokenizer = load(job.model, job.dtype, trust_pickle=job.trust_pickle)
    evaluation = job.evaluation
    eval_ids = data_module.evaluation_ids(evaluation.dataset, tokenizer, evaluation.seqlen)
    calibration = job.calibration.windows(corpus, tokenizer) if corpus is not None else None

    def measure(pruned: nn.Module) -> float:
        pruned.to(device)
        value = perplexity(pruned, eval_ids, evaluation.seqlen, evaluation.windows, 1, device, progress=job.progress)
        pruned.to("cpu")
        return value

    if state["dense"] is None:
        state["dense"] = {"perplexity": measure(model)}
        save_state(state, folder)
    for point in todo:
        pruned = copy.deepcopy(model)  # the dense weights stay untouched for the next point
        report = prune(
            pruned, recipes[point], calibration, device=device, batch_size=job.batch_size, progress=job.progress
        )
        record = _point_record(point, point.key(state["fingerprint"]), report, measure(pruned))
        del pruned
        state["points"].append(record)
        save_state(state, folder)
