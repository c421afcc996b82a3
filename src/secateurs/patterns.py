"""Sparsity patterns: which weights a score keeps.

Masks are boolean tensors shaped like the weight, ``True`` where the weight is kept. Weights are always seen
as ``[out_features, in_features]``; an N:M group is M consecutive input weights of one output row, as in
NVIDIA's 2:4 sparse tensor cores and the Wanda/SparseGPT papers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import RecipeError


@dataclass(frozen=True)
class NMPattern:
    """Keep exactly ``n`` weights in every group of ``m`` consecutive input weights."""

    n: int
    m: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(text: str) -> NMPattern | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> NMPattern(2, 4). Raises RecipeError on anything else."""
    if text == "unstructured":
        return None
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not match:
        raise RecipeError(f"pattern {text!r} is not understood: use 'unstructured' or N:M with whole numbers, e.g. 2:4")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise RecipeError(f"pattern {text!r} keeps N={n} of every M={m} weights: give 0 < N < M, e.g. 2:4 or 4:8")
    return NMPattern(n, m)


def prune_count(total: int, sparsity: float) -> int:
    """How many of ``total`` weights to remove at ``sparsity`` (rounded down, as the papers' code does)."""
    return int(total * sparsity)


def lowest_mask(score: torch.Tensor, k: int, dim: int | None = None) -> torch.Tensor:
    """Keep-mask (True = kept) without the ``k`` lowest scores of every slice along ``dim`` (of the whole
    tensor when None). Exactly ``k`` go whatever the ties: equal scores go in position order, as a stable
    sort would take them; a k-th-value threshold costs a fraction of the sort."""
    if dim is None:
        return lowest_mask(score.reshape(1, -1), k, dim=1).view_as(score)
    if k <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    if score.shape[0] == 1 and dim in (1, -1):
        threshold = kth_smallest(score[0], k).reshape(1, 1)
    else:
        threshold = torch.kthvalue(score, k, dim=dim, keepdim=True).values
    below = score < threshold
    ties_needed = k - below.sum(dim, keepdim=True)
    at = score == threshold
    first_ties = at & (at.cumsum(dim) <= ties_needed)
    return ~(below | first_ties)


_BRACKET_FROM = 1 << 16  # entries below which one kthvalue is as fast as the bracket
_SAMPLES = 4096


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.kthvalue(values, k).values`` of a 1-D tensor (the same element), found among a few candidates: a
    kthvalue over a whole layer runs on one core, while counting is vectorised. A strided sample brackets the
    k-th value, one count of the entries below the bracket gives its rank inside it, and kthvalue runs on the
    bracket's entries only (a few percent of them); when the bracket misses (a skewed sample), the full kthvalue.
    """
    total = values.numel()
    if total < _BRACKET_FROM:
        return torch.kthvalue(values, k).values
    sample = values[:: total // _SAMPLES].sort().values
    size = sample.numel()
    # the sample's rank of the k-th value, give or take 5 standard deviations of a sampled quantile
    centre, margin = k / total * size, 5 * (size * 0.25) ** 0.5 + 8
    low, high = int(centre - margin), int(centre + margin)
    inside = torch.ones_like(values, dtype=torch.bool)
    below = 0
    if low > 0:
        inside &= values >= sample[low]
        below = int((values < sample[low]).sum())
    if high < size - 1:
        inside &= values <= sample[high]
    candidates = values[inside]
    if 1 <= k - below <= candidates.numel():
        return torch.kthvalue(candidates, k - below).values
    return torch.kthvalue(values, k).values


def unstructured_mask(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Remove the lowest-scoring weights, ``prune_count(numel, sparsity)`` of the layer in all: compared within
    every row when ``per_row`` (Wanda's comparison group; rows lose equal counts, the first rows one more when
    the count does not divide, so the layer's sparsity is exact at any sparsity), else over the whole layer.

    The count is exact, whatever the ties (equal scores go in position order).
    """
    total = prune_count(score.numel(), sparsity)
    if not per_row:
        return lowest_mask(score, total)
    rows = score.shape[0]
    base, extra = divmod(total, rows)
    mask = lowest_mask(score, base, dim=1)
    if extra:
        mask[:extra] = lowest_mask(score[:extra], base + 1, dim=1)
    return mask


def check_nm_columns(columns: int, pattern: NMPattern) -> None:
    if columns % pattern.m:
        raise RecipeError(
            f"a layer has {columns} input features, not a multiple of M={pattern.m}: "
            f"choose another N:M pattern or leave that layer out with --ignore"
        )


def nm_mask(score: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Keep the ``n`` highest scores in every group of ``m`` consecutive input weights of each row."""
    rows, columns = score.shape
    check_nm_columns(columns, pattern)
    groups = score.reshape(rows, columns // pattern.m, pattern.m)
    # Sort descending, stable: among equal scores the earlier column is kept.
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, order[..., : pattern.n], True)
    return mask.reshape(rows, columns)


def is_nm_sparse(weight: torch.Tensor, pattern: NMPattern) -> bool:
    """True when every group of M consecutive input weights holds at most N non-zeros."""
    rows, columns = weight.shape
    if columns % pattern.m:
        return False
    nonzero = (weight != 0).reshape(rows, columns // pattern.m, pattern.m).sum(-1)
    return bool((nonzero <= pattern.n).all())
