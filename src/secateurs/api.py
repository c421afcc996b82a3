"""Python entry points: ``prune`` (an in-memory model), ``evaluate``, ``run_prune`` (the whole job the
CLI runs: load, calibrate, prune, evaluate, save) and ``run_evaluation`` (perplexity and zero-shot tasks)."""

from __future__ import annotations

import copy
import functools
import json
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_module
from . import distributed
from .checkpoint import WalkState, fingerprint, has_state, source_identity, state_folder
from .distill import distill
from .ebft import TuneSettings, kept_masks, tune_block, tune_report
from .engine import BlockStore, fix_mmap_threshold, walk
from .errors import CalibrationError, NumericalError, OutputError, RecipeError, ResumeError
from .evaluate import perplexity
from .evaluate.zero_shot import check_options, load_tasks, zero_shot
from .export import check_output_folder, save_checkpoint, save_packed
from .export.hf import REPORT_NAME, write_folder_atomically
from .methods import HESSIAN, get_method
from .models import Target, find_blocks, find_targets, load_model, resolve_device, resolve_dtype
from .models.load import check_causal_lm
from .observers import HessianObserver, InputNormObserver
from .offload import DiskBlocks, open_offloaded, should_offload
from .plan import layer_plans
from .recipe import Recipe, StructuredRecipe
from .report import machine, peak_cuda_mib, peak_rss_mib, versions
from .report_md import write_markdown_report
from .solve import default_plan, solve_weight
from .structured import prune_structured


def _check_finite_weights(model: nn.Module, targets: list[Target]) -> None:
    for target in targets:
        if not torch.isfinite(target.weight()).all():
            raise NumericalError(f"the model's weight {target.name} holds NaN or Inf: the checkpoint is damaged")


def _all_targets(model: nn.Module, recipe: Recipe | None = None) -> list[Target]:
    name, blocks = find_blocks(model)
    ignore = recipe.ignore if recipe is not None else []
    return [t for i, block in enumerate(blocks) for t in find_targets(block, f"{name}.{i}", ignore)]


