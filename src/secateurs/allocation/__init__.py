"""Layer-wise sparsity allocation: how the target sparsity is spread over the decoder blocks and their layers.

No allocation (``None``): every layer at the target. ``Owl`` (Yin et al. 2024): blocks with more outliers keep
more weights. ``Schedule``: a linear ramp from the first block to the last. ``RulesFile``: layer-name globs
mapped to sparsities. With an N:M pattern an allocation is skipped unless ``nm="mixed"``, which gives each layer
the N:M with the same M closest to its sparsity (OWL's mixed N:M).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RecipeError
from ..methods.base import LayerPlan
from ..models.discover import Target
from ..patterns import NMPattern
from ..report.schema import AllocationRecord
from .base import Allocation, Observe, mixed_nm
from .owl import Owl
from .rules import RulesFile
from .schedule import Schedule

ALLOCATIONS: dict[str, type[Allocation]] = {cls.name: cls for cls in (Owl, Schedule, RulesFile)}
UNIFORM = "uniform"


def allocation_class(name: str) -> type[Allocation] | None:
    """The allocation called ``name`` (None: uniform), or a rules file for a ``.yaml``/``.yml``/``.json`` path."""
    if name == UNIFORM:
        return None
    if name in ALLOCATIONS:
        return ALLOCATIONS[name]
    if Path(name).suffix in (".yaml", ".yml", ".json"):
        return RulesFile
    raise RecipeError(
        f"{{allocation}} {name!r} is neither uniform, owl, schedule nor a YAML/JSON file of layer-name globs and "
        "sparsities: choose one"
    )


def layer_plans(
    by_block: list[list[Target]],
    allocation: Allocation | None,
    target: float,
    pattern: NMPattern | None,
    observe: Observe,
) -> tuple[dict[str, LayerPlan], AllocationRecord]:
    """Each target's sparsity and pattern under ``allocation`` (empty: ``target`` and ``pattern`` everywhere),
    and what the report says of it. ``observe`` walks the dense model for allocations that measure it (OWL)."""
    if allocation is None:
        return {}, AllocationRecord(method=UNIFORM)
    record = AllocationRecord(method=allocation.name)
    if pattern is not None and allocation.nm == "skip":
        record.note = (
            f"N:M layers keep their pattern {pattern}: the {allocation.name} allocation was skipped "
            "(pass --nm-allocation mixed for a per-layer N:M)"
        )
        return {}, record
    block_sparsity = allocation.block_sparsities(by_block, target, observe, record)
    plans: dict[str, LayerPlan] = {}
    for index, targets in enumerate(by_block):
        for layer in targets:
            sparsity = block_sparsity[index] if block_sparsity else allocation.layer_sparsity(layer.name, target)
            layer_pattern = mixed_nm(pattern, sparsity) if pattern is not None else None
            plans[layer.name] = LayerPlan(layer_pattern.sparsity if layer_pattern else sparsity, layer_pattern)
    if block_sparsity:
        record.block_sparsities = block_sparsity
    return plans, record


__all__ = ["ALLOCATIONS", "Allocation", "Owl", "RulesFile", "Schedule", "allocation_class", "layer_plans", "mixed_nm"]
