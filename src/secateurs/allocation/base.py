"""What every allocation shares: the N:M choice, and the two ways to give sparsities (per block, per layer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import RecipeError
from ..models.discover import Target
from ..patterns import NMPattern
from ..report.schema import AllocationRecord

NM_CHOICES = ("skip", "mixed")
# observe(solver): an observe-only walk of the dense model; solver.observer(target) makes each Linear's
# statistics and solver.solve(target, observer) reads them, block by block (see secateurs.engine)
Observe = Callable[[Any], None]


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """``nm``: with an N:M pattern, keep the pattern in every layer (``skip`` the allocation) or give each layer
    the N:M closest to its allocated sparsity (``mixed``)."""

    name: ClassVar[str]
    observes: ClassVar[bool] = False  # measures the dense model on the calibration data first (OWL)
    nm: str = "skip"

    def __post_init__(self) -> None:
        if self.nm not in NM_CHOICES:
            raise RecipeError(f"{{nm}} {self.nm!r} is not known: choose skip or mixed")

    def check(self, sparsity: float | None) -> None:
        """Refuse a recipe sparsity this allocation cannot go with."""

    def target(self, sparsity: float) -> float:
        """The recipe's mean sparsity under this allocation (a schedule sets its own)."""
        return sparsity

    def block_sparsities(
        self, by_block: list[list[Target]], target: float, observe: Observe, record: AllocationRecord
    ) -> list[float] | None:
        """One sparsity per block, or None when ``layer_sparsity`` decides per layer."""
        return None

    def layer_sparsity(self, name: str, target: float) -> float:
        return target


def mixed_nm(pattern: NMPattern, sparsity: float) -> NMPattern:
    """The N:M pattern with the same M closest to ``sparsity`` (OWL's per-layer N:M)."""
    n = min(pattern.m - 1, max(1, round(pattern.m * (1 - sparsity))))
    return NMPattern(n, pattern.m)
