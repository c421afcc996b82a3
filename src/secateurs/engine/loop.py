"""The block-by-block walk: capture the first block's inputs, then for each block onload it, observe its
Linears' inputs, solve (prune) them, propagate the pruned block's outputs to the next block, offload it.

The loop knows no methods: the caller's ``LayerSolver`` makes each Linear's observer and solves it. Everything
else is a part the loop calls through a small interface: a strategy per block (``strategies``), a block store
(``stores``, ``offload``), a resume state (``resume``), hooks at block start and end (``BlockHook``: EBFT's
tuning, ``secateurs.tuning.ebft``) and a reduction of statistics over processes (``secateurs.pipeline``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.discover import find_blocks, find_targets
from ..report.schema import WalkRecord
from .capture import BlockInputs, capture_block_inputs
from .memory import release_free_memory
from .observe import Reduce, eager_experts
from .resume import WalkState
from .stores import BlockStore, MemoryBlocks
from .strategies import DEFAULT_BATCH_SIZE, STRATEGIES, BlockWork, LayerSolver, choose_strategy

STAGES = ("capture", "load", "observe", "solve", "propagate", "tune", "write")


class BlockHook(Protocol):
    """Called around each block's strategy: ``before`` it, and ``after`` it (in reverse order of the hooks), which
    returns the extra passes it made. ``start`` comes once, after the capture: a hook may add a stream of
    activations that walks beside the pruned one (saved and restored with it) and keep records in ``memo``, which
    a resumed walk restores. ``copies``: hidden states per token the hook keeps (the memory estimate counts them)."""

    copies: float

    def start(self, streams: list[list[torch.Tensor]], memo: dict[str, Any]) -> None: ...

    def before(self, work: BlockWork) -> None: ...

    def after(self, work: BlockWork) -> int: ...


@dataclass
class WalkSettings:
    """``sequential``: true-sequential (one-pass, or staged when it does not fit); ``observe_only``: one pass per
    block of the unchanged model, ``solve`` reads each Linear's statistics (OWL); ``batch_size``: calibration
    windows per forward (None: ``DEFAULT_BATCH_SIZE``); ``ignore``: globs of Linears neither observed nor solved."""

    sequential: bool = False
    observe_only: bool = False
    batch_size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True
    ignore: tuple[str, ...] = ()


@dataclass
class WalkParts:
    """The optional parts of a walk: where blocks live, what a resumed walk restores, how statistics are summed
    over processes, and hooks around each block."""

    store: BlockStore | None = None
    state: WalkState | None = None
    reduce: Reduce | None = None
    hooks: list[BlockHook] = field(default_factory=list)


def walk(
    model: nn.Module,
    input_ids: torch.Tensor,
    solver: LayerSolver,
    settings: WalkSettings,
    parts: WalkParts | None = None,
) -> WalkRecord:
    """Walk every decoder block of ``model`` on the calibration windows ``input_ids`` [n, seqlen], solving (pruning
    in place) every Linear the solver is given, block by block; returns how (seconds per stage, unrounded)."""
    parts = parts or WalkParts()
    blocks_name, blocks = find_blocks(model)
    report = _plan(model, blocks_name, blocks, input_ids, settings, parts)
    restore_experts = eager_experts(model)
    try:
        with torch.no_grad():
            _Loop(model, blocks_name, blocks, solver, settings, parts, report).run(input_ids)
    finally:
        restore_experts()
    return report


def _plan(
    model: nn.Module,
    blocks_name: str,
    blocks: nn.ModuleList,
    input_ids: torch.Tensor,
    settings: WalkSettings,
    parts: WalkParts,
) -> WalkRecord:
    """The strategy and batch size: chosen for this run, or the interrupted run's when resuming (so that the result
    is identical)."""
    first_targets = find_targets(blocks[0], f"{blocks_name}.0", settings.ignore) or find_targets(blocks[0], "")
    samples = input_ids.shape[0]
    mode, batch_size = "observe-only", settings.batch_size
    if not settings.observe_only:
        mode, batch_size = choose_strategy(
            model,
            first_targets,
            input_ids,
            batch_size,
            settings.device,
            settings.sequential,
            copies=sum(hook.copies for hook in parts.hooks),
            distributed=parts.reduce is not None,
        )
    state = parts.state
    if state is not None and state.blocks_done:
        mode, batch_size = state.extra.get("mode", mode), state.extra["batch_size"]
    batch_size = min(batch_size or DEFAULT_BATCH_SIZE, samples)
    if state is not None:
        state.extra.update(mode=mode, batch_size=batch_size)
    report = WalkRecord(mode=mode, batch_size=batch_size, seconds=dict.fromkeys(STAGES, 0.0))
    if mode == "staged":
        report.notes.append(
            f"the whole calibration batch ({samples} samples) does not fit in memory at once: "
            f"true-sequential walk in stages, batches of {batch_size}"
        )
    return report


@dataclass
class _Loop:
    model: nn.Module
    blocks_name: str
    blocks: nn.ModuleList
    solver: LayerSolver
    settings: WalkSettings
    parts: WalkParts
    report: WalkRecord

    def run(self, input_ids: torch.Tensor) -> None:
        store = self.parts.store or MemoryBlocks(self.settings.device)
        seconds = self.report.seconds
        start = time.perf_counter()
        store.load_outside()
        try:
            inputs = capture_block_inputs(
                self.model, self.blocks, input_ids, self.report.batch_size, self.settings.device
            )
        finally:
            store.release_outside()
        seconds["capture"] = time.perf_counter() - start
        streams = [inputs.hidden]
        state = self.parts.state
        for hook in self.parts.hooks:
            hook.start(streams, state.extra if state is not None else {})
        first = state.resume(self.blocks, streams) if state is not None else 0
        bar = tqdm(total=len(self.blocks), desc="pruning", unit="block", disable=not self.settings.progress)
        bar.update(first)
        passes = 0
        for index in range(first, len(self.blocks)):
            passes += self._block(index, inputs, streams, store)
            bar.update()
        bar.close()
        self.report.passes_per_block = passes / max(1, len(self.blocks) - first)

    def _block(self, index: int, inputs: BlockInputs, streams: list[list[torch.Tensor]], store: BlockStore) -> int:
        block, name, seconds = self.blocks[index], f"{self.blocks_name}.{index}", self.report.seconds
        start = time.perf_counter()
        store.load(index, block)
        seconds["load"] += time.perf_counter() - start
        targets = find_targets(block, name, self.settings.ignore)
        work = BlockWork(
            index,
            name,
            block,
            targets,
            streams[0],
            inputs.of_block(index),
            self.solver,
            seconds,
            self.parts.reduce,
            self.settings.ignore,
        )
        hooks = self.parts.hooks if self.report.mode != "observe-only" else []
        for hook in hooks:
            hook.before(work)
        passes = STRATEGIES[self.report.mode](work)
        for hook in reversed(hooks):
            passes += hook.after(work)
        start = time.perf_counter()
        if self.parts.state is not None:
            self.parts.state.save_block(index, name, block, [h for stream in streams for h in stream])
        store.release(index, block)
        release_free_memory()
        seconds["write"] += time.perf_counter() - start
        return passes
