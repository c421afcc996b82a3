"""What to do: method, sparsity, pattern and which layers; validated once, here."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .allocation import OWL_LAMBDA, OWL_M, parse_schedule, read_allocation_file
from .distill import DEFAULT_LR as DISTILL_LR
from .ebft import DEFAULT_LR as EBFT_LR
from .engine import TUNE_TARGETS
from .errors import RecipeError
from .methods import HESSIAN, NORMS, UPDATES, get_method, ria
from .methods.dsnot import UPDATE_THRESHOLD
from .patterns import NMPattern, parse_pattern

DEFAULT_SPARSITY = 0.5


def _whole(value: object, least: int) -> bool:
    """A whole number (an int, not a bool, which Python counts as one) of at least ``least``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check_training(flag: str, epochs: object, lr: object, off: str, epochs_example: int, lr_example: str) -> None:
    """The epochs and learning rate of a tuning stage (``--ebft-*``, ``--distill-*``): one-line errors naming
    ``flag``'s options."""
    if not _whole(epochs, 0):
        raise RecipeError(f"{flag}-epochs {epochs!r} must be a whole number >= 0 (0: {off}), e.g. {epochs_example}")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise RecipeError(f"{flag}-lr {lr!r} must be a positive learning rate, e.g. {lr_example}")


def _check_tuning(recipe: Recipe | StructuredRecipe) -> None:
    """The settings both recipes share: EBFT's and the distillation's."""
    _check_training("--ebft", recipe.ebft_epochs, recipe.ebft_lr, "no tuning", 4, "1e-3")
    if recipe.ebft_target not in TUNE_TARGETS:
        raise RecipeError(f"--ebft-target {recipe.ebft_target!r} is not known: choose {' or '.join(TUNE_TARGETS)}")
    _check_training("--distill", recipe.distill_epochs, recipe.distill_lr, "no distillation", 1, "1e-4")


