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
