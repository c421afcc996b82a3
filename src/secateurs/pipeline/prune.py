"""Pruning: ``prune`` an in-memory model, or ``run_prune`` the whole job the CLI runs, as its named steps: check
(everything a user can get wrong, before any work), load, calibrate, evaluate, prune, evaluate, save."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data
from ..checks import check_choice, check_whole
from ..data import Calibration
from ..engine import WalkParts, WalkSettings, WalkState, fix_mmap_threshold
from ..engine.memory import available_memory
from ..engine.offload import DiskBlocks, model_bytes_on_disk, open_offloaded
from ..engine.resume import fingerprint, has_state, source_identity, state_folder
from ..errors import CalibrationError, OutputError, RecipeError, ResumeError
from ..evaluate import Evaluation, perplexity
from ..io import FORMATS, check_output_folder, load, save, write_folder_atomically
from ..io.gguf_export import OUTTYPES, check_gguf_output
from ..io.hf import write_report
from ..io.sharded import write_sharded
from ..models import find_blocks, resolve_device, resolve_dtype
from ..models.load import check_causal_lm
from ..recipe import Recipe, SparseRecipe, StructuredRecipe, load_recipe
from ..report import EvaluationRecord, Report, machine, peak_cuda_mib, peak_rss_mib, versions
from ..structured import prune_structured
from ..tuning import EbftTuner
from . import distributed
from .export import export_gguf
from .options import JobOptions, RunOptions, distill_model
from .sparse import all_targets, check_parts, prune_sparse

OFFLOADS = ("none", "disk", "auto")


def prune(
    model: nn.Module,
    recipe: Recipe | dict[str, Any],
    calibration: torch.Tensor | None = None,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    hessians_on_cpu: bool = False,
    progress: bool = True,
    parts: WalkParts | None = None,
) -> Report:
    """Prune ``model`` in place as ``recipe`` says (a recipe, or the dict ``load_recipe`` reads) and return the
    report.

    ``calibration``: token ids ``[nsamples, seqlen]`` (``secateurs.calibration_windows``); every method that reads
    activations needs them, magnitude does not. Only one block at a time is moved to ``device``; the model is
    returned to the CPU. ``parts``: a block store (a model larger than memory), a resume state and a reduction
    over processes for the walk (``secateurs.engine.WalkParts``).
    """
    check_causal_lm(model)
    recipe = load_recipe(recipe)
    options = RunOptions(resolve_device(device), batch_size, hessians_on_cpu, progress)
    if isinstance(recipe, StructuredRecipe):
        return _prune_structured(model, recipe, calibration, options)
    return prune_sparse(model, recipe, calibration, options, parts or WalkParts())


def _prune_structured(
    model: nn.Module, recipe: StructuredRecipe, calibration: torch.Tensor | None, options: RunOptions
) -> Report:
    if calibration is None:
        raise CalibrationError(
            f"{recipe.method.name} pruning scores with calibration activations: give calibration data"
        )
    start = time.perf_counter()
    teacher = copy.deepcopy(model) if recipe.distill is not None else None  # the dense model, before the cut
    tuner = EbftTuner(recipe.ebft) if recipe.ebft is not None else None
    settings = WalkSettings(False, False, options.batch_size, options.device, options.progress)
    structured, walk = prune_structured(model, recipe.method, calibration, settings, [tuner] if tuner else [])
    if walk is not None and tuner is not None:
        walk.ebft = tuner.record()
    distilled = None
    if teacher is not None:
        # nothing is zero by design after a cut: every weight matrix of the smaller blocks is tuned
        masks = {t.parameter: torch.ones_like(t.parameter, dtype=torch.bool) for t in all_targets(model)}
        distilled = distill_model(model, teacher, masks, calibration, recipe.distill, options)
        del teacher
    return Report(
        recipe=recipe.to_dict(),
        device=str(options.device),
        calibration=list(calibration.shape),
        prune_seconds=round(time.perf_counter() - start, 3),
        walk=walk,
        structured=structured,
        distill=distilled,
        peak_rss_mib=peak_rss_mib(),
        peak_cuda_mib=peak_cuda_mib(),
    )


@dataclass(kw_only=True)
class PruneJob(JobOptions):
    """The whole job: prune ``model`` (a folder, a hub id, a GGUF file) as ``recipe`` says, evaluate it before and
    after (``evaluation``), and save it to ``out`` in ``format`` (``hf`` or ``packed``). ``offload``: ``disk``
    reads each block from the source's shards in turn (a model larger than memory), ``auto`` when the model is
    larger than free memory, ``none``. ``resume``: go on from the last finished block of an interrupted run."""

    model: str
    recipe: Recipe
    out: str | Path
    evaluation: Evaluation | None = None
    batch_size: int | None = None
    hessians_on_cpu: bool = False
    offload: str = "auto"
    format: str = "hf"
    overwrite: bool = False
    resume: bool = False
    gguf: str | Path | None = None
    gguf_outtype: str = "f32"
    gguf_check: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.recipe = load_recipe(self.recipe)
        check_choice(self.gguf_outtype, "gguf_outtype", OUTTYPES)
        if self.recipe.needs_calibration and self.recipe.calibration is None:
            self.recipe = dataclasses.replace(self.recipe, calibration=Calibration())
        check_choice(self.format, "format", FORMATS)
        check_choice(self.offload, "offload", OFFLOADS)
        if self.batch_size is not None:
            check_whole(self.batch_size, "batch_size", 1, "4")


@dataclass
class _Run:
    """What the checks decided, and the times of the steps so far."""

    job: PruneJob
    out: Path
    device: torch.device
    offloaded: bool
    ranks: distributed.Ranks | None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def writer(self) -> bool:
        return self.ranks is None or self.ranks.is_writer

    def timed(self, step: str, started: float) -> None:
        self.seconds[step] = time.perf_counter() - started


def _offloaded(job: PruneJob) -> bool:
    """Whether to stream the blocks from disk; refuses what an offloaded run cannot do."""
    if job.offload == "none":
        return False
    if job.offload == "auto":
        folder = Path(job.model).expanduser()
        needed = model_bytes_on_disk(folder) * _dtype_ratio(folder, job.dtype) if folder.is_dir() else 0
        if needed < 0.8 * available_memory():
            return False
    blockers = [
        (isinstance(job.recipe, StructuredRecipe), "structured pruning rebuilds modules in memory"),
        (
            job.evaluation is not None,
            "{evaluation.dataset} needs the whole model in memory: evaluate the output with secateurs eval",
        ),
        (job.format != "hf", "{format} packed needs the whole model: run secateurs pack on the output"),
    ]
    # under auto, say why the disk was chosen and how to keep the model in memory instead
    prefix = (
        "{offload} disk: "
        if job.offload == "disk"
        else ("the model is larger than free memory, so {offload} auto streams it from disk, where ")
    )
    suffix = "" if job.offload == "disk" else "; or give {offload} none to load it into memory anyway"
    for blocked, why in blockers:
        if blocked:
            raise RecipeError(prefix + why + suffix)
    return True


def _dtype_ratio(folder: Path, dtype: str) -> float:
    """Bytes in memory per byte on disk: a float32 checkpoint pruned in bfloat16 takes half."""
    import json

    config = folder / "config.json"
    if not config.is_file():
        return 1.0
    document = json.loads(config.read_text())
    stored = document.get("dtype") or document.get("torch_dtype")
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2}
    return sizes.get(dtype, 4) / sizes.get(str(stored), 4)


def _check(job: PruneJob) -> _Run:
    """Everything checked before the long work starts."""
    out = check_output_folder(job.out, job.overwrite, source=job.model)
    device = resolve_device(job.device)
    resolve_dtype(job.dtype)
    structured = isinstance(job.recipe, StructuredRecipe)
    if job.resume and structured:
        raise RecipeError("{resume} continues sparse pruning; structured pruning restarts: run without it")
    if job.resume and not has_state(out):
        raise ResumeError(f"nothing to resume for {out} (no {state_folder(out).name}): run without --resume")
    offloaded = _offloaded(job)
    if job.gguf is not None:
        check_gguf_output(job.gguf, job.overwrite)
        if offloaded:
            raise OutputError(
                f"writing a GGUF file needs the whole model in memory, and this run streams it from disk: prune "
                f"without the GGUF file, then run secateurs export {out} --to gguf {job.gguf}"
            )
    ranks = distributed.from_environment(device)
    if ranks is not None:
        if structured:
            raise RecipeError("structured pruning runs in one process: run it without torchrun or {workers}")
        device = ranks.device(device)
    check_parts(job.recipe, ranks is not None, offloaded)
    return _Run(job, out, device, offloaded, ranks)


def _load(run: _Run) -> tuple[nn.Module, Any, DiskBlocks | None]:
    job, started = run.job, time.perf_counter()
    store = None
    if run.offloaded:
        fix_mmap_threshold()  # memory first: freed activations go back to the system (see the function)
        model, tokenizer, folder = open_offloaded(job.model, resolve_dtype(job.dtype))
        store = DiskBlocks(model, folder, resolve_dtype(job.dtype), run.device)
    else:
        model, tokenizer = load(job.model, job.dtype, trust_pickle=job.trust_pickle)
    run.timed("load", started)
    return model, tokenizer, store


def _evaluate(run: _Run, model: nn.Module, ids: torch.Tensor | None, step: str) -> float | None:
    if ids is None:
        return None
    started, evaluation = time.perf_counter(), run.job.evaluation
    model.to(run.device)
    value = perplexity(model, ids, evaluation.seqlen, evaluation.windows, 1, run.device, progress=run.job.progress)
    model.to("cpu")
    run.timed(step, started)
    return value


def _resume_state(run: _Run, calibration: torch.Tensor | None) -> WalkState | None:
    """The walk's resume state, saved after every block (sparse recipes that walk, and every offloaded run)."""
    job, recipe = run.job, run.job.recipe
    walks = isinstance(recipe, SparseRecipe) and (recipe.statistics is not None or recipe.ebft is not None)
    if not (walks or run.offloaded):
        return None
    key = fingerprint(
        ranks=None if run.ranks is None else [run.ranks.rank, run.ranks.world],
        offloaded=run.offloaded,
        source=source_identity(job.model),
        recipe=recipe.to_dict(),
        calibration=calibration,
        dtype=job.dtype,
        device=run.device.type,
        batch_size=job.batch_size,
        hessians_on_cpu=job.hessians_on_cpu,
    )
    folder = state_folder(run.out) if run.ranks is None else state_folder(run.out) / f"rank-{run.ranks.rank}"
    state = WalkState(folder, key)
    state.load() if job.resume else state.start()
    state.extra["restore_blocks"] = not run.offloaded  # offloaded blocks stay on disk, in the state's files
    return state


