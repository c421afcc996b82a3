"""A YAML or JSON file mapping layer-name globs to sparsities; the first matching glob wins, other layers get the
recipe's sparsity."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import ClassVar

from ..errors import RecipeError
from ..files import read_mapping
from .base import Allocation


def read_allocation_file(path: str | Path) -> list[tuple[str, float]]:
    """The file's (glob, sparsity) rules, in file order."""
    mapping = read_mapping(path, "allocation file", "'model.layers.0.*: 0.3'")
    rules = []
    for glob, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise RecipeError(f"{path}: {glob!r} maps to {value!r}, not a sparsity in [0, 1): fix the file")
        rules.append((str(glob), float(value)))
    return rules


def file_sparsity(name: str, rules: list[tuple[str, float]], default: float) -> float:
    for glob, value in rules:
        if fnmatchcase(name, glob):
            return value
    return default


@dataclass(frozen=True, kw_only=True)
class RulesFile(Allocation):
    """``path``: the file, read (and checked) when the recipe is made."""

    name: ClassVar[str] = "rules"
    path_named: ClassVar[bool] = True  # the allocation may be named by the file's path
    path: str
    rules: tuple[tuple[str, float], ...] = field(init=False, default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        path = Path(str(self.path))
        if path.suffix not in (".yaml", ".yml", ".json") or not path.is_file():
            raise RecipeError(
                f"{{path}} {self.path!r} is not a YAML/JSON file of layer-name globs and sparsities: check the path"
            )
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "rules", tuple(read_allocation_file(path)))

    def layer_sparsity(self, name: str, target: float) -> float:
        return file_sparsity(name, list(self.rules), target)
