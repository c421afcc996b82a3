"""Magnitude pruning (Han et al. 2015; the baseline of the Wanda and SparseGPT papers): score = |W|."""

from __future__ import annotations

import torch


def score(weight: torch.Tensor, input_sum_squares: torch.Tensor | None = None) -> torch.Tensor:
    """|W_ij|; inputs are not used."""
    return weight.abs()
