"""The solve step of the walk: one weight, the statistics of its inputs and the recipe -> the pruned weight.

Pure: tensors in, tensors out; the caller writes the result into the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .methods import get_method, magnitude, ria, wanda
from .methods.dsnot import dsnot
from .methods.sparsegpt import sparsegpt_prune
from .patterns import NMPattern, check_nm_columns, nm_mask, unstructured_mask
from .recipe import Recipe


@dataclass(frozen=True)
class LayerPlan:
    """What one layer gets: its sparsity and its N:M pattern (None: unstructured)."""

    sparsity: float
    pattern: NMPattern | None


@dataclass
class Solution:
    mask: torch.Tensor  # True where the weight is kept, [out, in]
    weight: torch.Tensor | None = None  # updated float32 weights (OBS), or None: only the mask applies
    dampening: float | None = None  # lambda finally used, when a Hessian was inverted
    dead_inputs: int = 0  # input features that never fired (their weights are zeroed)


def default_plan(recipe: Recipe) -> LayerPlan:
    return LayerPlan(recipe.target_sparsity, recipe.nm_pattern)


def score_mask(score: torch.Tensor, plan: LayerPlan, per_row: bool) -> torch.Tensor:
    if plan.pattern is not None:
        return nm_mask(score, plan.pattern)
    return unstructured_mask(score, plan.sparsity, per_row)


def _score(recipe: Recipe, weight: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
    method = get_method(recipe.method)
    if method.name == "ria":
        return ria.score(weight, norms, recipe.ria_alpha)
    return method.score(weight, norms)


def solve_weight(
    weight: torch.Tensor,
    recipe: Recipe,
    statistics: object | None,
    plan: LayerPlan | None = None,
    refine: bool = True,
) -> Solution:
    """Prune ``weight`` [out, in] as ``recipe`` says, at ``plan``'s sparsity and pattern (default: the recipe's).

    ``statistics``: an InputNormObserver or HessianObserver as ``recipe.statistics`` asks, or None when no
    calibration token reached the layer: then magnitude decides. ``refine``: whether the recipe's mask
    refinement (DSnoT) applies to this layer.
    """
    plan = plan or default_plan(recipe)
    method = get_method(recipe.method)
    work = weight.float()
    if statistics is None:
        return Solution(score_mask(magnitude.score(work), plan, per_row=False))

    norms = statistics.input_sum_squares() if method.statistics is not None else None
    if method.score is not None:
        score = _score(recipe, work, norms)
        if recipe.variant:
            mask = wanda.variant_mask(score, plan.sparsity)
        else:
            mask = score_mask(score, plan, method.per_row)
        if recipe.refine == "dsnot" and refine:
            wanda_score = wanda.score(work, statistics.input_sum_squares())
            mask = dsnot(
                work,
                mask,
                statistics.mean,
                statistics.variance,
                wanda_score,
                plan.pattern,
                update_threshold=recipe.refine_threshold,
            )
        if recipe.update is None:
            return Solution(mask)
    if plan.pattern is not None:
        check_nm_columns(work.shape[1], plan.pattern)
    hessian = statistics.hessian.to(weight.device)
    options = dict(pattern=plan.pattern, blocksize=recipe.blocksize, dampening=recipe.dampening)
    if method.score is None:  # SparseGPT: the OBS saliency chooses the mask
        result = sparsegpt_prune(work, hessian, plan.sparsity, **options)
    elif recipe.update == "obs-seq":
        result = sparsegpt_prune(work, hessian, plan.sparsity, mask=mask, **options)
    else:  # obs-iter: the score re-chooses the mask on the updated weights, block by block

        def saliency(weights: torch.Tensor, hinv_diagonal: torch.Tensor, columns: slice) -> torch.Tensor:
            return _score(recipe, weights, None if norms is None else norms[columns].to(weights.device))

        result = sparsegpt_prune(work, hessian, plan.sparsity, saliency=saliency, **options)
    return Solution(result.mask, result.weight, result.dampening, result.dead_inputs)
