"""Named recipes for a budget, shipped as recipe files: a user picks how much pruning time to spend, not a paper.

* ``fast``: Wanda (one forward pass per block, no weight update);
* ``balanced``: the best one-shot recipe measured at no more than twice SparseGPT's pruning time;
* ``best``: the best measured at no more than four times.

Each file says why it holds what it holds; the measurements are in docs/benchmarks.md, the table in
docs/recipes.md. The sparsity and pattern are the user's: a preset sets the method and its stages, flags and
recipe settings go over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..files import read_mapping

FOLDER = Path(__file__).with_name("presets")


def preset_names() -> list[str]:
    return sorted(path.stem for path in FOLDER.glob("*.yaml"))


def read_preset(name: str) -> dict[str, Any]:
    """The recipe settings of the preset ``name`` (a dict ``load_recipe`` reads)."""
    path = FOLDER / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown preset {name!r}: choose one of {', '.join(preset_names())}")
    return read_mapping(path, "preset", "'method: wanda'")
