"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

Columns are visited left to right in blocks of ``blocksize``. Within a block the mask is chosen adaptively
from w^2 / [H^-1]_jj^2 (OBS saliency), over the whole block for unstructured sparsity or per M columns for
N:M; each pruned column's error is spread over the columns not yet visited through the Cholesky factor of
H^-1 (the OBS update), lazily: inside the block first, then once for all later columns.

The same sweep serves the Wanda paper's weight-update ablations (its Section 5): a fixed ``mask`` (chosen
once, "sequential"), or another ``saliency`` re-evaluated on the updated weights every block ("iterative").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..checks import check_positive, check_whole
from ..errors import NumericalError, RecipeError
from ..patterns import NMPattern, check_nm_columns, lowest_mask
from .base import HESSIAN, LayerPlan, Method, Solution, check_fit, fitted_drift, register_method

BLOCKSIZE = 128  # columns per lazy batch of the OBS sweep, as the paper
DAMPENING = 0.01  # lambda, the fraction of mean(diag H) added to H's diagonal, as the paper

# saliency(current weights of some columns [out, k], their [H^-1]_jj [k], their columns in the layer) -> importance,
# higher is kept.
Saliency = Callable[[torch.Tensor, torch.Tensor, slice], torch.Tensor]


def obs_saliency(weights: torch.Tensor, hinv_diagonal: torch.Tensor, columns: slice) -> torch.Tensor:
    """The OBS error of removing each weight, w^2 / [H^-1]_jj^2 (SparseGPT's mask selection)."""
    return weights**2 / hinv_diagonal.unsqueeze(0) ** 2


@dataclass
class SparseGPTResult:
    weight: torch.Tensor  # pruned and updated, float32, [out, in]
    mask: torch.Tensor  # True where a weight is kept, [out, in]
    dampening: float  # the fraction of mean(diag H) finally added (grown when H was not positive definite)
    dead_inputs: int  # input features that never fired (zero Hessian diagonal): their weights are zeroed


def inverse_hessian_factor(hessian: torch.Tensor, dampening: float, retries: int = 6) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + lambda mean(diag H) I)^-1; lambda grows tenfold until H is positive
    definite (never NaN).

    For a positive semi-definite H every Cholesky pivot of H + d I is at least sqrt(d); a smaller pivot means
    H itself is indefinite (or so ill-conditioned that the update would be noise), so d is grown.
    """
    mean_diagonal = torch.mean(torch.diag(hessian)).clamp_min(1e-8)
    identity = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for attempt in range(retries + 1):
        fraction = dampening * 10**attempt
        added = fraction * mean_diagonal
        factor, info = torch.linalg.cholesky_ex(hessian + added * identity)
        if int(info) == 0 and torch.diag(factor).min() ** 2 >= 0.5 * added:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                return upper, fraction
    raise NumericalError(
        f"a layer's Hessian (X X^T of its calibration inputs) is not positive definite even with dampening "
        f"{fraction:g} x mean(diag H) (from {dampening:g}, grown tenfold {retries} times): its inputs hold NaN, Inf "
        "or huge values; check the model's weights and the calibration text, or use another method for this layer"
    )


def shift_to_dense(weight: torch.Tensor, factor: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
    """Where the sweep starts for a fit to the dense model's output (``drift`` D, ``CrossObserver``): that output's
    least-squares fit from the layer's own inputs, W + (W D)(H + lambda I)^-1, with ``factor`` U the sweep's own
    (U^T U = (H + lambda I)^-1). The OBS step reads H only, never the target, so the unchanged sweep from this
    start is the exact sequential OBS of min ||X_dense W^T - X B^T||."""
    return weight + ((weight @ drift) @ factor.t()) @ factor


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
    settings: ObsSettings | None = None,
    mask: torch.Tensor | None = None,
    saliency: Saliency = obs_saliency,
    drift: torch.Tensor | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` [out, in] given the layer Hessian ``H = 2 X^T X / n`` [in, in].

    ``mask`` (True = keep), when given, fixes which weights go and only the OBS update is applied;
    otherwise the mask is chosen by ``saliency`` on the current (already updated) weights, per column block
    (unstructured: exactly ``int(out * in * sparsity)`` weights in all) or per M columns (N:M). ``drift``: the
    sweep starts from the fit to the dense model's output (``shift_to_dense``). ``settings``: the block size and
    dampening (default the paper's).
    """
    settings = settings or ObsSettings()
    blocksize, dampening = settings.blocksize, settings.dampening
    W = weight.detach().clone().float()
    H = hessian.detach().clone().float()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1  # as the reference: an input that never fires has no curvature; its weights go
    Hinv, used = inverse_hessian_factor(H, dampening)
    del H
    if drift is not None:
        W = shift_to_dense(W, Hinv, drift.float())
    W[:, dead] = 0
    counts = _block_prune_counts(rows, columns, blocksize, sparsity)
    kept = torch.ones_like(W, dtype=torch.bool)

    step = _sub_block(pattern)
    for number, start in enumerate(range(0, columns, blocksize)):
        end = min(start + blocksize, columns)
        W1 = W[:, start:end].clone()
        Hinv1 = Hinv[start:end, start:end]
        diagonal = torch.diag(Hinv1)
        errors = torch.zeros_like(W1)
        if mask is not None:
            keep = mask[:, start:end].clone()
        elif pattern is None:
            keep = lowest_mask(saliency(W1, diagonal, slice(start, end)), counts[number])
        else:
            keep = torch.ones_like(W1, dtype=torch.bool)
        # The same lazy batching once more inside the block: columns are swept one by one within sub-blocks
        # of ``step``, each sub-block's errors reaching the rest of the block in one product.
        for a in range(0, end - start, step):
            b = min(a + step, end - start)
            if mask is None and pattern is not None:
                _choose_nm(keep, W1, diagonal, slice(a, b), start, pattern, saliency)
            _sweep(W1, Hinv1, keep, errors, a, b)
        W1.mul_(keep)  # pruned entries are exactly zero (the update leaves rounding residue there)
        W[:, start:end] = W1
        kept[:, start:end] = keep
        W[:, end:] -= errors @ Hinv[start:end, end:]
    return SparseGPTResult(W, kept, used, int(dead.sum()))


