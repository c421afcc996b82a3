"""Running a block on every calibration batch in lockstep at its Linears, one batch at a time, in one thread.

Each batch runs in its own greenlet (a coroutine with its own stack): at a target's forward pre-hook it feeds the
target its input and yields to the scheduler, which resumes the next batch. When every batch waits at the same
target, its statistics are whole: the scheduler solves it (``complete``) and resumes the batches, which go on with
the pruned weight. Every Linear thus sees every batch before any batch goes past it (true-sequential), in one pass
of cache-sized batches; the whole batch at once runs 1.3x to 1.7x slower per token on a CPU. One thread keeps
torch's per-thread state (grad mode) and the allocator's memory shared by the batches. The batches must reach the
same targets in the same order (a dense block's control flow does not depend on its data); a block where they do
not is an error, never a wrong statistic.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import greenlet
import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..models.discover import Target
from .capture import run_block


def overwrite(hidden: list[torch.Tensor], index: int, output: torch.Tensor) -> None:
    """Keep a block's output in its input's buffer: the long-lived activation buffers then stay where they
    were first allocated, and do not land between the forward's freed temporaries, which fragments the
    CPU allocator's heap (peak RSS)."""
    old = hidden[index]
    if old.shape == output.shape and old.dtype == output.dtype and old.device == output.device:
        old.copy_(output)
    else:
        hidden[index] = output


class Lockstep:
    """``feed(target, x)`` gives a target a batch's input (False: the target is already solved, go on);
    ``complete(target)`` solves it once every batch has fed it."""

    def __init__(self, feed: Callable[[Target, torch.Tensor], bool], complete: Callable[[Target], None]) -> None:
        self.feed = feed
        self.complete = complete

    def arrive(self, target: Target, inputs: torch.Tensor) -> None:
        """The forward pre-hook: runs in a batch's greenlet."""
        if self.feed(target, inputs):
            greenlet.getcurrent().parent.switch(target)

    def run(self, block: nn.Module, hidden: list[torch.Tensor], arguments: dict) -> None:
        def batch(number: int) -> None:
            overwrite(hidden, number, run_block(block, hidden[number], arguments[hidden[number].shape[0]]))

        runners = [greenlet.greenlet(functools.partial(batch, number)) for number in range(len(hidden))]
        try:
            while True:
                reached = [runner.switch() for runner in runners]  # each runs to its next target, or its end
                if all(runner.dead for runner in runners):
                    return
                if any(runner.dead for runner in runners) or any(t is not reached[0] for t in reached):
                    names = sorted({getattr(t, "name", "the end of the block") for t in reached})
                    raise UnsupportedModelError(
                        f"the calibration batches of a block take different paths ({', '.join(names)}): run the "
                        "true-sequential walk with --batch-size equal to --nsamples"
                    )
                self.complete(reached[0])
        finally:
            for runner in runners:  # after an error or Ctrl-C: unwind the batches still waiting at a target
                if not runner.dead:
                    runner.throw(greenlet.GreenletExit)
