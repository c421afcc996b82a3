"""What every method shares: the layer's plan (sparsity and N:M pattern), the solution it returns, and the
registry that maps a method's name to its configuration class.

A method is a small frozen dataclass: its fields are its own settings (Wanda's ``variant``, SparseGPT's
``blocksize``), its class attributes say what it reads of a layer's inputs, and ``prune`` turns one weight
``[out_features, in_features]`` (float32), the statistics of that layer's inputs and the layer's plan into a
``Solution``. It knows nothing of models or recipes. A new method is one file: a class decorated with
``register_method``, imported once (``secateurs.methods`` imports the built-in ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RecipeError
from ..patterns import NMPattern, nm_mask, unstructured_mask

NORMS = "norms"  # per-input-feature sum of squares (InputNormObserver)
HESSIAN = "hessian"  # 2 X^T X / n (HessianObserver)


@dataclass(frozen=True)
class LayerPlan:
    """What one layer gets: its sparsity and its N:M pattern (None: unstructured)."""

    sparsity: float
    pattern: NMPattern | None


@dataclass
class Solution:
    mask: torch.Tensor  # True where the weight is kept, [out, in]
    weight: torch.Tensor | None = None  # updated float32 weights (OBS), or None: only the mask applies
    dampening: float | None = None  # lambda used when the Hessian needed more than the configured one
    dead_inputs: int = 0  # input features that never fired (their weights are zeroed)


def score_mask(score: torch.Tensor, plan: LayerPlan, per_row: bool) -> torch.Tensor:
    """Keep the highest scores: per group of M for N:M, else per row or over the whole layer."""
    if plan.pattern is not None:
        return nm_mask(score, plan.pattern)
    return unstructured_mask(score, plan.sparsity, per_row)


class Method:
    """Base of the method configurations (frozen dataclasses)."""

    name: ClassVar[str]
    # What the method reads of a layer's inputs: None, NORMS or HESSIAN.
    statistics: ClassVar[str | None] = None
    # True-sequential by default (SparseGPT's reference does it; Wanda's paper procedure does not).
    sequential: ClassVar[bool] = False

    def prune(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan) -> Solution:
        raise NotImplementedError

    def check(self, pattern: NMPattern | None, updated: bool) -> None:
        """Refuse a pattern (or an OBS update of the mask, ``updated``) this method's settings cannot serve."""


class ScoreMethod(Method):
    """A method that rates each weight (higher is kept) and keeps the best at the plan's sparsity."""

    # Unstructured comparison group: each output row (Wanda) or the whole layer (magnitude).
    per_row: ClassVar[bool] = False

    def score(self, weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def input_sum_squares(self, statistics: Any) -> torch.Tensor | None:
        return statistics.input_sum_squares() if self.statistics is not None else None

    def prune(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan) -> Solution:
        return Solution(score_mask(self.score(weight, self.input_sum_squares(statistics)), plan, self.per_row))


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Make ``cls`` known by its ``name`` to recipes, recipe files and the CLI's ``--method``."""
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise RecipeError(f"unknown method {name!r}: choose one of {known}") from None
