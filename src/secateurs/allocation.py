"""Layer-wise sparsity allocation: how the target sparsity is spread over the decoder blocks.

``uniform``: every layer at the target. ``owl`` (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"):
blocks with more outliers (Wanda scores above M times their block's mean) keep more weights; densities are
the outlier ratios scaled to a span of 2 lambda and shifted so that the parameter-weighted mean sparsity is
the target. ``schedule``: a linear ramp from a first to a last block sparsity. A YAML/JSON file: layer-name
globs mapped to sparsities, the first matching glob wins.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

from .errors import RecipeError
from .patterns import NMPattern

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
            f"OWL with lambda {span} around sparsity {target} gives a block sparsity outside [0, 1): lower --owl-lambda"
        )
    return sparsities


def schedule_sparsities(first: float, last: float, blocks: int) -> list[float]:
    """A linear ramp over the blocks, both ends exact."""
    if blocks == 1:
        return [first]
    return [first + (last - first) * i / (blocks - 1) for i in range(blocks)]


def parse_schedule(text: str) -> tuple[float, float]:
    try:
        first, last = (float(part) for part in text.split(":"))
    except ValueError:
        raise RecipeError(f"schedule {text!r} is not FIRST:LAST, e.g. 0.4:0.6") from None
    for value in (first, last):
        if not 0 <= value < 1:
            raise RecipeError(f"schedule {text!r}: sparsities must be in [0, 1), e.g. 0.4:0.6")
    return first, last


def read_allocation_file(path: str | Path) -> list[tuple[str, float]]:
    """A YAML or JSON mapping of layer-name globs to sparsities, in file order."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise RecipeError(f"cannot read the allocation file {path}: {error.strerror}") from error
    try:
        if path.suffix == ".json":
            mapping = json.loads(text)
        else:
            import yaml

            mapping = yaml.safe_load(text)
    except Exception as error:  # yaml and json raise their own kinds
        raise RecipeError(f"{path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {error}") from error
    if not isinstance(mapping, dict) or not mapping:
        raise RecipeError(f"{path} must map layer-name globs to sparsities, e.g. 'model.layers.0.*: 0.3'")
    rules = []
    for glob, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise RecipeError(f"{path}: {glob!r} maps to {value!r}, not a sparsity in [0, 1)")
        rules.append((str(glob), float(value)))
    return rules


def file_sparsity(name: str, rules: list[tuple[str, float]], default: float) -> float:
    for glob, value in rules:
        if fnmatchcase(name, glob):
            return value
    return default


def mixed_nm(pattern: NMPattern, sparsity: float) -> NMPattern:
    """The N:M pattern with the same M closest to ``sparsity`` (OWL's per-layer N:M)."""
    n = min(pattern.m - 1, max(1, round(pattern.m * (1 - sparsity))))
    return NMPattern(n, pattern.m)
