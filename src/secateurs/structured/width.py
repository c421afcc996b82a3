"""Width pruning on tensors: score the input channels of a projection, keep the best, and re-fit the
projection on the channels that remain so that its output changes as little as possible.

Statistics are the moments of the projection's input over the calibration tokens: the mean ``E[x]`` and the
second moment ``E[x x^T]``.
"""

from __future__ import annotations

import torch

SCORES = ("fluctuation", "wanda", "obs")


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
    if metric == "obs":
        raise ValueError("the obs score chooses channels jointly: use obs_selection")
    raise ValueError(f"unknown channel score {metric!r}: choose one of {', '.join(SCORES)}")


def obs_selection(
    weight: torch.Tensor, second_moment: torch.Tensor, kept: int, dampening: float = 0.01, step: int = 1
) -> torch.Tensor:
    """Input channels to keep, chosen by greedy backward elimination on the least-squares objective (the OBS
    criterion for a whole column, as ZipLM and OSSCAR's local search use it): repeatedly remove the channel j
    whose loss with the others optimally re-fitted, ||W_:j||^2 / [A^-1]_jj, is smallest, then compensate the
    remaining columns and downdate A^-1. ``step`` channels go per round (faster on wide layers).

    Returns the sorted indices of the ``kept`` channels.
    """
    W = weight.float().clone()
    A = second_moment.float()
    A = A + dampening * torch.diagonal(A).mean().clamp_min(1e-8) * torch.eye(A.shape[0], device=A.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(A))
    alive = torch.ones(A.shape[0], dtype=torch.bool, device=A.device)
    for _ in range(0, A.shape[0] - kept, step):
        count = min(step, int(alive.sum()) - kept)
        diagonal = torch.diagonal(inverse)
        loss = W.square().sum(0) / diagonal.clamp_min(1e-30)
        loss[~alive] = torch.inf
        for j in torch.topk(loss, count, largest=False).indices.tolist():
            # remove column j: the others absorb its output (OBS update), and A^-1 loses row and column j
            pivot = inverse[j, j]
            W -= torch.outer(W[:, j], inverse[j]) / pivot
            inverse -= torch.outer(inverse[:, j], inverse[j]) / pivot
            alive[j] = False
            inverse[j, :] = 0
            inverse[:, j] = 0
            inverse[j, j] = 1  # inert: keeps the diagonal positive for the next round's division
    return alive.nonzero().flatten()


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

    Minimizes E||W x + b - W' x_K - b'||^2 + lambda ||W' - W_:K||^2 over the calibration inputs:
    W' = (W A_:K + lambda W_:K) (A_KK + lambda I)^-1 with A = E[x x^T]; with a bias, A is the covariance and the
    bias absorbs the mean of what was removed, b' = b + W mu - W' mu_K (OSSCAR/FLAP-style reconstruction with bias
    compensation). The ridge pulls toward plain removal (W_:K), not toward zero, so the re-fit is never worse than
    plain removal on the calibration data; lambda is ``dampening`` times mean(diag A_KK).
    Returns (W' [out, |K|] float32, b' or None).
    """
    W = weight.float()
    A = second_moment.float()
    if bias is not None:
        A = A - torch.outer(mean, mean)
    A_keep = A.index_select(0, keep).index_select(1, keep)
    ridge = dampening * torch.diagonal(A_keep).mean().clamp_min(1e-8)
    A_keep = A_keep + ridge * torch.eye(len(keep), device=A.device)
    right = W @ A.index_select(1, keep) + ridge * W.index_select(1, keep)  # [out, |K|]
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