def _choose_nm(
    keep: torch.Tensor,
    W1: torch.Tensor,
    diagonal: torch.Tensor,
    columns: slice,
    start: int,
    pattern: NMPattern,
    saliency: Saliency,
) -> None:
    """N:M inside the sub-block ``columns`` of the block starting at column ``start``: each group of M drops its
    M - N lowest saliencies, measured on the weights as the sweep has updated them so far."""
    m = pattern.m
    for g in range(columns.start, columns.stop, m):
        group = saliency(W1[:, g : g + m], diagonal[g : g + m], slice(start + g, start + g + m))
        dropped = torch.sort(group, dim=1, stable=True).indices[:, : m - pattern.n]
        keep[:, g : g + m].scatter_(1, dropped, False)


def _sweep(W1: torch.Tensor, Hinv1: torch.Tensor, keep: torch.Tensor, errors: torch.Tensor, a: int, b: int) -> None:
    """Columns a..b of the block one by one (OBS), then their errors onto the block's later columns at once."""
    diagonal = torch.diag(Hinv1)
    # Column-major copies: each step below reads and updates contiguous rows.
    sub = W1[:, a:b].t().contiguous()
    removed = (~keep[:, a:b]).t().contiguous()
    sub_errors = torch.empty_like(sub)
    for i in range(b - a):
        # OBS: removing w costs w / [H^-1]_ii along row i of the factor; the column itself ends at 0.
        error = sub[i] * removed[i] / diagonal[a + i]
        sub[i:].addr_(Hinv1[a + i, a:b][i:], error, alpha=-1)
        sub_errors[i] = error
    W1[:, a:b] = sub.t()
    errors[:, a:b] = sub_errors.t()
    W1[:, b:] -= errors[:, a:b] @ Hinv1[a:b, b:]


def _sub_block(pattern: NMPattern | None, columns: int = 16) -> int:
    """Columns swept one by one between two batched updates: about ``columns``, whole N:M groups."""
    m = 1 if pattern is None else pattern.m
    return m * max(1, -(-columns // m))


@dataclass(frozen=True)
class ObsSettings:
    """The OBS sweep's settings, shared by SparseGPT and the OBS updates of a score's mask (``update``)."""

    blocksize: int = BLOCKSIZE
    dampening: float = DAMPENING

    def __post_init__(self) -> None:
        check_whole(self.blocksize, "blocksize", 1, "128")
        check_positive(self.dampening, "dampening", "0.01")

    def check_pattern(self, pattern: NMPattern | None) -> None:
        if pattern is not None and self.blocksize % pattern.m:
            raise RecipeError(
                f"{{blocksize}} {self.blocksize} splits the groups of pattern {pattern}: give a multiple of "
                f"M={pattern.m}, e.g. 128"
            )

    def sweep(
        self, weight: torch.Tensor, statistics: Any, plan: LayerPlan, drift: torch.Tensor | None = None, **choice: Any
    ) -> Solution:
        """``sparsegpt_prune`` on the layer's Hessian at the plan's sparsity and pattern; ``choice``: a fixed
        ``mask`` or a ``saliency`` (default SparseGPT's own); ``drift``: fit the dense model's output."""
        if plan.pattern is not None:
            check_nm_columns(weight.shape[1], plan.pattern)
        hessian = statistics.hessian.to(weight.device)
        result = sparsegpt_prune(weight, hessian, plan.sparsity, plan.pattern, self, drift=drift, **choice)
        raised = result.dampening if result.dampening != self.dampening else None
        return Solution(result.mask, result.weight, raised, result.dead_inputs)


@register_method
@dataclass(frozen=True)
class SparseGPT(ObsSettings, Method):
    """The OBS saliency chooses the mask per column block (or per M columns) and the kept weights are updated."""

    name: ClassVar[str] = "sparsegpt"
    statistics: ClassVar[str | None] = HESSIAN
    sequential: ClassVar[bool] = True

    fit: str = "self"  # each layer's own output on the pruned model's inputs, or the dense model's ("dense")
    mix: float | None = None  # with fit dense: how far toward the dense model's output (None: DEFAULT_MIX)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "mix", check_fit(self.fit, self.mix))  # frozen: the share used, recorded

    def check(self, pattern: NMPattern | None, updated: bool) -> None:
        self.check_pattern(pattern)

    def prune(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan) -> Solution:
        return self.sweep(weight, statistics, plan, fitted_drift(statistics, self.fit, self.mix, weight.device))
