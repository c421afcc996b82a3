"""RIA, relative importance and activations (Zhang et al. 2024, "Plug-and-Play: An Efficient Post-training
Pruning Method for Large Language Models").

score_ij = (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * ||X_j||_2 ** a: a weight matters relative to the
other weights of its input channel and of its output row, times the input's norm to the power ``a`` (0.5 in
the paper). Compared within each output row, as Wanda.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..checks import check_positive
from .base import NORMS, ScoreMethod, register_method

DEFAULT_ALPHA = 0.5


def score(weight: torch.Tensor, input_sum_squares: torch.Tensor | None, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    if input_sum_squares is None:
        raise ValueError("ria needs the sum of squares of each input feature")
    magnitude = weight.abs()
    column_sums = magnitude.sum(0, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    row_sums = magnitude.sum(1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
    relative = magnitude / column_sums + magnitude / row_sums
    return relative * input_sum_squares.sqrt().to(weight.dtype).unsqueeze(0) ** alpha


@register_method
@dataclass(frozen=True)
class Ria(ScoreMethod):
    """Relative importance times the input norm to the power ``alpha``, compared per output row."""

    name: ClassVar[str] = "ria"
    statistics: ClassVar[str | None] = NORMS
    per_row: ClassVar[bool] = True
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        check_positive(self.alpha, "alpha", "0.5")

    def score(self, weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
        return score(weight, input_sum_squares, self.alpha)
