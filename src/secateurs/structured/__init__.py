"""Structured pruning: a smaller dense model, with a config that describes it.

``Width`` is walked block by block like unstructured pruning (observe the input moments of each MLP's down
projection or each attention's output projection, cut the block, propagate the cut block's outputs); ``Depth``
scores candidates on the calibration data and deletes whole blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..engine import BlockHook, WalkSettings
from ..models import find_blocks
from ..report.schema import DepthCandidate, Size, StructuredRecord, WalkRecord
from . import depth
from .config import check_config_describes
from .cut import prune_width
from .methods import STRUCTURED_METHODS, Depth, Width

__all__ = ["STRUCTURED_METHODS", "Depth", "Width", "prune_structured"]


def size_of(model: nn.Module) -> Size:
    """Parameters (tied weights count once) and their bytes."""
    parameters = list(model.parameters())
    return Size(sum(p.numel() for p in parameters), sum(p.numel() * p.element_size() for p in parameters))


def prune_structured(
    model: nn.Module,
    method: Width | Depth,
    calibration: torch.Tensor,
    settings: WalkSettings,
    hooks: list[BlockHook],
) -> tuple[StructuredRecord, WalkRecord | None]:
    """Prune ``model`` in place (smaller modules, rewritten config); returns what changed, and the width walk's
    record (None for depth). ``hooks`` run around each cut block (EBFT)."""
    before = size_of(model)
    walk_record = None
    with torch.no_grad():
        if isinstance(method, Depth):
            batch_size = settings.batch_size or 4
            details = _prune_depth(model, method, calibration, settings.device, batch_size, settings.progress)
        else:
            sizes, layers, walk_record = prune_width(model, method, calibration, settings, hooks)
            details = {"sizes": sizes, "layers": layers}
    check_config_describes(model)
    after = size_of(model)
    removed = 1 - after.parameters / before.parameters
    return StructuredRecord(before, after, removed, **details), walk_record


def _prune_depth(
    model: nn.Module, method: Depth, calibration: torch.Tensor, device: torch.device, batch_size: int, progress: bool
) -> dict[str, Any]:
    """Choose the blocks to remove by ``method.score`` and delete them; returns the structured record's depth
    fields (removed and kept layers, the windows searched on, every candidate's score)."""
    blocks_name, blocks = find_blocks(model)
    remove = method.layers_to_remove(len(blocks))
    if remove == 0:
        return {"removed_layers": [], "candidates": []}
    calibration = calibration[: method.search_windows]  # the distillation after the cut still gets every window
    if method.score == "perplexity":
        scores = depth.consecutive_run_perplexities(model, blocks, calibration, remove, device, progress)
        best = min(range(len(scores)), key=scores.__getitem__)
        removed = list(range(best, best + remove))
        candidates = [DepthCandidate(list(range(i, i + remove)), perplexity=s) for i, s in enumerate(scores)]
    else:
        scores = depth.block_influence(model, blocks, calibration, batch_size, device)
        removed = sorted(sorted(range(len(scores)), key=scores.__getitem__)[:remove])
        candidates = [DepthCandidate([i], block_influence=s) for i, s in enumerate(scores)]
    model.to("cpu")
    kept = depth.remove_blocks(model, blocks_name, removed)
    return {
        "removed_layers": removed,
        "kept_layers": kept,
        "search_windows": int(calibration.shape[0]),
        "candidates": candidates,
    }
