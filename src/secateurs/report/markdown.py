"""The human-readable side of a report: ``report.md`` with its plots, rendered from the ``Report`` that
``secateurs.json`` holds, and the Markdown tables shared by ``eval`` and ``sweep``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import (
    RECONSTRUCTION_PLOT,
    SPARSITY_PLOT,
    plot_layer_sparsity,
    plot_losses,
    plot_reconstruction_error,
    plots_available,
)
from .schema import Report

REPORT_MARKDOWN = "report.md"
LOSS_PLOT = "loss_curve.png"


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
    if isinstance(value, dict):
        return ", ".join(f"{key} {format_value(item)}" for key, item in value.items() if key != "name") or "–"
    return str(value).replace("|", "\\|")


def evaluation_table(perplexities: dict[str, float], tasks: dict[str, dict[str, float]]) -> str:
    """``secateurs eval``'s results as one table: perplexity per set, then accuracy per task."""
    rows: list[list[Any]] = [[name, "perplexity", value, None] for name, value in perplexities.items()]
    for task, metrics in tasks.items():
        rows += [[task, m, metrics[m], metrics.get(f"{m}_stderr")] for m in ("acc", "acc_norm") if m in metrics]
    return markdown_table(["evaluation", "metric", "value", "stderr"], rows)


def _layer_list(layers: list[int] | None) -> str | None:
    """Layer indices with commas: a list of whole numbers would otherwise read as a shape (16 x 17 x 18)."""
    return None if layers is None else ", ".join(str(index) for index in layers) or "none"


def _summary(report: Report) -> list[str]:
    structured = report.structured
    method = report.recipe.get("method")
    rows = [
        ("model", report.model),
        ("method", method.get("name") if isinstance(method, dict) else method),
        ("pattern", report.recipe.get("pattern")),
        ("target sparsity", report.target_sparsity),
        ("achieved sparsity", report.sparsity),
        ("pruned parameters", report.pruned_parameters),
        ("parameters before", structured.before.parameters if structured else None),
        ("parameters after", structured.after.parameters if structured else None),
        ("fraction of parameters removed", structured.parameters_removed if structured else None),
        ("removed layers", _layer_list(structured.removed_layers) if structured else None),
        ("weight file bytes", report.weight_file_bytes),
        ("dtype", report.dtype),
        ("device", report.device),
    ]
    return [markdown_table(["quantity", "value"], [row for row in rows if row[1] is not None])]


def _quality(report: Report) -> list[str]:
    if report.perplexity_before is None and report.perplexity_after is None:
        return []
    evaluation = report.evaluation
    rows = [
        ("perplexity before", report.perplexity_before),
        ("perplexity after", report.perplexity_after),
        ("data set", evaluation.dataset if evaluation else None),
        ("window (tokens)", evaluation.seqlen if evaluation else None),
        ("windows", (evaluation.windows if evaluation else None) or "all"),
    ]
    return ["## Quality", markdown_table(["quantity", "value"], rows)]


def _recipe(report: Report) -> list[str]:
    if not report.recipe:
        return []
    rows = [(key, value) for key, value in report.recipe.items() if key != "calibration"]
    lines = ["## Recipe", markdown_table(["setting", "value"], rows)]
    calibration = report.recipe.get("calibration")
    if isinstance(calibration, dict):
        rows = list(calibration.items())
        if report.calibration_documents is not None:  # held-out text for an evaluation: the others
            used = len(set(report.calibration_documents))
            rows.append(("documents used", f"{used} (indices in secateurs.json, calibration_documents)"))
        lines += ["## Calibration", markdown_table(["setting", "value"], rows)]
    return lines


def _cost(report: Report) -> list[str]:
    lines = ["## Time and memory"]
    seconds = report.seconds or ({"prune": report.prune_seconds} if report.prune_seconds is not None else {})
    if seconds:
        lines.append(markdown_table(["stage", "seconds"], list(seconds.items())))
    memory = [
        ("peak resident memory (MiB)", report.peak_rss_mib),
        ("peak resident memory after pruning (MiB)", report.peak_rss_mib_after_prune),
        ("peak CUDA memory (MiB)", report.peak_cuda_mib),
    ]
    memory = [row for row in memory if row[1] is not None]
    if memory:
        lines.append(markdown_table(["quantity", "value"], memory))
    walk = report.walk
    if walk is not None:
        walk_rows = [("mode", walk.mode), ("batch_size", walk.batch_size), ("passes_per_block", walk.passes_per_block)]
        walk_rows += [(f"{stage} (s)", value) for stage, value in walk.seconds.items()]
        lines += ["Block-by-block walk:", markdown_table(["quantity", "value"], walk_rows)]
        lines += [f"- {note}" for note in walk.notes]
    distilled = report.distill
    if distilled is not None:
        losses = ", ".join(f"{loss:g}" for loss in distilled.epoch_losses)
        lines.append(
            f"Distillation: {distilled.epochs} epoch(s) at Adam lr {distilled.lr:g}, {distilled.seconds} s; "
            f"mean KL to the dense model per epoch (nats per token): {losses}."
        )
    return lines if len(lines) > 1 else []


