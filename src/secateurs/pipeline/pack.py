"""Packing a pruned folder (its pruned weights stored compressed) and unpacking a packed one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import RecipeError
from ..io import pack, packed_sizes, unpack
from ..io.packed import source_report
from ..recipe import SparseRecipe, load_recipe


@dataclass(kw_only=True)
class PackJob:
    """Pack the HF folder ``model`` into ``out``. ``pattern``: N:M (e.g. ``2:4``) stores the pruned weights as N:M
    (each must be N:M), ``unstructured`` as bitmasks; ``ignore``: weights the pattern does not apply to. None:
    what the folder's ``secateurs.json`` recipe says, else unstructured and none."""

    model: str | Path
    out: str | Path
    pattern: str | None = None
    ignore: tuple[str, ...] | None = None
    overwrite: bool = False


@dataclass(kw_only=True)
class UnpackJob:
    """Write the packed folder ``model`` as an ordinary HF folder ``out``, in ``dtype`` (None: as stored)."""

    model: str | Path
    out: str | Path
    dtype: str | None = None
    overwrite: bool = False


def declared(folder: Path) -> SparseRecipe | None:
    """The sparse recipe that pruned ``folder``, when a secateurs run left its report there."""
    report = source_report(folder)
    if report is None or report.kind != "prune":
        return None
    try:
        recipe = load_recipe(report.recipe)
    except RecipeError:
        return None
    return recipe if isinstance(recipe, SparseRecipe) else None


def run_pack(job: PackJob) -> dict[str, int]:
    """Pack; returns the packed folder's sizes (``secateurs.io.packed_sizes``)."""
    folder = Path(job.model).expanduser()
    recipe = declared(folder) if job.pattern is None or job.ignore is None else None
    pattern = job.pattern or (recipe.pattern if recipe is not None else "unstructured")
    ignore = job.ignore if job.ignore is not None else (recipe.ignore if recipe is not None else ())
    out = pack(folder, job.out, pattern=pattern, ignore=ignore, overwrite=job.overwrite)
    return packed_sizes(out)


def run_unpack(job: UnpackJob) -> Path:
    return unpack(job.model, job.out, dtype=job.dtype, overwrite=job.overwrite)
