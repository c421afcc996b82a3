"""Width pruning on tensors: score the input channels of a projection, keep the best, and re-fit the
projection on the channels that remain so that its output changes as little as possible.

Statistics are the moments of the projection's input over the calibration tokens: the mean ``E[x]`` and the
second moment ``E[x x^T]``.
"""

from __future__ import annotations

import torch

SCORES = ("fluctuation", "wanda")


def channel_scores(
    weight: torch.Tensor, mean: torch.Tensor, second_moment_diagonal: torch.Tensor, metric: str
) -> torch.Tensor:
    """Importance of each input channel j of ``weight`` [out, in], higher is kept.

    ``fluctuation`` (FLAP, An et al. 2024): ||W_:j||^2 * Var(x_j), what removing the channel and replacing it by
    its mean costs. ``wanda`` (Wanda's structured variant): ||W_:j||_2 * ||x_j||_2 (root mean square).
    """
    column_norms_squared = weight.float().square().sum(0)
    if metric == "fluctuation":
        variance = (second_moment_diagonal - mean.square()).clamp_min(0)
        return column_norms_squared * variance
    if metric == "wanda":
        return column_norms_squared.sqrt() * second_moment_diagonal.clamp_min(0).sqrt()
    raise ValueError(f"unknown channel score {metric!r}: choose one of {', '.join(SCORES)}")


def kept_count(total: int, ratio: float, multiple: int = 1) -> int:
    """Channels kept when removing ``ratio`` of ``total``, rounded to a multiple of ``multiple`` (fast kernels);
    at least one multiple, at most ``total``."""
    if ratio == 0:
        return total
    kept = round(total * (1 - ratio) / multiple) * multiple
    return min(total, max(multiple, kept))


def refit(
    weight: torch.Tensor,
    second_moment: torch.Tensor,
    mean: torch.Tensor,
    keep: torch.Tensor,
    bias: torch.Tensor | None = None,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Least-squares re-fit of ``weight`` [out, in] on the kept input channels ``keep`` (indices).

    Minimizes E||W x + b - W' x_K - b'||^2 over the calibration inputs: W' = W A_:K (A_KK + lambda I)^-1 with
    A = E[x x^T]; with a bias, A is the covariance and the bias absorbs the mean of what was removed,
    b' = b + W mu - W' mu_K (OSSCAR/FLAP-style reconstruction with bias compensation). ``dampening`` lambda
    is a fraction of mean(diag A_KK), for removed channels that the kept ones nearly repeat.
    Returns (W' [out, |K|] float32, b' or None).
    """
    W = weight.float()
    A = second_moment.float()
    if bias is not None:
        A = A - torch.outer(mean, mean)
    A_keep = A.index_select(0, keep).index_select(1, keep)
    A_keep = A_keep + dampening * torch.diagonal(A_keep).mean().clamp_min(1e-8) * torch.eye(len(keep), device=A.device)
    right = W @ A.index_select(1, keep)  # [out, |K|]
    factor = torch.linalg.cholesky(A_keep)
    refitted = torch.cholesky_solve(right.t(), factor).t()
    if bias is None:
        return refitted, None
    new_bias = bias.float() + W @ mean - refitted @ mean.index_select(0, keep)
    return refitted, new_bias


def reconstruction_error(
    weight: torch.Tensor,
    new_weight: torch.Tensor,
    keep: torch.Tensor,
    second_moment: torch.Tensor,
    mean: torch.Tensor,
    bias_change: torch.Tensor | None = None,
) -> float:
    """Relative output error sqrt(E||W x - W' x_K - db||^2 / E||W x||^2), from the moments alone."""
    W = weight.float()
    full = torch.zeros_like(W)
    full[:, keep] = new_weight.float()
    delta = W - full
    error = torch.einsum("oi,ij,oj->", delta, second_moment, delta)
    if bias_change is not None:
        error = error - 2 * (delta @ mean) @ bias_change + bias_change.square().sum()
    reference = torch.einsum("oi,ij,oj->", W, second_moment, W)
    return float((error.clamp_min(0) / reference.clamp_min(1e-30)).sqrt())
