"""One layer's solve: its weight, the statistics of its inputs and the recipe's per-layer stages (the method, a
mask refinement, an OBS update) -> the pruned weight. Pure: tensors in, tensors out; the caller writes the result
into the model."""

from __future__ import annotations

from typing import Any

import torch

from . import magnitude
from .base import LayerPlan, Method, ScoreMethod, Solution, score_mask
from .dsnot import DSnoT
from .update import ObsUpdate


def solve_layer(
    weight: torch.Tensor,
    statistics: Any | None,
    plan: LayerPlan,
    method: Method,
    refine: DSnoT | None = None,
    update: ObsUpdate | None = None,
) -> Solution:
    """Prune ``weight`` [out, in] at ``plan``'s sparsity and pattern.

    ``statistics``: what the stages read of the layer's inputs (InputNormObserver or HessianObserver), or None
    when no calibration token reached the layer: then magnitude decides. ``refine`` (DSnoT) swaps weights of
    the method's mask; ``update`` replaces the method's own solve by an OBS sweep on the Hessian.
    """
    work = weight.float()
    if statistics is None:
        return Solution(score_mask(magnitude.score(work), plan, per_row=False))
    if update is not None:
        assert isinstance(method, ScoreMethod)  # the recipe refuses an update of a solver's weights
        return update.solve(work, statistics, plan, method)
    solution = method.prune(work, statistics, plan)
    if refine is not None:
        return Solution(refine.refine(work, solution.mask, statistics, plan))
    return solution
