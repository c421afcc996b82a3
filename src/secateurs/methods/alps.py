"""ALPS (Meng, Behdin, Wang & Mazumder 2024, "ALPS: Improved Optimization for Highly Sparse One-Shot Pruning for
Large Language Models").

One layer's problem: keep k weights of W [out, in] so that the outputs on the calibration inputs change least,

    min ||X W^T - X B^T||^2 + lambda ||W - B||^2   subject to   B has k non-zeros (or N:M),

solved by ADMM on the split B = D (D carries the sparsity): with H = X^T X + lambda I,

    B <- (W H - V + rho D) (H + rho I)^-1      (every row at once: one eigendecomposition of H per layer)
    D <- the k largest entries of B + V / rho  (per group of M for N:M)
    V <- V + rho (B - D)

with rho raised as the support settles (every 3 iterations, by how many entries of D changed), until it stops
changing. The support found is then fixed and the kept weights re-fitted by preconditioned conjugate gradients
on the same least-squares problem (a few iterations reach the exact solve's error at a fraction of its cost).

Both steps run on H scaled to a unit diagonal (B's entries become |w| sqrt(H_jj), Wanda's score, which is what
the top-k compares), with the paper's settings: lambda = 0.01 mean(diag H), rho from 0.1, 10 PCG iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..checks import check_choice, check_positive, check_whole
from ..patterns import check_nm_columns, nm_mask, unstructured_mask
from .base import HESSIAN, LayerPlan, Method, Solution, check_fit, fitted_drift, register_method

DAMPENING = 0.01  # lambda as a fraction of mean(diag H), as the paper
RHO = 0.1  # the penalty's first value, as the reference code
CHECK_EVERY = 3  # iterations between two looks at the support (and rho updates)
MAX_RHO = 1e6
# where the unstructured top-k compares: the whole layer, as the paper, or each row, as Wanda (rows keep equal
# counts: Wanda's ablations found the per-row comparison better on LLaMA models for its score, which ALPS's is)
COMPARE = ("layer", "row")


def project(values: torch.Tensor, plan: LayerPlan, per_row: bool = False) -> torch.Tensor:
    """Keep-mask of the plan's largest magnitudes: over the whole layer (unstructured, as ALPS's top-k) or within
    each row (``per_row``: every row keeps the same count, as Wanda compares), or the N largest of every M
    consecutive inputs of a row."""
    if plan.pattern is not None:
        return nm_mask(values.abs(), plan.pattern)
    return unstructured_mask(values.abs(), plan.sparsity, per_row=per_row)


def _next_rho(rho: float, changed: int, kept: int, raised: bool) -> tuple[float, bool, str]:
    """The reference's schedule, from how many entries of the support changed since the last look: raise rho
    while the support moves (faster when it moves more); once raised, stop when it no longer moves. A support
    that moves a little before any raise means rho started too high: lower it and start again from the dense
    weights. Returns (rho, raised, what next: "go", "restart" or "stop")."""
    share = changed / max(kept, 1)
    if share > 0.1:
        return rho * 1.3, True, "go"
    if share > 0.005:
        return rho * 1.2, True, "go"
    if changed >= 1:
        return (rho * 1.1, True, "go") if raised else (rho / 5, False, "restart")
    return (rho, True, "stop") if raised else (rho / 5, False, "go")


def admm_step(
    right: torch.Tensor,
    inverse: torch.Tensor,
    sparse: torch.Tensor,
    dual: torch.Tensor,
    rho: float,
    plan: LayerPlan,
    per_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ADMM iteration: B = (T H - V + rho D)(H + rho I)^-1 (``right`` = T H, ``inverse`` = (H + rho I)^-1),
    D = the plan's projection of B + V / rho, V = V + rho (B - D). Returns (B, D, V, D's keep-mask)."""
    weights = (right - dual + rho * sparse) @ inverse
    shifted = weights + dual / rho
    support = project(shifted, plan, per_row)
    sparse = shifted * support
    return weights, sparse, dual + rho * (weights - sparse), support


