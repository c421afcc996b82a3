"""Magnitude pruning (Han et al. 2015; the baseline of the Wanda and SparseGPT papers): score = |W|."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import ScoreMethod, register_method


def score(weight: torch.Tensor, input_sum_squares: torch.Tensor | None = None) -> torch.Tensor:
    """|W_ij|; inputs are not used."""
    return weight.abs()


@register_method
@dataclass(frozen=True)
class Magnitude(ScoreMethod):
    """|W| over the whole layer (per group of M for N:M); reads no calibration data."""

    name: ClassVar[str] = "magnitude"

    def score(self, weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
        return score(weight)
