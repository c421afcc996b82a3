"""Pruning methods. A method knows nothing of models: it sees a ``[out_features, in_features]`` float32 weight
and, where it asks for them, the statistics of that layer's inputs.

Two kinds: a *score* (magnitude, Wanda) rates each weight and ``patterns`` turns the rates into a mask; a
*solver* (SparseGPT) chooses the mask and updates the remaining weights from the layer Hessian. The registry
maps a method's name to its definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import RecipeError
from . import magnitude, ria, wanda

NORMS = "norms"  # per-input-feature sum of squares (InputNormObserver)
HESSIAN = "hessian"  # 2 X^T X / n (HessianObserver)


@dataclass(frozen=True)
class Method:
    name: str
    # What the method reads of a layer's inputs: None, NORMS or HESSIAN.
    statistics: str | None
    # score(weight, input_sum_squares) -> importance, higher is kept; None for a solver.
    score: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None
    # Unstructured comparison group of a score: each output row (Wanda) or the whole layer (magnitude).
    per_row: bool = False
    # True-sequential by default (SparseGPT's reference does it; Wanda's paper procedure does not).
    sequential: bool = False

    @property
    def needs_inputs(self) -> bool:
        return self.statistics is not None


METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", None, magnitude.score),
    "wanda": Method("wanda", NORMS, wanda.score, per_row=True),
    "ria": Method("ria", NORMS, ria.score, per_row=True),
    "sparsegpt": Method("sparsegpt", HESSIAN, sequential=True),
}

# The Wanda paper's Section 5 ablations: a score's mask followed by SparseGPT's OBS weight update, the mask
# fixed once ("seq") or re-chosen by the score every column block of the sweep ("iter").
UPDATES = ("obs-seq", "obs-iter")


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise RecipeError(f"unknown method {name!r}: choose one of {known}") from None