def run_prune(job: PruneJob) -> Report:
    """Load ``job.model``, prune it, evaluate it, and save it to ``job.out``; returns the report (also written as
    ``out/secateurs.json`` with ``out/report.md``)."""
    run = _check(job)
    recipe = job.recipe
    corpus = data.load_corpus(recipe.calibration.source) if recipe.needs_calibration else None
    model, tokenizer, store = _load(run)
    calibration, documents = None, None
    if corpus is not None:
        started = time.perf_counter()
        calibration, documents = recipe.calibration.sample(corpus, tokenizer)
        run.timed("calibration_data", started)
    evaluation = job.evaluation if run.writer else None
    eval_ids = data.evaluation_ids(evaluation.dataset, tokenizer, evaluation.seqlen) if evaluation else None
    before = _evaluate(run, model, eval_ids, "eval_before")
    state = _resume_state(run, calibration)
    reduce = None if run.ranks is None else (lambda observer: observer.all_reduce())
    share = run.ranks.share(calibration) if run.ranks is not None and calibration is not None else calibration
    progress = job.progress and run.writer
    options = dict(device=run.device, batch_size=job.batch_size, hessians_on_cpu=job.hessians_on_cpu)
    report = prune(model, recipe, share, **options, progress=progress, parts=WalkParts(store, state, reduce))
    run.seconds["prune"] = report.prune_seconds
    report.peak_rss_mib_after_prune = peak_rss_mib()
    if run.ranks is not None:
        report.ranks = run.ranks.world
        report.peak_rss_mib_per_rank = run.ranks.gather(report.peak_rss_mib_after_prune)
        if not run.writer:  # every rank holds the same pruned weights; rank 0 writes them
            if state is not None:
                state.finish()
            return report
    report.perplexity_before, report.perplexity_after = before, _evaluate(run, model, eval_ids, "eval_after")
    report.calibration_documents = documents
    _describe(report, run)
    if job.gguf is not None:
        report.gguf = export_gguf(model, tokenizer, Path(job.gguf), job.gguf_outtype, str(job.model), job.gguf_check)
    _save(run, model, tokenizer, report, store, state)
    if state is not None:
        state.finish()
    return report


