"""The human-readable side of a report: ``report.md`` with its plots, rendered from the report dict that
``secateurs.json`` holds, and Markdown tables shared by ``eval`` and ``sweep``.

Plots use matplotlib's object API on a bare ``Figure`` (Agg canvas): no display, no global pyplot state.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPORT_MARKDOWN = "report.md"
SPARSITY_PLOT = "layer_sparsity.png"
RECONSTRUCTION_PLOT = "reconstruction_error.png"
_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats get 4 significant digits."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(format_value(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def format_value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return "–"
        # a weight's shape reads 2048 x 512; other lists (ignore globs, notes) with commas
        return (" x " if all(isinstance(v, int) for v in value) else ", ").join(str(v) for v in value)
    return str(value).replace("|", "\\|")


def evaluation_table(result: dict[str, Any]) -> str:
    """``secateurs eval``'s results as one table: perplexity per set, then accuracy per task."""
    rows: list[list[Any]] = [
        [name, "perplexity", value, None] for name, value in result.get("perplexities", {}).items()
    ]
    for task, metrics in result.get("tasks", {}).items():
        rows += [[task, m, metrics[m], metrics.get(f"{m}_stderr")] for m in ("acc", "acc_norm") if m in metrics]
    return markdown_table(["evaluation", "metric", "value", "stderr"], rows)


def new_figure(width: float = 8, height: float = 4) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def layer_kind(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``: the Linear's role, the same in every block."""
    return name.rsplit(".", 1)[-1]


def block_index(name: str, default: int) -> int:
    """The decoder block a layer belongs to (the first number in its dotted name)."""
    found = _BLOCK_INDEX.search(f"{name}.")
    return int(found.group(1)) if found else default


def plot_layer_sparsity(layers: list[dict[str, Any]], path: Path, target: float | None = None) -> Path:
    """Bars of the achieved sparsity of every pruned layer in walk order, coloured by the Linear's role."""
    figure = new_figure(max(6.0, min(16.0, len(layers) * 0.08)), 4)
    axes = figure.add_subplot()
    kinds = list(dict.fromkeys(layer_kind(layer["name"]) for layer in layers))
    colours = {kind: f"C{i % 10}" for i, kind in enumerate(kinds)}
    for kind in kinds:
        positions = [i for i, layer in enumerate(layers) if layer_kind(layer["name"]) == kind]
        axes.bar(positions, [layers[i]["sparsity"] for i in positions], width=1.0, color=colours[kind], label=kind)
    if target is not None:
        axes.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    axes.set_xlabel("layer (walk order: block by block)")
    axes.set_ylabel("sparsity (fraction of zero weights)")
    axes.set_ylim(0, 1)
    axes.set_title("Per-layer sparsity")
    figure.legend(fontsize="small", loc="outside right upper")
    figure.savefig(path)
    return path


def plot_reconstruction_error(layers: list[dict[str, Any]], path: Path) -> Path:
    """Relative reconstruction error ||WX - W'X|| / ||WX|| against block depth, one line per Linear role."""
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    measured = [(i, layer) for i, layer in enumerate(layers) if layer.get("reconstruction_error") is not None]
    for kind in dict.fromkeys(layer_kind(layer["name"]) for _, layer in measured):
        points = sorted(
            (block_index(layer["name"], i), layer["reconstruction_error"])
            for i, layer in measured
            if layer_kind(layer["name"]) == kind
        )
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=kind)
    values = [layer["reconstruction_error"] for _, layer in measured]
    if values and min(values) > 0 and max(values) / min(values) > 10:
        axes.set_yscale("log")
    axes.set_xlabel("decoder block")
    axes.set_ylabel("relative error ||WX - W'X|| / ||WX||")
    axes.set_title("Reconstruction error on the calibration data")
    figure.legend(fontsize="small", loc="outside right upper")
    figure.savefig(path)
    return path


def _summary(report: dict[str, Any]) -> list[str]:
    recipe = report.get("recipe") or {}
    rows = [
        ("model", report.get("model")),
        ("method", recipe.get("method")),
        ("pattern", recipe.get("pattern")),
        ("target sparsity", recipe.get("sparsity")),
        ("achieved sparsity", report.get("sparsity")),
        ("pruned parameters", report.get("pruned_parameters")),
        ("parameters before", (report.get("before") or {}).get("parameters")),
        ("parameters after", (report.get("after") or {}).get("parameters")),
        ("fraction of parameters removed", report.get("parameters_removed")),
        ("removed layers", _layer_list(report.get("removed_layers"))),
        ("weight file bytes", report.get("weight_file_bytes")),
        ("dtype", report.get("dtype")),
        ("device", report.get("device")),
    ]
    return [markdown_table(["quantity", "value"], [row for row in rows if row[1] is not None])]


def _quality(report: dict[str, Any]) -> list[str]:
    if "perplexity_before" not in report and "perplexity_after" not in report:
        return []
    evaluation = report.get("evaluation") or {}
    rows = [
        ("perplexity before", report.get("perplexity_before")),
        ("perplexity after", report.get("perplexity_after")),
        ("data set", evaluation.get("dataset")),
        ("window (tokens)", evaluation.get("seqlen")),
        ("windows", evaluation.get("windows") or "all"),
    ]
    return ["## Quality", markdown_table(["quantity", "value"], rows)]


def _recipe_and_calibration(report: dict[str, Any]) -> list[str]:
    lines = []
    if report.get("recipe"):
        lines += ["## Recipe", markdown_table(["setting", "value"], list(report["recipe"].items()))]
    calibration = report.get("calibration")
    if isinstance(calibration, dict):
        lines += ["## Calibration", markdown_table(["setting", "value"], list(calibration.items()))]
    return lines