def admm_support(
    target: torch.Tensor,
    hessian: torch.Tensor,
    plan: LayerPlan,
    rho: float,
    iterations: int,
    right: torch.Tensor | None = None,
    per_row: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ADMM on every row of ``min (B - T) H (B - T)^T``, B restricted to the plan's support (``target`` T
    [out, in], ``hessian`` H [in, in] positive definite). Returns (B's keep-mask, B on it, iterations run).
    ``right``: the normal equations' right-hand side R of ``min B H B^T - 2 B R^T`` when it is not T H (a fit to
    the dense model's output); the iterations still start from T. ``per_row``: ``project``'s."""
    eigenvalues, eigenvectors = torch.linalg.eigh(hessian.double())
    eigenvalues, eigenvectors = eigenvalues.float(), eigenvectors.float()

    def inverse_with(penalty: float) -> torch.Tensor:
        return (eigenvectors / (eigenvalues + penalty)) @ eigenvectors.T  # (H + rho I)^-1, H symmetric

    right = target @ hessian if right is None else right
    first_support = project(target, plan, per_row)
    weights, dual, support = target.clone(), torch.zeros_like(target), first_support
    sparse = target * first_support
    inverse, raised, step = inverse_with(rho), False, 0
    for step in range(1, iterations + 1):
        weights, sparse, dual, new_support = admm_step(right, inverse, sparse, dual, rho, plan, per_row)
        if step % CHECK_EVERY:
            continue
        changed, kept = int((new_support ^ support).sum()), int(new_support.sum())
        support = new_support
        rho, raised, what = _next_rho(rho, changed, kept, raised)
        if what == "stop" or (step >= 10 * CHECK_EVERY and changed < 3e-4 * kept):
            break
        if what == "restart":
            weights, dual, support, sparse = (
                target.clone(),
                torch.zeros_like(target),
                first_support,
                target * first_support,
            )
        rho = min(rho, MAX_RHO)
        inverse = inverse_with(rho)
    support = project(weights, plan, per_row)
    return support, weights * support, step


def pcg_refit(
    start: torch.Tensor,
    target: torch.Tensor,
    hessian: torch.Tensor,
    support: torch.Tensor,
    iterations: int,
    right: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conjugate gradients on every row of ``min (B - T) H (B - T)^T`` with B's zeros fixed by ``support``, from
    ``start``; H has a unit diagonal, so the Jacobi preconditioner is the identity. ``right``: as admm_support's."""
    weights = start * support
    if right is None:
        residual = (target - weights) @ hessian * support
    else:
        residual = (right - weights @ hessian) * support
    direction = residual.clone()
    norm = (residual * residual).sum(1, keepdim=True)
    for _ in range(iterations):
        curved = direction @ hessian * support
        step = norm / (direction * curved).sum(1, keepdim=True).clamp_min(1e-30)
        weights += step * direction
        residual -= step * curved
        new_norm = (residual * residual).sum(1, keepdim=True)
        direction = residual + (new_norm / norm.clamp_min(1e-30)) * direction
        norm = new_norm
    return weights * support


def alps_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    plan: LayerPlan,
    settings: Alps | None = None,
    drift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ALPS on ``weight`` [out, in] given the layer Hessian [in, in], with ``settings``' dampening, rho, iterations
    and comparison (None: the paper's). Returns (pruned weight, keep-mask, dead inputs: features that never fired,
    whose weights are zeroed). ``drift`` D [in, in]: fit the dense model's output instead of the layer's own
    (``CrossObserver``), min ||X_dense W^T - X B^T||: B H = W (H + D)."""
    settings = settings or Alps()
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += settings.dampening * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    scale = torch.sqrt(torch.diag(H))
    unit = H / scale.unsqueeze(0) / scale.unsqueeze(1)  # unit diagonal: B = W * scale compares as Wanda's score
    target = W * scale
    # in the unit-diagonal variables B' = B * scale, B H = W H + W D reads B' unit = T unit + (W D) / scale
    right = None if drift is None else target @ unit + (weight.detach().float() @ drift) / scale
    per_row = settings.compare == "row"
    support, weights, _ = admm_support(target, unit, plan, settings.rho, settings.iterations, right, per_row)
    weights = pcg_refit(weights, target, unit, support, settings.pcg_iterations, right)
    return weights / scale, support, int(dead.sum())


@register_method
@dataclass(frozen=True)
class Alps(Method):
    """ADMM chooses the support of the layer's least-squares problem, conjugate gradients re-fit the kept
    weights on it."""

    name: ClassVar[str] = "alps"
    statistics: ClassVar[str | None] = HESSIAN
    sequential: ClassVar[bool] = True

    dampening: float = DAMPENING
    rho: float = RHO
    iterations: int = 300
    pcg_iterations: int = 10
    fit: str = "self"  # each layer's own output on the pruned model's inputs, or the dense model's ("dense")
    mix: float | None = None  # with fit dense: how far toward the dense model's output (None: DEFAULT_MIX)
    compare: str = "layer"  # the unstructured top-k: over the whole layer (the paper's) or within each row

    def __post_init__(self) -> None:
        check_positive(self.dampening, "dampening", "0.01")
        check_positive(self.rho, "rho", "0.1")
        check_whole(self.iterations, "iterations", CHECK_EVERY, "300")
        check_whole(self.pcg_iterations, "pcg_iterations", 0, "10")
        check_choice(self.compare, "compare", COMPARE)
        object.__setattr__(self, "mix", check_fit(self.fit, self.mix))  # frozen: the share used, recorded

    def prune(self, weight: torch.Tensor, statistics: Any, plan: LayerPlan) -> Solution:
        if plan.pattern is not None:
            check_nm_columns(weight.shape[1], plan.pattern)
        hessian = statistics.hessian.to(weight.device)
        drift = fitted_drift(statistics, self.fit, self.mix, weight.device)
        pruned, mask, dead = alps_prune(weight, hessian, plan, self, drift)
        return Solution(mask, pruned, None, dead)
