"""The report's plots (matplotlib, the ``[plots]`` extra), drawn on bare ``Figure`` objects with the Agg canvas:
no display, no global pyplot state. Without matplotlib, ``plots_available`` is False and report.md says so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..extras import available, require
from .schema import LayerRecord

SPARSITY_PLOT = "layer_sparsity.png"
RECONSTRUCTION_PLOT = "reconstruction_error.png"
_BLOCK_INDEX = re.compile(r"\.(\d+)\.")


def plots_available() -> bool:
    return available("matplotlib")


def new_figure(width: float = 8, height: float = 4) -> Any:
    figure_module = require("matplotlib.figure")
    return figure_module.Figure(figsize=(width, height), dpi=100, layout="constrained")


def layer_kind(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q_proj``: the Linear's role, the same in every block."""
    return name.rsplit(".", 1)[-1]


def block_index(name: str, default: int) -> int:
    """The decoder block a layer belongs to (the first number in its dotted name)."""
    found = _BLOCK_INDEX.search(f"{name}.")
    return int(found.group(1)) if found else default


def plot_layer_sparsity(layers: list[LayerRecord], path: Path, target: float | None = None) -> Path:
    """Bars of the achieved sparsity of every pruned layer in walk order, coloured by the Linear's role."""
    figure = new_figure(max(6.0, min(16.0, len(layers) * 0.08)), 4)
    axes = figure.add_subplot()
    kinds = list(dict.fromkeys(layer_kind(layer.name) for layer in layers))
    for i, kind in enumerate(kinds):
        positions = [j for j, layer in enumerate(layers) if layer_kind(layer.name) == kind]
        axes.bar(positions, [layers[j].sparsity for j in positions], width=1.0, color=f"C{i % 10}", label=kind)
    if target is not None:
        axes.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:g}")
    axes.set_xlabel("layer (walk order: block by block)")
    axes.set_ylabel("sparsity (fraction of zero weights)")
    axes.set_ylim(0, 1)
    axes.set_title("Per-layer sparsity")
    figure.legend(fontsize="small", loc="outside right upper")
    figure.savefig(path)
    return path


def plot_reconstruction_error(layers: list[Any], path: Path) -> Path:
    """Relative reconstruction error ||WX - W'X|| / ||WX|| against block depth, one line per Linear role
    (``layers``: LayerRecord or CutLayer)."""
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    measured = [(i, layer) for i, layer in enumerate(layers) if layer.reconstruction_error is not None]
    for kind in dict.fromkeys(layer_kind(layer.name) for _, layer in measured):
        points = sorted(
            (block_index(layer.name, i), layer.reconstruction_error)
            for i, layer in measured
            if layer_kind(layer.name) == kind
        )
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=kind)
    values = [layer.reconstruction_error for _, layer in measured]
    if values and min(values) > 0 and max(values) / min(values) > 10:
        axes.set_yscale("log")
    axes.set_xlabel("decoder block")
    axes.set_ylabel("relative error ||WX - W'X|| / ||WX||")
    axes.set_title("Reconstruction error on the calibration data")
    figure.legend(fontsize="small", loc="outside right upper")
    figure.savefig(path)
    return path


def plot_losses(losses: list[float], path: Path, milestones: list[int] | None = None) -> Path:
    """A training loss curve with its running mean; grey lines at the steps where masks were updated."""
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, linewidth=1, label="loss")
    window = max(1, len(losses) // 20)
    if len(losses) > window:
        smooth = [sum(losses[i - window : i]) / window for i in range(window, len(losses) + 1)]
        axes.plot(range(window, len(losses) + 1), smooth, linewidth=2, label=f"mean of {window}")
    for step in milestones or []:
        axes.axvline(step + 1, color="grey", linewidth=0.5)
    axes.set_xlabel("step")
    axes.set_ylabel("next-token loss")
    axes.set_title("Training loss" + (" (grey: mask updates)" if milestones else ""))
    axes.legend(fontsize="small")
    figure.savefig(path)
    return path