def _cost(report: dict[str, Any]) -> list[str]:
    lines = ["## Time and memory"]
    seconds = report.get("seconds") or ({"prune": report["prune_seconds"]} if "prune_seconds" in report else {})
    if seconds:
        lines.append(markdown_table(["stage", "seconds"], list(seconds.items())))
    memory = [
        ("peak resident memory (MiB)", report.get("peak_rss_mib")),
        ("peak resident memory after pruning (MiB)", report.get("peak_rss_mib_after_prune")),
        ("peak CUDA memory (MiB)", report.get("peak_cuda_mib")),
    ]
    memory = [row for row in memory if row[1] is not None]
    if memory:
        lines.append(markdown_table(["quantity", "value"], memory))
    walk = report.get("walk") or {}
    if walk:
        walk_rows = [(key, walk.get(key)) for key in ("mode", "batch_size", "passes_per_block")]
        walk_rows += [(f"{stage} (s)", value) for stage, value in (walk.get("seconds") or {}).items()]
        lines += ["Block-by-block walk:", markdown_table(["quantity", "value"], walk_rows)]
        lines += [f"- {note}" for note in walk.get("notes") or []]
    distilled = report.get("distill") or {}
    if distilled:
        losses = ", ".join(f"{loss:g}" for loss in distilled["epoch_losses"])
        lines.append(
            f"Distillation: {distilled['epochs']} epoch(s) at Adam lr {distilled['lr']:g}, {distilled['seconds']} s; "
            f"mean KL to the dense model per epoch (nats per token): {losses}."
        )
    return lines if len(lines) > 1 else []


def _structured_layers(layers: list[dict[str, Any]], folder: Path) -> tuple[list[str], list[Path]]:
    """Width pruning: what each layer kept, and how well the re-fitted projection reproduces its output."""
    plots = [plot_reconstruction_error(layers, folder / RECONSTRUCTION_PLOT)]
    sizes = [key for key in ("channels", "heads", "kv_heads") if key in layers[0]]
    header = ["#", "layer", *[f"{key} (before, after)" for key in sizes], "reconstruction error"]
    rows = [
        [i, layer["name"], *[layer[key] for key in sizes], layer.get("reconstruction_error")]
        for i, layer in enumerate(layers)
    ]
    lines = [
        "## Reconstruction error",
        "Relative error ||WX - W'X|| / ||WX|| of each re-fitted projection on the calibration data.",
        f"![reconstruction error across depth]({RECONSTRUCTION_PLOT})",
        "## Layers",
        markdown_table(header, rows),
    ]
    return lines, plots


def _layer_list(layers: list[int] | None) -> str | None:
    """Layer indices with commas: a list of whole numbers would otherwise read as a shape (16 x 17 x 18)."""
    return None if layers is None else ", ".join(str(index) for index in layers) or "none"


def _depth_candidates(report: dict[str, Any]) -> list[str]:
    candidates = report.get("candidates") or []
    if not candidates:
        return []
    score = next(key for key in candidates[0] if key != "layers")
    rows = [[_layer_list(candidate["layers"]), candidate[score]] for candidate in candidates]
    windows = report.get("search_windows")
    scored = f"{score} on {windows} calibration windows" if windows else score
    return [f"## Depth candidates ({scored})", markdown_table(["layers removed", score], rows)]


def _layers(report: dict[str, Any], folder: Path) -> tuple[list[str], list[Path]]:
    layers = report.get("layers") or []
    if not layers:
        return [], []
    if "sparsity" not in layers[0]:
        return _structured_layers(layers, folder)
    target = (report.get("recipe") or {}).get("sparsity")
    plots = [plot_layer_sparsity(layers, folder / SPARSITY_PLOT, target)]
    lines = ["## Per-layer sparsity", f"![per-layer sparsity]({SPARSITY_PLOT})"]
    with_error = any(layer.get("reconstruction_error") is not None for layer in layers)
    if with_error:
        plots.append(plot_reconstruction_error(layers, folder / RECONSTRUCTION_PLOT))
        lines += [
            "## Reconstruction error",
            "Relative error ||WX - W'X|| / ||WX|| of each pruned layer on the calibration data.",
            f"![reconstruction error across depth]({RECONSTRUCTION_PLOT})",
        ]
    header = ["#", "layer", "shape", "sparsity"] + (["reconstruction error"] if with_error else []) + ["note"]
    rows = [
        [i, layer["name"], layer.get("shape"), layer.get("sparsity")]
        + ([layer.get("reconstruction_error")] if with_error else [])
        + [layer.get("note", "")]
        for i, layer in enumerate(layers)
    ]
    lines += ["## Layers", markdown_table(header, rows)]
    return lines, plots


def _environment(report: dict[str, Any]) -> list[str]:
    rows = [(f"{name} version", version) for name, version in (report.get("versions") or {}).items()]
    rows += [(name, value) for name, value in (report.get("machine") or {}).items()]
    return ["## Environment", markdown_table(["quantity", "value"], rows)] if rows else []


def write_markdown_report(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``report.md`` and the plots it shows into ``folder``; returns the files written."""
    folder = Path(folder)
    layer_lines, plots = _layers(report, folder)
    sections = [
        ["# secateurs pruning report"],
        _summary(report),
        _quality(report),
        _recipe_and_calibration(report),
        _cost(report),
        _depth_candidates(report),
        layer_lines,
        _environment(report),
    ]
    text = "\n\n".join(line for section in sections for line in section) + "\n"
    markdown = folder / REPORT_MARKDOWN
    markdown.write_text(text)
    return [markdown, *plots]
