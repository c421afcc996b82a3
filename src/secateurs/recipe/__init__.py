"""What to do to a model: a recipe made of one small configuration per stage, each validated by itself.

``SparseRecipe``: a method (``Magnitude``, ``Wanda``, ``Ria``, ``SparseGPT`` or a registered one) at a sparsity
and pattern, with optional stages: an OBS ``update`` of a score's mask, a layer-wise ``allocation``, a mask
``refine``ment (DSnoT), block tuning (``ebft``), distillation (``distill``) and the ``calibration`` data.
``StructuredRecipe``: a ``Width`` or ``Depth`` cut, with ``ebft``, ``distill`` and ``calibration``.
``None`` switches a stage off. ``load_recipe`` builds either from the dict (or YAML/JSON file) that
``to_dict`` writes, which is also the ``recipe`` of every ``secateurs.json``.

Errors name the field at fault as its path in the recipe (``sparsity``, ``allocation.lam``); the command line
names the flag that sets it instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..allocation import Allocation, allocation_class
from ..checks import check_fraction
from ..data import Calibration
from ..errors import RecipeError
from ..files import read_mapping
from ..methods import (
    CROSS,
    HESSIAN,
    METHODS,
    NORMS,
    UPDATES,
    DSnoT,
    Method,
    ObsUpdate,
    ScoreMethod,
    Wanda,
    method_class,
)
from ..patterns import NMPattern, parse_pattern
from ..structured import STRUCTURED_METHODS, Depth, Width
from ..tuning import Distill, Ebft
from .stages import Resolve, build_stage, single, stage_dict

DEFAULT_SPARSITY = 0.5
REFINEMENTS = {DSnoT.name: DSnoT}


def _choose(choices: dict[str, type], what: str) -> Resolve:
    def resolve(name: str) -> type:
        if name not in choices:
            raise RecipeError(f"unknown {what} {name!r}: choose one of {', '.join(sorted(choices))}")
        return choices[name]

    return resolve


# key -> (how a name becomes a class, the classes the stage may hold)
SPARSE_STAGES: dict[str, tuple[Resolve, tuple[type, ...]]] = {
    "method": (method_class, (Method,)),
    "update": (_choose(UPDATES, "update"), (ObsUpdate,)),
    "allocation": (allocation_class, (Allocation,)),
    "refine": (_choose(REFINEMENTS, "refinement"), (DSnoT,)),
    "ebft": (single(Ebft), (Ebft,)),
    "distill": (single(Distill), (Distill,)),
    "calibration": (single(Calibration), (Calibration,)),
}
STRUCTURED_STAGES: dict[str, tuple[Resolve, tuple[type, ...]]] = {
    "method": (_choose(STRUCTURED_METHODS, "structured method"), (Width, Depth)),
    "ebft": SPARSE_STAGES["ebft"],
    "distill": SPARSE_STAGES["distill"],
    "calibration": SPARSE_STAGES["calibration"],
}


class _Recipe:
    """What both recipes share: stages built from names or dicts, and the dict a recipe file holds."""

    stages: ClassVar[dict[str, tuple[Resolve, tuple[type, ...]]]]

    def _build_stages(self) -> None:
        for key, (resolve, kinds) in self.stages.items():
            object.__setattr__(self, key, build_stage(key, getattr(self, key), resolve, kinds))

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a recipe file holds it (``load_recipe`` reads it back to an equal recipe)."""
        return {f.name: stage_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, kw_only=True)
