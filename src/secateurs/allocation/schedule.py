"""A linear ramp of sparsity from the first decoder block to the last, both ends exact."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..checks import check_fraction
from ..errors import RecipeError
from ..models.discover import Target
from ..report.schema import AllocationRecord
from .base import Allocation, Observe


def schedule_sparsities(first: float, last: float, blocks: int) -> list[float]:
    if blocks == 1:
        return [first]
    return [first + (last - first) * i / (blocks - 1) for i in range(blocks)]


def parse_schedule(text: str) -> tuple[float, float]:
    """``FIRST:LAST`` -> (first, last)."""
    try:
        first, last = (float(part) for part in str(text).split(":"))
    except ValueError:
        raise RecipeError(f"{{allocation.first}}: schedule {text!r} is not FIRST:LAST, e.g. 0.4:0.6") from None
    return first, last


@dataclass(frozen=True, kw_only=True)
class Schedule(Allocation):
    name: ClassVar[str] = "schedule"
    first: float
    last: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.first, "first", "0.4")
        check_fraction(self.last, "last", "0.6")

    def check(self, sparsity: float | None) -> None:
        if sparsity is not None:
            raise RecipeError("give either {sparsity} or {allocation.first}: the schedule sets the sparsity")

    def target(self, sparsity: float) -> float:
        return (self.first + self.last) / 2

    def block_sparsities(
        self, by_block: list[list[Target]], target: float, observe: Observe, record: AllocationRecord
    ) -> list[float]:
        return schedule_sparsities(self.first, self.last, len(by_block))