def prune(
    model: nn.Module,
    recipe: Recipe | StructuredRecipe,
    calibration: torch.Tensor | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    hessians_on_cpu: bool = False,
    progress: bool = True,
    state: WalkState | None = None,
    store: BlockStore | None = None,
    reduce: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Prune ``model`` in place as ``recipe`` says and return the report.

    ``calibration``: token ids ``[nsamples, seqlen]`` (see ``secateurs.data.calibration_windows``); methods
    that read activations (Wanda, SparseGPT, the OBS updates) need it, magnitude does not. Only one block
    at a time is moved to ``device``; the model is returned to the CPU. ``hessians_on_cpu`` keeps the
    Hessians of the block's Linears on the CPU while the calibration data flows (only the one being solved
    goes to ``device``). ``state`` makes the walk resumable (see ``secateurs.checkpoint``); ``store`` reads
    and drops each block's weights (``secateurs.offload``: a model larger than memory); ``reduce`` sums each
    observer's statistics over the ranks of a distributed run (``secateurs.distributed``).
    """
    check_causal_lm(model)
    if isinstance(recipe, StructuredRecipe):
        return _prune_structured(model, recipe, calibration, resolve_device(device), batch_size, progress)
    method = get_method(recipe.method)
    statistics = recipe.statistics
    device = resolve_device(device)
    targets = _all_targets(model, recipe)
    if not targets:
        raise RecipeError("no layer is left to prune: the --ignore patterns match every weight")
    if store is None:  # an offloaded model's weights are checked as they are read
        _check_finite_weights(model, targets)
    if recipe.ebft_epochs and reduce is not None:
        raise RecipeError(
            "--ebft-epochs tunes each block on one process's calibration: run it with --workers 1 (the ranks "
            "would tune their copies apart)"
        )
    if recipe.distill_epochs and (store is not None or reduce is not None):
        raise RecipeError(
            "--distill-epochs trains the whole model beside a dense copy, on one process: run it without --offload "
            "and with --workers 1"
        )
    if recipe.needs_calibration and calibration is None:
        raise CalibrationError(
            f"{method.name}{' with --update' if recipe.update else ''}"
            f"{' with OWL' if recipe.allocation == 'owl' else ''}{' with EBFT' if recipe.ebft_epochs else ''}"
            f"{' with distillation' if recipe.distill_epochs else ''} reads "
            "calibration activations: give calibration data"
        )
    start = time.perf_counter()
    teacher = copy.deepcopy(model) if recipe.distill_epochs else None  # the dense model, before any block changes
    plans, allocation = layer_plans(model, recipe, calibration, device, batch_size, progress, store, reduce)
    layers: list[dict[str, Any]] = state.layers if state is not None else []
    observer_class = HessianObserver if statistics == HESSIAN else InputNormObserver

    def make_observer(target: Target) -> InputNormObserver | HessianObserver | None:
        if statistics is None:  # magnitude, walked only to tune its blocks (EBFT)
            return None
        where = "cpu" if hessians_on_cpu and statistics == HESSIAN else target.weight().device
        return observer_class(target.in_features, where)

    def solve(target: Target, observer: InputNormObserver | HessianObserver | None) -> None:
        weight = target.weight()
        note = None
        if statistics is not None and (observer is None or observer.tokens == 0):
            observer, note = None, "no calibration token reached it: magnitude used"
        elif observer is not None:
            observer.check_finite(target.name)
        plan = plans.get(target.name) or default_plan(recipe)
        refine = not any(fnmatchcase(target.name, glob) for glob in recipe.refine_skip)
        solution = solve_weight(weight, recipe, observer, plan, refine=refine)
        original = weight.clone() if observer is not None else None
        if solution.weight is not None:
            weight.copy_(solution.weight)
        weight.masked_fill_(~solution.mask, 0)
        zeros = int((weight == 0).sum())
        layer: dict[str, Any] = {"name": target.name, "shape": list(weight.shape), "sparsity": zeros / weight.numel()}
        if plans:
            layer["target_sparsity"] = plan.sparsity
            if plan.pattern is not None:
                layer["pattern"] = str(plan.pattern)
        if solution.dampening is not None and solution.dampening != recipe.dampening:
            layer["dampening"] = solution.dampening
            note = f"Hessian not positive definite: dampening raised to {solution.dampening:g}"
        if solution.dead_inputs:
            layer["dead_inputs"] = solution.dead_inputs
        if original is not None:
            layer["reconstruction_error"] = observer.relative_error(original, weight)
        if note:
            layer["note"] = note
        layers.append(layer)

    walk_info: dict[str, Any] = {}
    ebft = TuneSettings(recipe.ebft_epochs, recipe.ebft_lr) if recipe.ebft_epochs else None
    if statistics is not None or ebft is not None:
        info = walk(
            model,
            calibration,
            make_observer,
            solve,
            ignore=recipe.ignore,
            true_sequential=recipe.sequential,
            batch_size=batch_size,
            device=device,
            progress=progress,
            state=state,
            store=store,
            reduce=reduce,
            tune=None if ebft is None else functools.partial(tune_block, settings=ebft),
            tune_target=recipe.ebft_target,
        )
        walk_info = {
            "mode": info.mode,
            "batch_size": info.batch_size,
            "passes_per_block": info.passes_per_block,
            "seconds": {k: round(v, 3) for k, v in info.seconds.items()},
            "notes": info.notes,
        }
        if ebft is not None:
            walk_info["ebft"] = tune_report(ebft, recipe.ebft_target, info.tuned)
    elif store is None:
        with torch.no_grad():
            for target in targets:
                solve(target, None)
    else:  # magnitude, offloaded: each block read, pruned, written
        blocks_name, blocks = find_blocks(model)
        with torch.no_grad():
            for index, block in enumerate(blocks):
                store.load(index, block)
                for target in find_targets(block, f"{blocks_name}.{index}", recipe.ignore):
                    solve(target, None)
                if state is not None:
                    state.save_block(index, f"{blocks_name}.{index}", block, [])
                store.release(index, block)
    distilled: dict[str, Any] = {}
    if teacher is not None:
        distilled = _distill(model, teacher, kept_masks(targets), calibration, recipe, device, progress)
        del teacher
    seconds = time.perf_counter() - start
    total = sum(layer["shape"][0] * layer["shape"][1] for layer in layers)
    zeros = sum(layer["sparsity"] * layer["shape"][0] * layer["shape"][1] for layer in layers)
    return {
        "recipe": recipe.to_dict(),
        "device": str(device),
        "calibration": None if calibration is None else list(calibration.shape),
        "sparsity": round(zeros / total, 6),
        "pruned_parameters": total,
        "prune_seconds": round(seconds, 3),
        "walk": walk_info,
        "distill": distilled,
        "allocation": allocation,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": peak_cuda_mib(),
        "layers": layers,
    }


def _distill(
    model: nn.Module,
    teacher: nn.Module,
    masks: dict[nn.Parameter, torch.Tensor],
    calibration: torch.Tensor,
    recipe: Recipe | StructuredRecipe,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """The distillation after pruning (``secateurs.distill``) and the report's ``distill``."""
    settings = TuneSettings(recipe.distill_epochs, recipe.distill_lr)
    began = time.perf_counter()
    losses = distill(model, teacher, masks, calibration, settings, device, progress)
    return {
        "epochs": settings.epochs,
        "lr": settings.lr,
        "epoch_losses": [round(loss, 6) for loss in losses],
        "seconds": round(time.perf_counter() - began, 3),
    }


