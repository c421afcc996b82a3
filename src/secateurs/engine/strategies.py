"""Walk strategies: how one block is observed, solved and propagated. Each takes the block's ``BlockWork`` and
returns the passes over the calibration batches it made.

* ``two-pass`` (the Wanda paper's procedure): one pass in batches with hooks gathering statistics, then every
  weight is solved, then a second pass computes the pruned block's outputs;
* ``one-pass`` true-sequential: every Linear gathers its statistics from every batch and is pruned before any
  batch goes past it (``Lockstep``), so later Linears see pruned earlier ones and the block's output is already
  the next block's input. Fused MoE experts (routing differs between batches) take the whole batch at once;
* ``staged`` true-sequential, the fallback when the one-pass walk's activations do not fit in memory: one pass in
  batches per stage of Linears that share an input (q/k/v, o, gate/up, down), then one pass for the outputs;
* ``observe-only``: one pass of the unchanged block; ``solve`` reads the statistics (OWL's outlier count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..models.discover import Target, find_targets
from .capture import run_block
from .lockstep import Lockstep, overwrite
from .memory import one_pass_fits
from .observe import DenseInput, Observer, Reduce, Statistics, observing

# Calibration windows per forward in the batched walks: on a 2-core CPU with SmolLM2 (512 tokens a window), 4 ran
# a block faster than 16 and than the whole batch (cache-friendly sizes).
DEFAULT_BATCH_SIZE = 4


class LayerSolver(Protocol):
    """What the caller of the walk does with each target: the statistics to stream, and the solve (which writes
    the pruned weight into the model)."""

    def observer(self, target: Target) -> Observer | None: ...

    def solve(self, target: Target, observer: Observer | None) -> None: ...


@dataclass
class BlockWork:
    """One block's turn in the walk, as the strategies and the block hooks see it."""

    index: int
    name: str
    block: nn.Module
    targets: list[Target]
    hidden: list[torch.Tensor]  # the pruned stream's batches; a strategy leaves the block's outputs in them
    arguments: dict[int, dict[str, Any]]  # the block's arguments per batch size
    solver: LayerSolver
    seconds: dict[str, float]
    reduce: Reduce | None = None
    ignore: tuple[str, ...] = ()
    dense_input: DenseInput | None = None  # set by a block hook for ``fit: dense`` (``engine.dense``)

    def solve(self, target: Target, observer: Observer | None) -> None:
        start = time.perf_counter()
        self.solver.solve(target, observer)
        self.seconds["solve"] += time.perf_counter() - start

    def retarget(self) -> list[Target]:
        """The block's targets found again (a structured cut gives its modules new, smaller weights)."""
        return find_targets(self.block, self.name, self.ignore)

    def run(self, keep: bool) -> None:
        """One pass of the block over the batches; ``keep``: its outputs replace the inputs."""
        for j, batch in enumerate(self.hidden):
            output = run_block(self.block, batch, self.arguments[batch.shape[0]])
            if keep:
                overwrite(self.hidden, j, output)


class _Observed(Exception):
    """Raised in a batch's observation pass once its observed Linears have all had their input."""


def _observe(work: BlockWork, targets: list[Target], statistics: Statistics, keep: bool = False) -> None:
    """One pass feeding ``targets``' statistics. When the outputs are not kept, each batch after the first stops
    once it has made every observed call the first batch made: the rest of the block (Llama's down_proj; all but
    the attention when only q/k/v are observed) would be computed for nothing. Only when the first batch reached
    every target: a router may send a later batch's tokens to an expert the first one never called, which
    must then see them. Fused experts (routed inside one module) always run to the end."""
    start = time.perf_counter()
    seen: set[Target] = set()
    calls = [0, -1]  # observed calls in this batch, and in the first batch once it was seen to reach every target
    stops = not keep and all(target.expert is None for target in targets)

    def feed(target: Target, inputs: torch.Tensor) -> None:
        statistics.feed(target, inputs)
        seen.add(target)
        calls[0] += 1
        if calls[0] == calls[1] and len(seen) == len(targets):
            raise _Observed

    with observing(targets, feed):
        for j, batch in enumerate(work.hidden):
            seen.clear()
            calls[0] = 0
            try:
                output = run_block(work.block, batch, work.arguments[batch.shape[0]])
            except _Observed:
                continue
            if j == 0 and stops and len(seen) == len(targets):
                calls[1] = calls[0]
            if keep:
                overwrite(work.hidden, j, output)
    statistics.end_pass()
    work.seconds["observe"] += time.perf_counter() - start
    statistics.reduce_all(targets, work.reduce)


