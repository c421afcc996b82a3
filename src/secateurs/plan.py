"""The per-layer plan of a layer-wise allocation: each target's sparsity and N:M pattern, from a schedule,
a file of globs, or OWL's outlier ratios measured in one observing pass over the dense model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .allocation import (
    file_sparsity,
    mixed_nm,
    outlier_ratio,
    owl_sparsities,
    parse_schedule,
    read_allocation_file,
    schedule_sparsities,
)
from .engine import BlockStore, walk
from .methods import wanda
from .models import Target, find_blocks, find_targets
from .observers import InputNormObserver
from .recipe import Recipe
from .solve import LayerPlan


def layer_plans(
    model: nn.Module,
    recipe: Recipe,
    calibration: torch.Tensor | None,
    device: torch.device,
    batch_size: int | None,
    progress: bool,
    store: BlockStore | None = None,
    reduce: Callable[[Any], None] | None = None,
) -> tuple[dict[str, LayerPlan], dict[str, Any]]:
    """Each target's sparsity and pattern under the recipe's allocation (empty: the recipe's, everywhere),
    and what the report says of it."""
    if recipe.allocation == "uniform":
        return {}, {"method": "uniform"}
    blocks_name, blocks = find_blocks(model)
    by_block = [find_targets(block, f"{blocks_name}.{i}", recipe.ignore) for i, block in enumerate(blocks)]
    info: dict[str, Any] = {"method": recipe.allocation}
    pattern = recipe.nm_pattern
    if pattern is not None and recipe.nm_allocation == "skip":
        info["note"] = (
            f"N:M layers keep their pattern {pattern}: the {recipe.allocation} allocation was skipped "
            "(pass --nm-allocation mixed for a per-layer N:M)"
        )
        return {}, info
    if recipe.allocation == "schedule":
        block_sparsity = schedule_sparsities(*parse_schedule(recipe.schedule), len(blocks))
    elif recipe.allocation == "owl":
        ratios = owl_outlier_ratios(model, recipe, calibration, device, batch_size, progress, store, reduce)
        sizes = [sum(t.weight().numel() for t in targets) for targets in by_block]
        target = recipe.sparsity if recipe.sparsity is not None else recipe.target_sparsity
        block_sparsity = owl_sparsities(ratios, sizes, target, recipe.owl_lambda)
        info.update(outlier_ratios=ratios, owl_m=recipe.owl_m, owl_lambda=recipe.owl_lambda)
    else:
        rules = read_allocation_file(recipe.allocation)
        default = recipe.target_sparsity
        block_sparsity = None
    plans: dict[str, LayerPlan] = {}
    for index, targets in enumerate(by_block):
        for target in targets:
            sparsity = block_sparsity[index] if block_sparsity else file_sparsity(target.name, rules, default)
            layer_pattern = mixed_nm(pattern, sparsity) if pattern is not None else None
            plans[target.name] = LayerPlan(layer_pattern.sparsity if layer_pattern else sparsity, layer_pattern)
    if block_sparsity:
        info["block_sparsities"] = block_sparsity
    return plans, info


def owl_outlier_ratios(
    model: nn.Module,
    recipe: Recipe,
    calibration: torch.Tensor,
    device: torch.device,
    batch_size: int | None,
    progress: bool,
    store: BlockStore | None = None,
    reduce: Callable[[Any], None] | None = None,
) -> list[float]:
    """OWL's layer outlier ratio: the fraction of a block's Wanda scores above M times the block's mean score,
    from one observing pass over the dense model (scored while each block's weights are at hand)."""
    ratios: dict[str, float] = {}
    current: dict[str, Any] = {"block": None, "scores": []}

    def finish_block() -> None:
        scores = current["scores"]
        if current["block"] is None:
            return
        total = sum(score.numel() for score in scores)
        mean = sum(float(score.sum()) for score in scores) / max(total, 1)
        outliers = sum(int((score > recipe.owl_m * mean).sum()) for score in scores)
        ratios[current["block"]] = outlier_ratio(outliers, total)

    def score_target(target: Target, observer: InputNormObserver | None) -> None:
        block = _block_of(target.name)
        if block != current["block"]:
            finish_block()
            current.update(block=block, scores=[])
        if observer is not None and observer.tokens:
            current["scores"].append(wanda.score(target.weight().float(), observer.sum_squares))

    walk(
        model,
        calibration,
        lambda target: InputNormObserver(target.in_features, target.weight().device),
        score_target,
        ignore=recipe.ignore,
        observe_only=True,
        batch_size=batch_size,
        device=device,
        progress=progress,
        store=store,
        reduce=reduce,
    )
    finish_block()
    blocks_name, blocks = find_blocks(model)
    return [ratios.get(f"{blocks_name}.{i}", 0.0) for i in range(len(blocks))]


def _block_of(name: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``model.layers.3``: the block a target belongs to."""
    parts = name.split(".")
    index = next(i for i, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[: index + 1])