def _prune_structured(
    model: nn.Module,
    recipe: StructuredRecipe,
    calibration: torch.Tensor | None,
    device: torch.device,
    batch_size: int | None,
    progress: bool,
) -> dict[str, Any]:
    if calibration is None:
        raise CalibrationError(f"{recipe.method} pruning scores with calibration activations: give calibration data")
    teacher = copy.deepcopy(model) if recipe.distill_epochs else None  # the dense model, before the cut
    report = prune_structured(model, recipe, calibration, device=device, batch_size=batch_size, progress=progress)
    distilled: dict[str, Any] = {}
    if teacher is not None:
        # nothing is zero by design after a cut: every weight matrix of the smaller blocks is tuned
        masks = {t.parameter: torch.ones_like(t.parameter, dtype=torch.bool) for t in _all_targets(model)}
        distilled = _distill(model, teacher, masks, calibration, recipe, device, progress)
        del teacher
        report["prune_seconds"] = round(report["prune_seconds"] + distilled["seconds"], 3)
    return {
        "recipe": recipe.to_dict(),
        "device": str(device),
        "calibration": list(calibration.shape),
        **report,
        "distill": distilled,
        "peak_rss_mib": peak_rss_mib(),
        "peak_cuda_mib": peak_cuda_mib(),
    }


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    dataset: str = "wikitext2",
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on ``dataset`` (wikitext2, c4, ptb or a text file); moves the model to
    ``device``."""
    check_causal_lm(model)
    device = resolve_device(device)
    ids = data_module.evaluation_ids(dataset, tokenizer, seqlen)
    model.to(device)
    return perplexity(model, ids, seqlen, max_windows, batch_size, device, progress=progress)


def run_prune(
    model_source: str,
    recipe: Recipe | StructuredRecipe,
    out: str | Path,
    *,
    calib: str = "c4",
    nsamples: int = 128,
    seqlen: int = 2048,
    seed: int = 0,
    eval_dataset: str | None = None,
    eval_seqlen: int = 2048,
    eval_windows: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    batch_size: int | None = None,
    hessians_on_cpu: bool = False,
    overwrite: bool = False,
    trust_pickle: bool = False,
    progress: bool = True,
    resume: bool = False,
    checkpoint_format: str = "hf",
    offload: str = "none",
) -> dict[str, Any]:
    """Load ``model_source``, prune it, optionally evaluate, and save it to ``out``; returns the report
    (also written as ``out/secateurs.json``). ``checkpoint_format``: ``hf`` (what ``from_pretrained`` reads)
    or ``packed`` (pruned weights compressed, see ``secateurs.export.packed``). ``offload``: ``disk`` reads each
    block from the source shards in turn (``secateurs.offload``), ``auto`` when the model is larger than free
    memory, ``none``. Every argument is checked before the long work starts."""
    if checkpoint_format not in ("hf", "packed"):
        raise OutputError(f"checkpoint format {checkpoint_format!r} is not known: choose hf or packed")
    out_path = check_output_folder(out, overwrite, source=model_source)
    torch_device = resolve_device(device)
    resolve_dtype(dtype)
    if resume and isinstance(recipe, StructuredRecipe):
        raise RecipeError("--resume continues sparse pruning; structured pruning restarts: run without --resume")
    if resume and not has_state(out_path):
        raise ResumeError(f"nothing to resume for {out_path} (no {state_folder(out_path).name}): run without --resume")
    offloaded = should_offload(offload, model_source, dtype, recipe, eval_dataset, checkpoint_format)
    ranks = distributed.from_environment(torch_device)
    if ranks is not None:
        if isinstance(recipe, StructuredRecipe):
            raise RecipeError("structured pruning runs in one process: run it without torchrun or --workers")
        torch_device = ranks.device(torch_device)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    needs_calibration = isinstance(recipe, StructuredRecipe) or recipe.needs_calibration
    corpus = data_module.load_corpus(calib) if needs_calibration else None
    store = None
    if offloaded:
        fix_mmap_threshold()  # memory first: freed activations go back to the system (see the function)
        model, tokenizer, folder = open_offloaded(model_source, resolve_dtype(dtype))
        store = DiskBlocks(model, folder, resolve_dtype(dtype), torch_device)
    else:
        model, tokenizer = load_model(model_source, dtype, trust_pickle=trust_pickle)
    timings["load"] = time.perf_counter() - start

    calibration = None
    if corpus is not None:
        start = time.perf_counter()
        calibration = data_module.calibration_windows(corpus, tokenizer, nsamples, seqlen, seed)
        timings["calibration_data"] = time.perf_counter() - start
    share = ranks.share(calibration) if ranks is not None and calibration is not None else calibration

    result: dict[str, Any] = {}
    eval_ids = None
    if eval_dataset and (ranks is None or ranks.is_writer):
        start = time.perf_counter()
        eval_ids = data_module.evaluation_ids(eval_dataset, tokenizer, eval_seqlen)
        model.to(torch_device)
        result["perplexity_before"] = perplexity(
            model, eval_ids, eval_seqlen, eval_windows, 1, torch_device, progress=progress
        )
        model.to("cpu")
        timings["eval_before"] = time.perf_counter() - start

    state = None
    if isinstance(recipe, Recipe) and (recipe.statistics is not None or offloaded):
        key = fingerprint(
            ranks=None if ranks is None else [ranks.rank, ranks.world],
            offloaded=offloaded,
            source=source_identity(model_source),
            recipe=recipe.to_dict(),
            calibration=calibration,
            dtype=dtype,
            device=torch_device.type,
            batch_size=batch_size,
            hessians_on_cpu=hessians_on_cpu,
        )
        folder = state_folder(out_path) if ranks is None else state_folder(out_path) / f"rank-{ranks.rank}"
        state = WalkState(folder, key, [])
        state.load() if resume else state.start()
        state.extra["restore_blocks"] = not offloaded  # offloaded blocks stay on disk, in the state's files
    report = prune(
        model,
        recipe,
        share,
        device=torch_device,
        batch_size=batch_size,
        hessians_on_cpu=hessians_on_cpu,
        progress=progress and (ranks is None or ranks.is_writer),
        state=state,
        store=store,
        reduce=None if ranks is None else lambda observer: observer.all_reduce(),
    )
    timings["prune"] = report["prune_seconds"]
    peak_after_prune = peak_rss_mib()
    if ranks is not None:
        report["ranks"] = ranks.world
        report["peak_rss_mib_per_rank"] = ranks.gather(peak_after_prune)
        if not ranks.is_writer:  # every rank holds the same pruned weights; rank 0 writes them
            if state is not None:
                state.finish()
            return report

    if eval_ids is not None:
        start = time.perf_counter()
        model.to(torch_device)
        result["perplexity_after"] = perplexity(
            model, eval_ids, eval_seqlen, eval_windows, 1, torch_device, progress=progress
        )
        model.to("cpu")
        timings["eval_after"] = time.perf_counter() - start
        result["evaluation"] = {"dataset": eval_dataset, "seqlen": eval_seqlen, "windows": eval_windows}

    report.update(result)
    report.update(
        {
            "model": str(model_source),
            "dtype": dtype,
            "calibration": {"source": calib, "nsamples": nsamples, "seqlen": seqlen, "seed": seed}
            if calibration is not None
            else None,
            "versions": versions(),
            "machine": machine(),
            "peak_rss_mib_after_prune": peak_after_prune,
            "checkpoint_format": checkpoint_format,
        }
    )
    start = time.perf_counter()
    if offloaded:
        report["offload"] = "disk"
        _save_offloaded(store, state, tokenizer, out_path, {**report, "seconds": timings})
    elif checkpoint_format == "packed":
        save_packed(
            model,
            tokenizer,
            out_path,
            {**report, "seconds": timings},
            pattern=getattr(recipe, "pattern", "unstructured"),
            overwrite=overwrite,
        )
    else:
        save_checkpoint(model, tokenizer, out_path, {**report, "seconds": timings}, overwrite)
    timings["save"] = time.perf_counter() - start
    report["seconds"] = {k: round(v, 3) for k, v in timings.items()}
    report["peak_rss_mib"] = peak_rss_mib()
    report["weight_file_bytes"] = sum(path.stat().st_size for path in out_path.glob("*.safetensors"))
    # the saved report gets the save time too
    (out_path / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    write_markdown_report(report, out_path)
    if state is not None:
        state.finish()
    return report


def _save_offloaded(store: DiskBlocks, state: WalkState, tokenizer: Any, out: Path, report: dict[str, Any]) -> None:
    def fill(partial: Path) -> None:
        store.write_output(partial, state.folder, state.blocks_done)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        (partial / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        write_markdown_report(report, partial)

    write_folder_atomically(out, fill)


def run_evaluation(
    model_source: str,
    *,
    ppl: Sequence[str] = ("wikitext2",),
    tasks: Sequence[str] = (),
    seqlen: int = 2048,
    max_windows: int | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    device: str = "auto",
    dtype: str = "float32",
    trust_pickle: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``model_source`` and measure its perplexity on each ``ppl`` set (wikitext2, c4, ptb or a file)
    and its zero-shot accuracy on each of ``tasks`` (lm-eval names or task YAML paths) through lm-eval.

    Every task and data set is read before the first measurement, so a missing one fails in seconds.
    Returns ``{"model", "dtype", "perplexities": {set: value}, "evaluation", "tasks": {task: {"acc", ...}},
    "zero_shot", "versions"}`` (the keys of what was asked).
    """
    torch_device = resolve_device(device)
    check_options(limit, batch_size)
    loaded_tasks = load_tasks(tasks) if tasks else None
    model, tokenizer = load_model(model_source, dtype, trust_pickle=trust_pickle)
    ids = {name: data_module.evaluation_ids(name, tokenizer, seqlen) for name in ppl}
    result: dict[str, Any] = {"model": str(model_source), "dtype": dtype}
    if ids:
        model.to(torch_device)
        result["perplexities"] = {
            name: perplexity(model, set_ids, seqlen, max_windows, batch_size, torch_device, progress=progress)
            for name, set_ids in ids.items()
        }
        result["evaluation"] = {"seqlen": seqlen, "windows": max_windows}
    if loaded_tasks is not None:
        result["tasks"] = zero_shot(
            model, tokenizer, loaded_tasks, limit=limit, batch_size=batch_size, device=torch_device, progress=progress
        )
        result["zero_shot"] = {"limit": limit, "batch_size": batch_size}
    result["versions"] = versions()
    return result
