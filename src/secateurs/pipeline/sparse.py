"""Sparse pruning of an in-memory model: the recipe's allocation plans each layer, the walk observes and solves
every Linear (``SparseSolver``), then distillation tunes the whole model if the recipe asks."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from ..allocation import layer_plans
from ..engine import DenseInputs, LayerSolver, WalkParts, WalkSettings, walk
from ..engine.dense import ROUTED
from ..errors import CalibrationError, NumericalError, RecipeError
from ..methods import CROSS, HESSIAN, LayerPlan, solve_layer
from ..models import Target, find_blocks, find_targets
from ..observers import CrossObserver, HessianObserver, InputNormObserver
from ..recipe import SparseRecipe
from ..report import AllocationRecord, LayerRecord, Report, WalkRecord, peak_cuda_mib, peak_rss_mib
from ..tuning import EbftTuner, kept_masks
from .options import RunOptions, distill_model

Observer = InputNormObserver | HessianObserver


def all_targets(model: nn.Module, ignore: tuple[str, ...] = ()) -> list[Target]:
    name, blocks = find_blocks(model)
    return [t for i, block in enumerate(blocks) for t in find_targets(block, f"{name}.{i}", ignore)]


def check_parts(recipe: Any, distributed: bool, offloaded: bool) -> None:
    """Refuse what a tuning stage cannot do in a distributed or offloaded run (before any work is done)."""
    if recipe.ebft is not None and distributed:
        raise RecipeError(
            "{ebft.epochs} tunes each block on one process's calibration: run it with {workers} 1 (the ranks "
            "would tune their copies apart)"
        )
    if recipe.distill is not None and (offloaded or distributed):
        raise RecipeError(
            "{distill.epochs} trains the whole model beside a dense copy, on one process: run it with {offload} "
            "none and {workers} 1"
        )


class SparseSolver:
    """The walk's solver for a sparse recipe: each Linear's statistics as the recipe's stages need them, and its
    solve (``solve_layer``) written into the model with the layer's record."""

    def __init__(
        self, recipe: SparseRecipe, plans: dict[str, LayerPlan], hessians_on_cpu: bool, layers: list[LayerRecord]
    ) -> None:
        self.recipe = recipe
        self.plans = plans
        self.statistics = recipe.statistics
        self.hessians_on_cpu = hessians_on_cpu
        self.layers = layers  # the report's records, in solve order (a resumed walk's come back with its state)
        self.default_plan = LayerPlan(recipe.target_sparsity, recipe.nm_pattern)

    def observer(self, target: Target) -> Observer | None:
        if self.statistics is None:  # magnitude, walked only to tune its blocks (EBFT)
            return None
        if self.statistics in (HESSIAN, CROSS):
            where = "cpu" if self.hessians_on_cpu else target.weight().device
            observer = CrossObserver if self.statistics == CROSS else HessianObserver
            return observer(target.in_features, where)
        return InputNormObserver(target.in_features, target.weight().device)

    def solve(self, target: Target, observer: Observer | None) -> None:
        weight = target.weight()
        note = None
        if self.statistics is not None and (observer is None or observer.tokens == 0):
            observer, note = None, "no calibration token reached it: magnitude used"
        elif observer is not None:
            observer.check_finite(target.name)
        plan = self.plans.get(target.name) or self.default_plan
        refine = self.recipe.refine
        refine = refine if refine is not None and refine.applies(target.name) else None
        solution = solve_layer(weight, observer, plan, self.recipe.method, refine, self.recipe.update)
        original = weight.clone() if observer is not None else None
        if solution.weight is not None:
            weight.copy_(solution.weight)
        weight.masked_fill_(~solution.mask, 0)
        record = LayerRecord(target.name, list(weight.shape), int((weight == 0).sum()) / weight.numel())
        if self.plans:
            record.target_sparsity = plan.sparsity
            record.pattern = str(plan.pattern) if plan.pattern is not None else None
        if solution.dampening is not None:
            record.dampening = solution.dampening
            note = f"Hessian not positive definite: dampening raised to {solution.dampening:g}"
        record.dead_inputs = solution.dead_inputs or None
        if original is not None:
            record.reconstruction_error = observer.relative_error(original, weight)
        record.note = note
        self.layers.append(record)


def _check(model: nn.Module, recipe: SparseRecipe, calibration: torch.Tensor | None, parts: WalkParts) -> None:
    targets = all_targets(model, recipe.ignore)
    if not targets:
        raise RecipeError("no layer is left to prune: the {ignore} patterns match every weight")
    if parts.store is None:  # an offloaded model's weights are checked as they are read
        for target in targets:
            if not torch.isfinite(target.weight()).all():
                raise NumericalError(
                    f"the model's weight {target.name} holds NaN or Inf: the checkpoint is damaged; "
                    "download the model again, or check the files it was converted from"
                )
    check_parts(recipe, parts.reduce is not None, parts.store is not None)
    if recipe.fits_dense and any(target.expert is not None for target in targets):
        raise RecipeError(ROUTED)
    if recipe.needs_calibration and calibration is None:
        readers = _activation_readers(recipe)
        raise CalibrationError(
            f"{' and '.join(readers)} {'reads' if len(readers) == 1 else 'read'} calibration activations: give "
            "calibration data (secateurs.calibration_windows)"
        )