@dataclass
class Recipe:
    """A pruning recipe.

    ``sparsity`` is the fraction of weights removed from each pruned layer. An N:M ``pattern`` implies it
    (2:4 is 0.5); leave it None or give the same value. ``ignore`` holds glob patterns on layer names
    (``model.layers.0.mlp.down_proj``, ``*.o_proj``) left dense. ``true_sequential`` walks each block in
    one pass with every Linear pruned before the next one sees its input (None: the method's default, on
    for SparseGPT). ``update`` adds SparseGPT's OBS weight update to a score's mask (``obs-seq``: the mask
    fixed first; ``obs-iter``: re-chosen every ``blocksize`` columns). ``blocksize`` and ``dampening``
    (lambda, a fraction of mean(diag H)) are SparseGPT's. ``ebft_epochs`` > 0 tunes each pruned block's kept
    weights toward the dense block's output (``secateurs.ebft``), at Adam learning rate ``ebft_lr``; with
    ``ebft_target="model"`` toward the dense model's activation after the block. ``distill_epochs`` > 0 then
    tunes the whole pruned model's kept weights toward the dense model's next-token distributions
    (``secateurs.distill``), at Adam learning rate ``distill_lr``.
    """

    method: str = "wanda"
    sparsity: float | None = None
    pattern: str = "unstructured"
    ignore: list[str] = field(default_factory=list)
    true_sequential: bool | None = None
    update: str | None = None
    blocksize: int = 128
    dampening: float = 0.01
    allocation: str = "uniform"
    schedule: str | None = None
    owl_m: float = OWL_M
    owl_lambda: float = OWL_LAMBDA
    nm_allocation: str = "skip"
    variant: bool = False
    ria_alpha: float = ria.DEFAULT_ALPHA
    refine: str | None = None
    refine_skip: list[str] = field(default_factory=lambda: ["*mlp*"])
    refine_threshold: float = UPDATE_THRESHOLD
    ebft_epochs: int = 0
    ebft_lr: float = EBFT_LR
    ebft_target: str = "block"
    distill_epochs: int = 0
    distill_lr: float = DISTILL_LR

    def __post_init__(self) -> None:
        method = get_method(self.method)
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
        if self.update is not None:
            if self.update not in UPDATES:
                raise RecipeError(f"update {self.update!r} is not known: choose one of {', '.join(UPDATES)}")
            if method.score is None:
                raise RecipeError(
                    f"--update applies to a score method's mask (magnitude, wanda); {self.method} already "
                    "updates its weights: drop --update"
                )
        if not _whole(self.blocksize, 1):
            raise RecipeError(f"blocksize {self.blocksize!r} must be a positive whole number of columns, e.g. 128")
        if not (isinstance(self.dampening, (int, float)) and math.isfinite(self.dampening) and self.dampening > 0):
            raise RecipeError(f"dampening {self.dampening!r} must be a positive fraction of mean(diag H), e.g. 0.01")
        self._check_allocation(nm)
        if self.variant and (self.method != "wanda" or nm is not None or self.update is not None):
            raise RecipeError("--variant is Wanda's per-row threshold search: it needs --method wanda, unstructured")
        if self.refine is not None:
            if self.refine != "dsnot":
                raise RecipeError(f"refinement {self.refine!r} is not known: choose dsnot")
            if method.score is None or self.update is not None:
                raise RecipeError(
                    "--refine dsnot swaps weights of a score's mask (magnitude, wanda, ria); it cannot follow "
                    "an OBS weight update: drop --refine or choose a score method"
                )
        if not (isinstance(self.refine_threshold, (int, float)) and self.refine_threshold >= 0):
            raise RecipeError(f"refine threshold {self.refine_threshold!r} must be a number >= 0, e.g. 0.1")
        _check_tuning(self)
        if nm is not None and self.blocksize % nm.m:
            raise RecipeError(
                f"blocksize {self.blocksize} splits the groups of pattern {nm}: give a multiple of M={nm.m}, e.g. 128"
            )
        self.ignore = list(self.ignore)

    def _check_allocation(self, nm: NMPattern | None) -> None:
        if self.allocation == "schedule":
            if self.schedule is None:
                raise RecipeError("--allocation schedule needs --schedule FIRST:LAST, e.g. 0.4:0.6")
            if self.sparsity is not None:
                raise RecipeError("give either --sparsity or --schedule FIRST:LAST: the schedule sets the sparsity")
            parse_schedule(self.schedule)
        elif self.schedule is not None:
            raise RecipeError("--schedule goes with --allocation schedule")
        elif self.allocation not in ("uniform", "owl"):
            path = Path(self.allocation)
            if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
                raise RecipeError(
                    f"allocation {self.allocation!r} is neither uniform, owl, schedule nor a YAML/JSON file of "
                    "layer-name globs and sparsities"
                )
            read_allocation_file(path)
        if self.nm_allocation not in ("skip", "mixed"):
            raise RecipeError(f"--nm-allocation {self.nm_allocation!r}: choose skip or mixed")
        for name, value in (("owl_m", self.owl_m), ("owl_lambda", self.owl_lambda)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise RecipeError(f"{name} {value!r} must be a positive number")

    @property
    def nm_pattern(self) -> NMPattern | None:
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        return (
            self.statistics is not None or self.allocation == "owl" or self.ebft_epochs > 0 or self.distill_epochs > 0
        )

    @property
    def target_sparsity(self) -> float:
        nm = self.nm_pattern
        if nm is not None:
            return nm.sparsity
        if self.schedule is not None:
            first, last = parse_schedule(self.schedule)
            return (first + last) / 2
        return DEFAULT_SPARSITY if self.sparsity is None else float(self.sparsity)

    @property
    def sequential(self) -> bool:
        """Whether the walk is true-sequential: as asked, else the method's default."""
        return get_method(self.method).sequential if self.true_sequential is None else bool(self.true_sequential)

    @property
    def statistics(self) -> str | None:
        """What the walk must gather of each layer's inputs: the method's, or the Hessian for an OBS update."""
        if self.update is not None:
            return HESSIAN
        statistics = get_method(self.method).statistics
        return NORMS if statistics is None and self.refine is not None else statistics

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparsity": self.target_sparsity, "true_sequential": self.sequential}


STRUCTURED_METHODS = ("width", "depth")
WIDTH_TARGETS = ("mlp", "heads")
WIDTH_SCORES = ("fluctuation", "wanda", "obs")
DEPTH_SCORES = ("perplexity", "block-influence")
HEAD_GROUPINGS = ("queries", "kv-groups")


@dataclass
class StructuredRecipe:
    """Structured pruning: a smaller dense model.

    ``width``: remove ``ratio`` of every MLP's intermediate channels (``target="mlp"``, kept counts rounded to
    ``multiple``) or of every attention's query heads (``target="heads"``; ``head_grouping`` ``queries`` keeps
    the same number of query heads in every KV group, ``kv-groups`` removes whole groups), scored by ``score``
    and, with ``reconstruct``, the next projection re-fitted by least squares; ``ebft_epochs`` > 0 then tunes
    the cut block's weights toward the dense block's output (or, ``ebft_target="model"``, the dense model's
    activation after the block; ``secateurs.ebft``). ``depth``: remove ``remove`` decoder blocks (or ``ratio``
    of them), chosen by ``score`` on the first ``search_windows`` calibration windows (all by default: the
    perplexity search runs the model's tail once per candidate and window). Either way, ``distill_epochs`` > 0
    then tunes the smaller model's block weights toward the dense model's predictions (``secateurs.distill``),
    on every calibration window.
    """

    method: str = "width"
    target: str = "mlp"
    ratio: float | None = None
    remove: int | None = None
    multiple: int = 64
    reconstruct: bool = True
    score: str | None = None
    head_grouping: str = "queries"
    allocation: str = "uniform"
    dampening: float = 0.01
    ebft_epochs: int = 0
    ebft_lr: float = EBFT_LR
    ebft_target: str = "block"
    distill_epochs: int = 0
    distill_lr: float = DISTILL_LR
    search_windows: int | None = None

    def __post_init__(self) -> None:
        _check_tuning(self)
        if self.method not in STRUCTURED_METHODS:
            raise RecipeError(f"structured method {self.method!r} is not known: choose width or depth")
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)):
                raise RecipeError(f"ratio {self.ratio!r} is not a number: give a fraction such as 0.25")
            if not (math.isfinite(self.ratio) and 0 <= self.ratio < 1):
                raise RecipeError(f"ratio {self.ratio} is outside [0, 1): give the fraction to remove, e.g. 0.25")
        if self.method == "width":
            if self.target not in WIDTH_TARGETS:
                raise RecipeError(f"target {self.target!r} is not known: choose mlp or heads")
            if self.ratio is None:
                raise RecipeError("width pruning needs --ratio, the fraction of channels or heads to remove")
            if self.remove is not None:
                raise RecipeError("--remove counts decoder layers: it goes with --method depth")
            if self.search_windows is not None:
                raise RecipeError("--search-windows limits the depth search: it goes with --method depth")
            self.score = self.score or "fluctuation"
            if self.score not in WIDTH_SCORES:
                raise RecipeError(f"score {self.score!r} is not a width score: choose {', '.join(WIDTH_SCORES)}")
            if not _whole(self.multiple, 1):
                raise RecipeError(f"multiple {self.multiple!r} must be a positive whole number, e.g. 64")
            if self.head_grouping not in HEAD_GROUPINGS:
                raise RecipeError(f"head grouping {self.head_grouping!r}: choose {', '.join(HEAD_GROUPINGS)}")
            if self.allocation != "uniform":
                raise RecipeError(
                    f"allocation {self.allocation!r} would give layers different sizes, which the configs of "
                    "Llama, Mistral, Qwen, Gemma, Phi3, OPT, GPT-2 and GPT-NeoX cannot express (one intermediate "
                    "size and head count for all layers): use --allocation uniform"
                )
        else:
            if (self.remove is None) == (self.ratio is None):
                raise RecipeError("depth pruning needs exactly one of --remove K (layers) or --ratio")
            if self.remove is not None and not _whole(self.remove, 0):
                raise RecipeError(f"--remove {self.remove!r} must be a whole number of layers, e.g. 3")
            if self.search_windows is not None and not _whole(self.search_windows, 1):
                raise RecipeError(f"--search-windows {self.search_windows!r} must be a positive whole number, e.g. 16")
            self.score = self.score or "perplexity"
            if self.score not in DEPTH_SCORES:
                raise RecipeError(f"score {self.score!r} is not a depth score: choose {', '.join(DEPTH_SCORES)}")
            if self.ebft_epochs:
                raise RecipeError(
                    "--ebft-epochs tunes pruned blocks; depth pruning deletes whole blocks and tunes none: drop it"
                )
        if not (isinstance(self.dampening, (int, float)) and math.isfinite(self.dampening) and self.dampening > 0):
            raise RecipeError(f"dampening {self.dampening!r} must be a positive fraction, e.g. 0.01")

    def layers_to_remove(self, total: int) -> int:
        removed = self.remove if self.remove is not None else round(total * float(self.ratio))
        if removed >= total:
            raise RecipeError(f"removing {removed} of {total} layers leaves none: give a smaller --remove or --ratio")
        return removed

    @property
    def statistics(self) -> str:
        return "moments"  # every structured score reads calibration activations

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
