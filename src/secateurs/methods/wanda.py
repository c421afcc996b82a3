"""Wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for LLMs").

score_ij = |W_ij| * ||X_j||_2, where ||X_j||_2 is the norm of input feature j over all calibration tokens;
scores are compared within each output row (``Method.per_row``).
"""

from __future__ import annotations

import torch


def score(weight: torch.Tensor, input_sum_squares: torch.Tensor | None) -> torch.Tensor:
    """|W| [out, in] times sqrt(sum over tokens of x_j^2) [in], broadcast over rows."""
    if input_sum_squares is None:
        raise ValueError("wanda needs the sum of squares of each input feature")
    return weight.abs() * input_sum_squares.sqrt().to(weight.dtype).unsqueeze(0)