class SparseRecipe(_Recipe):
    """Sparse weights, the model's shapes unchanged.

    ``sparsity``: the fraction of weights removed from each pruned layer (default 0.5); an N:M ``pattern`` implies
    it (2:4 is 0.5): leave it None or give the same value. ``ignore``: glob patterns on layer names
    (``model.layers.0.mlp.down_proj``, ``*.o_proj``) left dense. ``true_sequential``: each block walked with every
    Linear pruned before the next one sees its input (None: the method's default, on for SparseGPT).
    """

    stages: ClassVar = SPARSE_STAGES
    method: Method = Wanda()
    sparsity: float | None = None
    pattern: str = "unstructured"
    ignore: tuple[str, ...] = ()
    true_sequential: bool | None = None
    update: ObsUpdate | None = None
    allocation: Allocation | None = None
    refine: DSnoT | None = None
    ebft: Ebft | None = None
    distill: Distill | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        self._build_stages()
        if isinstance(self.ignore, str) or not all(isinstance(glob, str) for glob in self.ignore):
            raise RecipeError(f"{{ignore}} {self.ignore!r} must be a list of layer-name globs, e.g. ['*.down_proj']")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if self.true_sequential is not None and not isinstance(self.true_sequential, bool):
            raise RecipeError(f"{{true_sequential}} {self.true_sequential!r} must be true, false or null")
        if self.sparsity is not None:
            check_fraction(self.sparsity, "sparsity")
        nm = parse_pattern(self.pattern)
        if nm is not None and self.sparsity is not None and not math.isclose(self.sparsity, nm.sparsity):
            raise RecipeError(
                f"{{pattern}} {nm} removes {nm.sparsity:g} of the weights but {{sparsity}} {self.sparsity:g} was "
                "given: drop {sparsity} (the pattern implies it) or choose a matching pattern"
            )
        self._check_stages(nm)

    def _check_stages(self, nm: NMPattern | None) -> None:
        scores = isinstance(self.method, ScoreMethod)
        if self.update is not None and not scores:
            raise RecipeError(
                f"{{update}} applies to a score method's mask (magnitude, wanda, ria); {self.method.name} already "
                "updates its weights: drop {update}"
            )
        try:
            self.method.check(nm, self.update is not None)
        except RecipeError as error:
            raise error.within("method") from None
        if self.update is not None:
            try:
                self.update.check_pattern(nm)
            except RecipeError as error:
                raise error.within("update") from None
        if self.refine is not None and (not scores or self.update is not None):
            raise RecipeError(
                "{refine} dsnot swaps weights of a score's mask (magnitude, wanda, ria); it cannot follow an OBS "
                "weight update: drop {refine} or choose a score method"
            )
        if self.allocation is not None:
            self.allocation.check(self.sparsity)

    @property
    def nm_pattern(self) -> NMPattern | None:
        return parse_pattern(self.pattern)

    @property
    def target_sparsity(self) -> float:
        """The mean sparsity of the pruned layers: the pattern's, the allocation's, or ``sparsity``."""
        nm = self.nm_pattern
        if nm is not None:
            return nm.sparsity
        sparsity = DEFAULT_SPARSITY if self.sparsity is None else float(self.sparsity)
        return self.allocation.target(sparsity) if self.allocation is not None else sparsity

    @property
    def sequential(self) -> bool:
        """Whether the walk is true-sequential: as asked, else the method's default."""
        return self.method.sequential if self.true_sequential is None else self.true_sequential

    @property
    def statistics(self) -> str | None:
        """What the walk must gather of each layer's inputs: the method's, or the Hessian for an OBS update."""
        if self.update is not None:
            return HESSIAN
        if self.method.statistics is None and self.refine is not None:
            return NORMS
        return CROSS if self.fits_dense else self.method.statistics

    @property
    def fits_dense(self) -> bool:
        """Whether layers are fitted to the dense model's output (a dense stream walks beside the pruned one)."""
        return getattr(self.method, "fit", "self") == "dense"

    @property
    def needs_calibration(self) -> bool:
        observes = self.allocation is not None and self.allocation.observes
        return self.statistics is not None or observes or self.ebft is not None or self.distill is not None


@dataclass(frozen=True, kw_only=True)
class StructuredRecipe(_Recipe):
    """A smaller dense model: a ``Width`` or ``Depth`` cut, then optionally EBFT (width only: depth leaves no
    pruned block to tune) and distillation, on the calibration windows."""

    stages: ClassVar = STRUCTURED_STAGES
    method: Width | Depth
    ebft: Ebft | None = None
    distill: Distill | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        self._build_stages()
        if isinstance(self.method, Depth) and self.ebft is not None:
            raise RecipeError(
                "{ebft.epochs} tunes pruned blocks; depth pruning deletes whole blocks and tunes none: drop it"
            )

    statistics: ClassVar[str] = "moments"  # every structured score reads calibration activations
    needs_calibration: ClassVar[bool] = True


Recipe = SparseRecipe | StructuredRecipe


def recipe_class(method: Any) -> type[SparseRecipe] | type[StructuredRecipe]:
    """The recipe a method belongs to (given as a name, a dict with a name, or a configuration)."""
    if isinstance(method, dict):
        method = method.get("name")
    name = method if isinstance(method, str) else getattr(method, "name", None)
    if isinstance(name, str) and name not in STRUCTURED_METHODS and name not in METHODS:
        raise RecipeError(
            f"unknown method {name!r}: choose one of {', '.join(sorted(METHODS))} (sparse weights) or "
            f"{', '.join(STRUCTURED_METHODS)} (a smaller dense model)"
        )
    return StructuredRecipe if name in STRUCTURED_METHODS else SparseRecipe


def load_recipe(source: Recipe | dict[str, Any] | str | Path) -> Recipe:
    """A recipe from a dict of its stages (as ``to_dict`` writes them; a stage may be just its name), a YAML or
    JSON file of one, or a ``secateurs.json`` (its ``recipe``): ``load_recipe({"method": "wanda", "sparsity":
    0.5})``."""
    if isinstance(source, (SparseRecipe, StructuredRecipe)):
        return source
    spec = source if isinstance(source, dict) else read_recipe_file(source)
    if "schema_version" in spec and "recipe" in spec:  # a report: the recipe that made it
        spec = spec["recipe"]
    cls = recipe_class(spec.get("method", Wanda.name))
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(spec) - set(known))
    if unknown:
        kind = "structured" if cls is StructuredRecipe else "sparse"
        raise RecipeError(f"{{{unknown[0]}}} is not a setting of a {kind} recipe (its settings: {', '.join(known)})")
    return cls(**spec)


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The dict a YAML or JSON recipe file holds."""
    return read_mapping(path, "recipe file", "'method: wanda'")


__all__ = ["DEFAULT_SPARSITY", "Recipe", "SparseRecipe", "StructuredRecipe", "load_recipe", "recipe_class"]