def observe_only(work: BlockWork) -> int:
    statistics = Statistics(work.solver.observer, dense_input=work.dense_input)
    _observe(work, work.targets, statistics, keep=True)
    for target in work.targets:
        work.solve(target, statistics.observer(target))
    return 1


def two_pass(work: BlockWork) -> int:
    statistics = Statistics(work.solver.observer, dense_input=work.dense_input)
    _observe(work, work.targets, statistics)
    for target in work.targets:
        work.solve(target, statistics.observer(target))
    del statistics
    start = time.perf_counter()
    work.run(keep=True)
    work.seconds["propagate"] += time.perf_counter() - start
    return 2


def one_pass(work: BlockWork) -> int:
    statistics = Statistics(work.solver.observer, keep_last_only=True, dense_input=work.dense_input)
    solved: set[Target] = set()

    def feed(target: Target, inputs: torch.Tensor) -> bool:
        if target in solved:  # a weight used twice is pruned once, on its first use
            return False
        statistics.feed(target, inputs)
        return True

    def complete(target: Target) -> None:  # every batch has fed the target
        if work.reduce is not None and statistics.leader[target] is target:
            work.reduce(statistics.observer(target))
        work.solve(target, statistics.observer(target))
        solved.add(target)

    start = time.perf_counter()
    solve_before = work.seconds["solve"]
    if len(work.hidden) == 1:  # one batch (the whole batch: fused experts) needs no lockstep
        with observing(work.targets, lambda target, inputs: complete(target) if feed(target, inputs) else None):
            work.run(keep=True)
    else:
        lockstep = Lockstep(feed, complete)
        with observing(work.targets, lockstep.arrive):
            lockstep.run(work.block, work.hidden, work.arguments)
    statistics.end_pass()
    for target in work.targets:  # never used (an expert no token was routed to)
        if target not in solved:
            work.solve(target, None)
    work.seconds["propagate"] += time.perf_counter() - start - (work.seconds["solve"] - solve_before)
    return 1


def staged(work: BlockWork) -> int:
    """True-sequential in batches: the first pass gives every target's statistics and the stages (groups of
    Linears fed the same tensor; all experts of one fused parameter), in call order; stage 0 is solved from
    it, and every later stage gets one more pass with the earlier stages pruned."""
    statistics = Statistics(work.solver.observer, dense_input=work.dense_input)
    _observe(work, work.targets, statistics)
    stages: dict[object, list[Target]] = {}
    for target, leader in statistics.leader.items():  # dicts keep the call order
        key = ("experts", id(target.parameter)) if target.expert is not None else leader
        stages.setdefault(key, []).append(target)
    passes = 1
    for number, stage in enumerate(stages.values()):
        if number > 0:  # stage 0's statistics from the first pass are already exact
            statistics = Statistics(work.solver.observer, dense_input=work.dense_input)
            _observe(work, stage, statistics)
            passes += 1
        for target in stage:
            work.solve(target, statistics.observer(target))
    seen = {target for stage in stages.values() for target in stage}
    for target in work.targets:
        if target not in seen:
            work.solve(target, None)
    start = time.perf_counter()
    work.run(keep=True)
    work.seconds["propagate"] += time.perf_counter() - start
    return passes + 1


STRATEGIES: dict[str, Callable[[BlockWork], int]] = {
    "two-pass": two_pass,
    "one-pass": one_pass,
    "staged": staged,
    "observe-only": observe_only,
}


def choose_strategy(
    model: nn.Module,
    first_targets: list[Target],
    input_ids: torch.Tensor,
    batch_size: int | None,
    device: torch.device,
    sequential: bool,
    copies: float = 0,
    distributed: bool = False,
) -> tuple[str, int | None]:
    """The true-sequential strategy (one-pass when its activations fit, else staged) and its batch size (None: the
    default). ``copies``: hidden states per token that block hooks keep (tuning); ``distributed``: with fused
    experts, an expert no token reached on a rank would skip a collective in the one-pass walk."""
    if not sequential:
        return "two-pass", batch_size
    samples = input_ids.shape[0]
    experts = any(t.expert is not None for t in first_targets)
    if experts:
        batch_size = samples  # routing differs between batches: no lockstep, the whole batch at once
    fits = one_pass_fits(model, first_targets, input_ids, batch_size or DEFAULT_BATCH_SIZE, device, copies)
    if not fits:
        batch_size = max(1, samples // 8)
    return ("one-pass" if fits and not (experts and distributed) else "staged"), batch_size
