"""Streaming statistics of a Linear's inputs, gathered by hooks while calibration data flows through."""

from __future__ import annotations

import torch

# Rows per step: bounds the float32 temporary when squaring a large activation.
_CHUNK_ROWS = 8192


class InputNormObserver:
    """Sum over calibration tokens of x_j^2 for each input feature j (Wanda's ||X_j||_2^2), in float32.

    Sums merge by addition, so shards of the calibration set (batches, ranks) can be combined.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.sum_squares = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def update(self, inputs: torch.Tensor) -> None:
        rows = inputs.reshape(-1, inputs.shape[-1])
        for chunk in rows.split(_CHUNK_ROWS):
            self.sum_squares += chunk.float().square().sum(0).to(self.sum_squares.device)
        self.tokens += rows.shape[0]

    def merge(self, other: InputNormObserver) -> None:
        self.sum_squares += other.sum_squares.to(self.sum_squares.device)
        self.tokens += other.tokens


class HessianObserver:
    """H = 2 X^T X / n over the calibration tokens (SparseGPT's layer Hessian), float32, as a running mean.

    Merge by token-weighted averaging, so shards (batches, ranks) combine exactly.
    """

    def __init__(self, in_features: int, device: torch.device | str = "cpu") -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def update(self, inputs: torch.Tensor) -> None:
        rows = inputs.reshape(-1, inputs.shape[-1])
        for chunk in rows.split(_CHUNK_ROWS):
            chunk = chunk.to(self.hessian.device, torch.float32)
            total = self.tokens + chunk.shape[0]
            self.hessian.mul_(self.tokens / total).addmm_(chunk.t(), chunk, alpha=2.0 / total)
            self.tokens = total

    def merge(self, other: HessianObserver) -> None:
        total = self.tokens + other.tokens
        if total:
            self.hessian.mul_(self.tokens / total).add_(
                other.hessian.to(self.hessian.device), alpha=other.tokens / total
            )
        self.tokens = total
