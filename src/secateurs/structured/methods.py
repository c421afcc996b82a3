"""The structured methods' settings: ``Width`` removes channels or heads in every block, ``Depth`` removes whole
blocks. Both give a smaller dense model whose config describes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..checks import check_choice, check_fraction, check_positive, check_whole
from ..errors import RecipeError
from ..methods.sparsegpt import DAMPENING
from . import depth, width

WIDTH_TARGETS = ("mlp", "heads")
HEAD_GROUPINGS = ("queries", "kv-groups")


@dataclass(frozen=True, kw_only=True)
class Width:
    """Remove ``ratio`` of every MLP's intermediate channels (``target="mlp"``, kept counts rounded to
    ``multiple``) or of every attention's query heads (``target="heads"``; ``head_grouping`` ``queries`` keeps the
    same number of query heads in every KV group, ``kv-groups`` removes whole groups), scored by ``score``; with
    ``reconstruct`` the projection that reads them is re-fitted by least squares (ridge: ``dampening`` times
    mean(diag E[x x^T]))."""

    name: ClassVar[str] = "width"
    ratio: float
    target: str = "mlp"
    multiple: int = 64
    reconstruct: bool = True
    score: str = "fluctuation"
    head_grouping: str = "queries"
    dampening: float = DAMPENING

    def __post_init__(self) -> None:
        check_fraction(self.ratio, "ratio", "0.25")
        check_choice(self.target, "target", WIDTH_TARGETS)
        check_choice(self.score, "score", width.SCORES)
        check_whole(self.multiple, "multiple", 1, "64")
        check_choice(self.head_grouping, "head_grouping", HEAD_GROUPINGS)
        check_positive(self.dampening, "dampening", "0.01")


@dataclass(frozen=True, kw_only=True)
class Depth:
    """Remove ``remove`` decoder blocks (or ``ratio`` of them), chosen by ``score`` on the first ``search_windows``
    calibration windows (None: all; the perplexity search runs the model's tail once per candidate and window)."""

    name: ClassVar[str] = "depth"
    remove: int | None = None
    ratio: float | None = None
    score: str = "perplexity"
    search_windows: int | None = None

    def __post_init__(self) -> None:
        if (self.remove is None) == (self.ratio is None):
            raise RecipeError("depth pruning needs exactly one of {remove} (layers) or {ratio}: give one")
        if self.remove is not None:
            check_whole(self.remove, "remove", 0, "3")
        if self.ratio is not None:
            check_fraction(self.ratio, "ratio", "0.25")
        if self.search_windows is not None:
            check_whole(self.search_windows, "search_windows", 1, "16")
        check_choice(self.score, "score", depth.SCORES)

    def layers_to_remove(self, total: int) -> int:
        removed = self.remove if self.remove is not None else round(total * float(self.ratio))
        if removed >= total:
            raise RecipeError(
                f"removing {removed} of {total} layers leaves none: give a smaller {{method.remove}} or "
                "{method.ratio}"
            )
        return removed


STRUCTURED_METHODS: dict[str, type[Width] | type[Depth]] = {"width": Width, "depth": Depth}
