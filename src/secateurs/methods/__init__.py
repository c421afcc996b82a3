"""Pruning methods: each turns a weight and its input statistics into an importance score.

A method knows nothing of models: it sees a ``[out_features, in_features]`` float32 weight and, where it
asks for them, the statistics of that layer's inputs. The registry maps a method's name to its
definition; ``patterns`` turns scores into masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import RecipeError
from . import magnitude, wanda


@dataclass(frozen=True)
class Method:
    name: str
    # score(weight, input_sum_squares) -> importance, higher is kept
    score: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_inputs: bool
    # Unstructured comparison group: each output row (Wanda) or the whole layer (magnitude).
    per_row: bool


METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", magnitude.score, needs_inputs=False, per_row=False),
    "wanda": Method("wanda", wanda.score, needs_inputs=True, per_row=True),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise RecipeError(f"unknown method {name!r}: choose one of {known}") from None
