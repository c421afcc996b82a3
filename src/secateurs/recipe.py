"""What to do: method, sparsity, pattern and which layers; validated once, here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import RecipeError
from .methods import get_method
from .patterns import NMPattern, parse_pattern

DEFAULT_SPARSITY = 0.5


@dataclass
class Recipe:
    """A pruning recipe.

    ``sparsity`` is the fraction of weights removed from each pruned layer. An N:M ``pattern`` implies it
    (2:4 is 0.5); leave it None or give the same value. ``ignore`` holds glob patterns on layer names
    (``model.layers.0.mlp.down_proj``, ``*.o_proj``) left dense. ``true_sequential`` walks each block in
    one pass with every Linear pruned before the next one sees its input.
    """

    method: str = "wanda"
    sparsity: float | None = None
    pattern: str = "unstructured"
    ignore: list[str] = field(default_factory=list)
    true_sequential: bool = False

    def __post_init__(self) -> None:
        get_method(self.method)
        nm = parse_pattern(self.pattern)
        if self.sparsity is not None:
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
                raise RecipeError(f"sparsity {self.sparsity!r} is not a number: give a fraction such as 0.5")
            if not (math.isfinite(self.sparsity) and 0 <= self.sparsity < 1):
                raise RecipeError(
                    f"sparsity {self.sparsity} is outside [0, 1): give the fraction of weights to remove, e.g. 0.5"
                )
        if nm is not None and self.sparsity is not None and not math.isclose(self.sparsity, nm.sparsity):
            raise RecipeError(
                f"pattern {nm} removes {nm.sparsity:g} of the weights but sparsity {self.sparsity:g} was "
                "given: drop --sparsity (the pattern implies it) or choose a matching pattern"
            )
        self.ignore = list(self.ignore)

    @property
    def nm_pattern(self) -> NMPattern | None:
        return parse_pattern(self.pattern)

    @property
    def target_sparsity(self) -> float:
        nm = self.nm_pattern
        if nm is not None:
            return nm.sparsity
        return DEFAULT_SPARSITY if self.sparsity is None else float(self.sparsity)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparsity": self.target_sparsity}