def _activation_readers(recipe: SparseRecipe) -> list[str]:
    """The stages of ``recipe`` that read calibration activations, named for an error message."""
    readers = [
        (recipe.method.statistics is not None, f"method {recipe.method.name}"),
        (recipe.update is not None, f"update {getattr(recipe.update, 'name', '')}"),
        (recipe.refine is not None and recipe.method.statistics is None, "refine"),
        (
            recipe.allocation is not None and recipe.allocation.observes,
            f"allocation {getattr(recipe.allocation, 'name', '')}",
        ),
        (recipe.ebft is not None, "ebft"),
        (recipe.distill is not None, "distill"),
    ]
    return [name for reads, name in readers if reads]


def _solve_all(model: nn.Module, solver: LayerSolver, recipe: SparseRecipe, parts: WalkParts) -> None:
    """Magnitude without a walk: every weight solved as it is, or block by block as the store reads them."""
    blocks_name, blocks = find_blocks(model)
    with torch.no_grad():
        for index, block in enumerate(blocks):
            if parts.store is not None:
                parts.store.load(index, block)
            for target in find_targets(block, f"{blocks_name}.{index}", recipe.ignore):
                solver.solve(target, None)
            if parts.state is not None:
                parts.state.save_block(index, f"{blocks_name}.{index}", block, [])
            if parts.store is not None:
                parts.store.release(index, block)


def _plans(
    model: nn.Module, recipe: SparseRecipe, calibration: torch.Tensor | None, options: RunOptions, parts: WalkParts
) -> tuple[dict[str, LayerPlan], AllocationRecord]:
    """Each layer's plan under the recipe's allocation; OWL walks the dense model first (same store, reduction)."""
    blocks_name, blocks = find_blocks(model)
    by_block = [find_targets(block, f"{blocks_name}.{i}", recipe.ignore) for i, block in enumerate(blocks)]
    settings = WalkSettings(False, True, options.batch_size, options.device, options.progress, recipe.ignore)
    dense = WalkParts(store=parts.store, reduce=parts.reduce)

    def observe(counter: LayerSolver) -> None:
        walk(model, calibration, counter, settings, dense)

    return layer_plans(by_block, recipe.allocation, recipe.target_sparsity, recipe.nm_pattern, observe)


def _walk(
    model: nn.Module,
    recipe: SparseRecipe,
    calibration: torch.Tensor,
    solver: SparseSolver,
    options: RunOptions,
    parts: WalkParts,
    targets: list[Target],
) -> WalkRecord:
    """The walk with the recipe's block hooks; ``targets``: every Linear it prunes (the dense stream's sizes)."""
    tuner = EbftTuner(recipe.ebft) if recipe.ebft is not None else None
    hooks: list = [tuner] if tuner is not None else []
    if recipe.fits_dense:
        hidden = getattr(getattr(model, "config", None), "hidden_size", None) or targets[0].in_features
        hooks.insert(0, DenseInputs(hidden, max(target.in_features for target in targets)))
    parts = WalkParts(parts.store, parts.state, parts.reduce, hooks)
    settings = WalkSettings(
        recipe.sequential, False, options.batch_size, options.device, options.progress, recipe.ignore
    )
    record = walk(model, calibration, solver, settings, parts)
    record.seconds = {k: round(v, 3) for k, v in record.seconds.items()}
    record.ebft = tuner.record() if tuner is not None else None
    return record


def prune_sparse(
    model: nn.Module,
    recipe: SparseRecipe,
    calibration: torch.Tensor | None,
    options: RunOptions,
    parts: WalkParts,
) -> Report:
    """Prune ``model`` in place as ``recipe`` says; returns the report."""
    _check(model, recipe, calibration, parts)
    targets = all_targets(model, recipe.ignore)
    start = time.perf_counter()
    teacher = copy.deepcopy(model) if recipe.distill is not None else None  # the dense model, before any change
    plans, allocation = _plans(model, recipe, calibration, options, parts)
    solver = SparseSolver(recipe, plans, options.hessians_on_cpu, parts.state.layers if parts.state else [])
    walk_record = None
    if recipe.statistics is not None or recipe.ebft is not None:
        walk_record = _walk(model, recipe, calibration, solver, options, parts, targets)
    else:
        _solve_all(model, solver, recipe, parts)
    distilled = None
    if teacher is not None:
        distilled = distill_model(model, teacher, kept_masks(targets), calibration, recipe.distill, options)
        del teacher
    total = sum(layer.shape[0] * layer.shape[1] for layer in solver.layers)
    zeros = sum(layer.sparsity * layer.shape[0] * layer.shape[1] for layer in solver.layers)
    return Report(
        recipe=recipe.to_dict(),
        device=str(options.device),
        calibration=None if calibration is None else list(calibration.shape),
        target_sparsity=recipe.target_sparsity,
        sparsity=round(zeros / total, 6),
        pruned_parameters=total,
        prune_seconds=round(time.perf_counter() - start, 3),
        walk=walk_record,
        allocation=allocation,
        distill=distilled,
        layers=solver.layers,
        peak_rss_mib=peak_rss_mib(),
        peak_cuda_mib=peak_cuda_mib(),
    )