def _gguf(report: Report) -> list[str]:
    gguf = report.gguf
    if gguf is None:
        return []
    lines = [
        "## GGUF file",
        f"{gguf.path}: {gguf.bytes:,} bytes, {gguf.architecture} architecture, matrices in {gguf.outtype}; "
        f"tokenizer: {gguf.tokenizer}.",
    ]
    check = gguf.llama_cpp
    if check is None:
        lines.append('Not checked in llama.cpp (install "secateurs[llama]" to check it).')
    else:
        verdict = "equal" if check.matches else f"different for {len(check.differing)} prompt(s)"
        lines.append(
            f"llama.cpp (llama-cpp-python {check.version}) loaded it; its greedy continuations of {check.prompts} "
            f"prompts, {check.new_tokens} tokens each, are {verdict} to the Hugging Face model's. Its tokenizer "
            f"splits the prompts {'the same way' if check.tokenizer_matches else 'differently'}."
        )
    return lines


def _depth_candidates(report: Report) -> list[str]:
    structured = report.structured
    if structured is None or not structured.candidates:
        return []
    score = "perplexity" if structured.candidates[0].perplexity is not None else "block_influence"
    rows = [[_layer_list(c.layers), getattr(c, score)] for c in structured.candidates]
    windows = structured.search_windows
    scored = f"{score} on {windows} calibration windows" if windows else score
    return [f"## Depth candidates ({scored})", markdown_table(["layers removed", score], rows)]


def _plot_note() -> str:
    return '(Plots need matplotlib: pip install "secateurs[plots]".)'


def _width_layers(report: Report, folder: Path) -> list[str]:
    """Width pruning: what each layer kept, and how well the re-fitted projection reproduces its output."""
    layers = report.structured.layers if report.structured else []
    if not layers:
        return []
    sizes = [key for key in ("channels", "heads", "kv_heads") if getattr(layers[0], key) is not None]
    header = ["#", "layer", *[f"{key} (before, after)" for key in sizes], "reconstruction error"]
    rows = [[i, c.name, *[getattr(c, key) for key in sizes], c.reconstruction_error] for i, c in enumerate(layers)]
    lines = [
        "## Reconstruction error",
        "Relative error ||WX - W'X|| / ||WX|| of each re-fitted projection on the calibration data.",
    ]
    if plots_available():
        plot_reconstruction_error(layers, folder / RECONSTRUCTION_PLOT)
        lines.append(f"![reconstruction error across depth]({RECONSTRUCTION_PLOT})")
    else:
        lines.append(_plot_note())
    return [*lines, "## Layers", markdown_table(header, rows)]


def _sparse_layers(report: Report, folder: Path) -> list[str]:
    layers = report.layers
    if not layers:
        return []
    plots = plots_available()
    lines = ["## Per-layer sparsity"]
    if plots:
        plot_layer_sparsity(layers, folder / SPARSITY_PLOT, report.target_sparsity)
        lines.append(f"![per-layer sparsity]({SPARSITY_PLOT})")
    else:
        lines.append(_plot_note())
    with_error = any(layer.reconstruction_error is not None for layer in layers)
    if with_error and plots:
        plot_reconstruction_error(layers, folder / RECONSTRUCTION_PLOT)
        lines += [
            "## Reconstruction error",
            "Relative error ||WX - W'X|| / ||WX|| of each pruned layer on the calibration data.",
            f"![reconstruction error across depth]({RECONSTRUCTION_PLOT})",
        ]
    header = ["#", "layer", "shape", "sparsity"] + (["reconstruction error"] if with_error else []) + ["note"]
    rows = [
        [i, layer.name, layer.shape, layer.sparsity]
        + ([layer.reconstruction_error] if with_error else [])
        + [layer.note or ""]
        for i, layer in enumerate(layers)
    ]
    return [*lines, "## Layers", markdown_table(header, rows)]


def _training(report: Report, folder: Path) -> list[str]:
    training = report.training
    if training is None:
        return []
    lines = ["## Training"]
    if plots_available():
        plot_losses(training.losses, folder / LOSS_PLOT, [m.step for m in training.milestones] or None)
        lines.append(f"![training loss]({LOSS_PLOT})")
    else:
        lines.append(_plot_note())
    return lines


def _environment(report: Report) -> list[str]:
    rows = [(f"{name} version", version) for name, version in report.versions.items()]
    # a list (the CPU's instruction sets) as words, not as Python's repr
    rows += [(name, " ".join(value) if isinstance(value, list) else value) for name, value in report.machine.items()]
    return ["## Environment", markdown_table(["quantity", "value"], rows)] if rows else []


def write_markdown_report(report: Report, folder: str | Path) -> Path:
    """Write ``report.md`` and the plots it shows into ``folder``; returns the Markdown file."""
    folder = Path(folder)
    sections = [
        ["# secateurs pruning report"],
        _summary(report),
        _quality(report),
        _recipe(report),
        _cost(report),
        _gguf(report),
        _depth_candidates(report),
        _width_layers(report, folder),
        _sparse_layers(report, folder),
        _training(report, folder),
        _environment(report),
    ]
    text = "\n\n".join(line for section in sections for line in section) + "\n"
    markdown = folder / REPORT_MARKDOWN
    markdown.write_text(text)
    return markdown
