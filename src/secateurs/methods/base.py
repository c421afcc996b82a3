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

from ..checks import check_choice, is_number
from ..errors import RecipeError
from ..patterns import NMPattern, nm_mask, unstructured_mask

NORMS = "norms"  # per-input-feature sum of squares (InputNormObserver)
HESSIAN = "hessian"  # 2 X^T X / n (HessianObserver)
CROSS = "cross"  # the Hessian and the drift 2 (X_dense - X)^T X / n (CrossObserver): a fit to the dense model
FITS = ("self", "dense")
# How far toward the dense model's output a layer is fitted unless told: GPTAQ's published default (Li et al. 2025,
# its alpha). The whole way (1) fits the calibration tokens closer but carried less beyond them where measured.
DEFAULT_MIX = 0.25


def check_fit(fit: object, mix: object) -> float | None:
    """A solver's ``fit`` (what each layer is fitted to) and ``mix`` (how far toward the dense model's output);
    returns the share to record: ``DEFAULT_MIX`` when none is given to a fit to the dense model."""
    check_choice(fit, "fit", FITS)
    if mix is None:
        return DEFAULT_MIX if fit == "dense" else None
    if not (is_number(mix) and 0 < mix <= 1):
        raise RecipeError(
            f"{{mix}} {mix!r} is outside (0, 1]: give the share of the way from the layer's own output to "
            f"the dense model's, e.g. {DEFAULT_MIX}"
        )
    if fit == "self":
        raise RecipeError("{mix} weighs the dense model's output: set {fit} dense, or drop {mix}")
    return float(mix)


def fitted_drift(statistics: Any, fit: str, mix: float | None, device: torch.device) -> torch.Tensor | None:
    """The layer's drift times ``mix`` (``check_fit``'s share) when it is fitted to the dense model's output,
    else None."""
    if fit != "dense":
        return None
    drift = getattr(statistics, "drift", None)
    if drift is None:
        raise RecipeError(
            "{method.fit} dense reads the dense model's input of each layer: prune through secateurs.prune (its "
            "walk gathers them), or use {method.fit} self"
        )
    return drift.to(device) * mix


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
