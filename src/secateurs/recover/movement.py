"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptivity to Sparsity by Fine-Tuning").

A weight's score accumulates how training moves it away from zero: S_ij = -sum_t W_ij^(t) dL/dW_ij^(t). Weights
that grow in magnitude (W and -dL/dW of the same sign) gain; at each mask update the top-scoring weights are
kept (hard movement pruning). The gradient is taken with respect to the masked weight used in the forward, for
every entry (the straight-through estimator), so a removed weight can earn its way back.
"""

from __future__ import annotations

import torch


def accumulate(scores: torch.Tensor, weight: torch.Tensor, gradient: torch.Tensor) -> None:
    """S -= W * dL/dW, in place (float32)."""
    scores.sub_(weight.float() * gradient.float())
