"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

Columns are visited left to right in blocks of ``blocksize``. Within a block the mask is chosen adaptively
from w^2 / [H^-1]_jj^2 (OBS saliency), over the whole block for unstructured sparsity or per M columns for
N:M; each pruned column's error is spread over the columns not yet visited through the Cholesky factor of
H^-1 (the OBS update), lazily: inside the block first, then once for all later columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..patterns import NMPattern


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # pruned and updated, float32, [out, in]
    dampening: float  # the fraction of mean(diag H) finally added (grown when H was not positive definite)
    dead_inputs: int  # input features that never fired (zero Hessian diagonal): their weights are zeroed


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, retries: int = 6) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + lambda mean(diag H) I)^-1; lambda grows tenfold until H is positive
    definite (never NaN)."""
    mean_diagonal = torch.mean(torch.diag(hessian)).clamp_min(1e-8)
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(retries + 1):
        damped = hessian + (dampening * 10**attempt) * mean_diagonal * identity
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper, dampening * 10**attempt
    raise torch.linalg.LinAlgError("the Hessian is not positive definite even with strong dampening")


def _block_prune_counts(rows: int, columns: int, blocksize: int, sparsity: float) -> list[int]:
    """Weights to prune in each column block so that the layer's total is exactly int(rows*columns*s)."""
    edges = list(range(0, columns, blocksize)) + [columns]
    cumulative = [int(rows * edge * sparsity) for edge in edges]
    return [b - a for a, b in zip(cumulative, cumulative[1:], strict=False)]


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: NMPattern | None = None,
    blocksize: int = 128,
    dampening: float = 0.01,
    mask: torch.Tensor | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` [out, in] given the layer Hessian ``H = 2 X^T X / n`` [in, in].

    ``mask`` (True = keep), when given, fixes which weights go (e.g. Wanda's mask) and only the OBS update
    is applied (the Wanda paper's Section 5 ablation); otherwise SparseGPT chooses it adaptively.
    """
    W = weight.detach().clone().float()
    H = hessian.detach().clone().float()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv, used = inverse_hessian_factor(H, dampening)
    counts = _block_prune_counts(rows, columns, blocksize, sparsity)

    for number, start in enumerate(range(0, columns, blocksize)):
        end = min(start + blocksize, columns)
        W1 = W[:, start:end].clone()
        Hinv1 = Hinv[start:end, start:end]
        diagonal = torch.diag(Hinv1)
        errors = torch.zeros_like(W1)
        if mask is not None:
            keep = mask[:, start:end].clone()
        elif pattern is None:
            saliency = W1**2 / diagonal.unsqueeze(0) ** 2
            order = torch.sort(saliency.flatten(), stable=True).indices
            keep = torch.ones(saliency.numel(), dtype=torch.bool, device=W.device)
            keep[order[: counts[number]]] = False
            keep = keep.view_as(W1)
        else:
            keep = torch.ones_like(W1, dtype=torch.bool)
        for i in range(end - start):
            if mask is None and pattern is not None and i % pattern.m == 0:
                group = W1[:, i : i + pattern.m] ** 2 / diagonal[i : i + pattern.m].unsqueeze(0) ** 2
                dropped = torch.sort(group, dim=1, stable=True).indices[:, : pattern.m - pattern.n]
                keep[:, i : i + pattern.m].scatter_(1, dropped, False)
            column = W1[:, i]
            quantized = torch.where(keep[:, i], column, torch.zeros_like(column))
            error = (column - quantized) / diagonal[i]
            W1[:, i:] -= error.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = quantized
            errors[:, i] = error
        W[:, start:end] = W1
        W[:, end:] -= errors @ Hinv[start:end, end:]
    return SparseGPTResult(W, used, int(dead.sum()))