def _describe(report: Report, run: _Run) -> None:
    job = run.job
    if job.evaluation is not None:
        report.evaluation = EvaluationRecord(job.evaluation.dataset, job.evaluation.seqlen, job.evaluation.windows)
    report.model, report.dtype = str(job.model), job.dtype
    report.versions, report.machine = versions(), machine()
    report.checkpoint_format = job.format
    report.offload = "disk" if run.offloaded else None
    report.seconds = {step: round(seconds, 3) for step, seconds in run.seconds.items()}


def _save(run: _Run, model: nn.Module, tokenizer: Any, report: Report, store: Any, state: Any) -> None:
    job, recipe = run.job, run.job.recipe
    if not run.offloaded:
        pattern = recipe.pattern if isinstance(recipe, SparseRecipe) else "unstructured"
        ignore = recipe.ignore if isinstance(recipe, SparseRecipe) else ()
        save(
            model,
            tokenizer,
            run.out,
            report,
            format=job.format,
            pattern=pattern,
            ignore=ignore,
            overwrite=job.overwrite,
        )
        return
    started = time.perf_counter()
    blocks_name, blocks = find_blocks(model)
    block_files = [state.folder / f"block-{index:05d}.safetensors" for index in range(state.blocks_done)]

    def fill(partial: Path) -> None:
        write_sharded(partial, model, blocks_name, store.index, store.dtype, block_files)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        write_report(partial, report, started)

    write_folder_atomically(run.out, fill)
