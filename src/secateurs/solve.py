"""The solve step of the walk: one weight, the statistics of its inputs and the recipe -> the pruned weight.

Pure: tensors in, tensors out; the caller writes the result into the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .methods import get_method, magnitude
from .methods.sparsegpt import sparsegpt_prune
from .patterns import check_nm_columns, nm_mask, unstructured_mask
from .recipe import Recipe


@dataclass
class Solution:
    mask: torch.Tensor  # True where the weight is kept, [out, in]
    weight: torch.Tensor | None = None  # updated float32 weights (OBS), or None: only the mask applies
    dampening: float | None = None  # lambda finally used, when a Hessian was inverted
    dead_inputs: int = 0  # input features that never fired (their weights are zeroed)


def score_mask(score: torch.Tensor, recipe: Recipe, per_row: bool) -> torch.Tensor:
    pattern = recipe.nm_pattern
    if pattern is not None:
        return nm_mask(score, pattern)
    return unstructured_mask(score, recipe.target_sparsity, per_row)


def solve_weight(weight: torch.Tensor, recipe: Recipe, statistics: object | None) -> Solution:
    """Prune ``weight`` [out, in] as ``recipe`` says. ``statistics``: an InputNormObserver or HessianObserver
    as ``recipe.statistics`` asks, or None when no calibration token reached the layer: then magnitude
    decides (with the recipe's pattern)."""
    method = get_method(recipe.method)
    work = weight.float()
    if statistics is None or not method.needs_inputs and recipe.update is None:
        return Solution(score_mask(magnitude.score(work), recipe, per_row=False))

    norms = statistics.input_sum_squares() if method.statistics is not None else None
    if method.score is not None:
        mask = score_mask(method.score(work, norms), recipe, method.per_row)
        if recipe.update is None:
            return Solution(mask)
    if recipe.nm_pattern is not None:
        check_nm_columns(work.shape[1], recipe.nm_pattern)
    hessian = statistics.hessian.to(weight.device)
    options = dict(pattern=recipe.nm_pattern, blocksize=recipe.blocksize, dampening=recipe.dampening)
    if method.score is None:  # SparseGPT: the OBS saliency chooses the mask
        result = sparsegpt_prune(work, hessian, recipe.target_sparsity, **options)
    elif recipe.update == "obs-seq":
        result = sparsegpt_prune(work, hessian, recipe.target_sparsity, mask=mask, **options)
    else:  # obs-iter: the score re-chooses the mask on the updated weights, block by block

        def saliency(weights: torch.Tensor, hinv_diagonal: torch.Tensor, columns: slice) -> torch.Tensor:
            return method.score(weights, None if norms is None else norms[columns].to(weights.device))

        result = sparsegpt_prune(work, hessian, recipe.target_sparsity, saliency=saliency, **options)
    return Solution(result.mask, result.weight, result.dampening, result.dead_inputs)
