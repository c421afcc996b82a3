"""OWL, outlier-weighed layerwise sparsity (Yin et al. 2024): blocks with more outliers (Wanda scores above M
times their block's mean) keep more weights; densities are the outlier ratios scaled to a span of 2 lambda and
shifted so that the parameter-weighted mean sparsity is the target. The ratios come from one observing pass over
the dense model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..checks import check_positive
from ..errors import RecipeError
from ..methods import wanda
from ..models.discover import Target
from ..observers import InputNormObserver
from ..report.schema import AllocationRecord
from .base import Allocation, Observe

OWL_M = 5.0  # the OWL paper's outlier threshold for LLaMA
OWL_LAMBDA = 0.08  # and its span of layer sparsities (+- lambda around the target)


def outlier_ratio(outliers: int, total: int) -> float:
    return outliers / max(total, 1)


def owl_sparsities(
    outlier_ratios: list[float], sizes: list[int], target: float, span: float = OWL_LAMBDA
) -> list[float]:
    """Per-block sparsities from per-block outlier ratios (OWL): more outliers, less sparsity, within
    target +- ``span``, parameter-weighted mean exactly ``target`` (before rounding to whole weights)."""
    low, high = min(outlier_ratios), max(outlier_ratios)
    if high == low:
        return [target] * len(outlier_ratios)
    density = [(r - low) / (high - low) * 2 * span for r in outlier_ratios]
    total = sum(sizes)
    shift = (1 - target) - sum(d * n for d, n in zip(density, sizes, strict=True)) / total
    sparsities = [1 - (d + shift) for d in density]
    if min(sparsities) < 0 or max(sparsities) >= 1:
        raise RecipeError(
            f"OWL with lambda {span} around sparsity {target} gives a block sparsity outside [0, 1): "
            "lower {allocation.lam}"
        )
    return sparsities


class OutlierCounter:
    """The walk's solver for OWL: each Linear's Wanda scores, scored while its block's weights are at hand, and
    each block's outlier ratio once its last Linear is seen."""

    def __init__(self, m: float) -> None:
        self.m = m
        self.ratios: dict[str, float] = {}
        self.block: str | None = None
        self.scores: list[torch.Tensor] = []

    def observer(self, target: Target) -> InputNormObserver:
        return InputNormObserver(target.in_features, target.weight().device)

    def solve(self, target: Target, observer: InputNormObserver | None) -> None:
        block = block_of(target.name)
        if block != self.block:
            self.finish_block()
            self.block, self.scores = block, []
        if observer is not None and observer.tokens:
            self.scores.append(wanda.score(target.weight().float(), observer.sum_squares))

    def finish_block(self) -> None:
        if self.block is None:
            return
        total = sum(score.numel() for score in self.scores)
        mean = sum(float(score.sum()) for score in self.scores) / max(total, 1)
        outliers = sum(int((score > self.m * mean).sum()) for score in self.scores)
        self.ratios[self.block] = outlier_ratio(outliers, total)


def block_of(name: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> ``model.layers.3``: the block a target belongs to."""
    parts = name.split(".")
    index = next(i for i, part in enumerate(parts) if part.isdigit())
    return ".".join(parts[: index + 1])


@dataclass(frozen=True, kw_only=True)
class Owl(Allocation):
    """``m``: the outlier threshold M; ``lam``: the span of block sparsities, target +- lambda."""

    name: ClassVar[str] = "owl"
    observes: ClassVar[bool] = True
    m: float = OWL_M
    lam: float = OWL_LAMBDA

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self.m, "m", "5")
        check_positive(self.lam, "lam", "0.08")

    def block_sparsities(
        self, by_block: list[list[Target]], target: float, observe: Observe, record: AllocationRecord
    ) -> list[float]:
        counter = OutlierCounter(self.m)
        observe(counter)
        counter.finish_block()
        ratios = [_ratio_of(counter.ratios, targets) for targets in by_block]
        sizes = [sum(t.weight().numel() for t in targets) for targets in by_block]
        record.outlier_ratios, record.owl_m, record.owl_lambda = ratios, self.m, self.lam
        return owl_sparsities(ratios, sizes, target, self.lam)


def _ratio_of(ratios: dict[str, Any], targets: list[Target]) -> float:
    return ratios.get(block_of(targets[0].name), 0.0) if targets else 0.0
