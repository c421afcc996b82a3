"""The dense model's input of every Linear, beside the pruned stream's: what a layer fitted to the dense model's
output (``fit: dense``) pairs with its own input, token by token.

A stream of the dense model's hidden states walks beside the pruned one (one more hidden state per token, saved
and restored with it when a walk resumes). Before a block is changed, the still-dense block runs once on that
stream with hooks keeping each target's input per batch; its outputs become the stream's next batches. No copy of
a block or of the model is made: the block is dense at that point.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..errors import RecipeError
from ..models.discover import Target
from .capture import run_block
from .lockstep import overwrite
from .observe import observing
from .strategies import BlockWork

ROUTED = (
    "a fit to the dense model pairs each layer's input in the dense and the pruned model token by token, and this "
    "model routes tokens between experts (they may go apart): use {method.fit} self"
)


class DenseInputs:
    """Block hook (``engine.loop.BlockHook``) that sets ``BlockWork.dense_input`` for the block's walk."""

    def __init__(self, hidden_size: int, widest: int) -> None:
        # beside the stream: a block's kept inputs, Llama-shaped (q/k/v, o, gate/up of the hidden width; down's)
        self.copies = 1 + 3 + widest / hidden_size
        self.stream: list[torch.Tensor] = []
        self.inputs: dict[tuple[Target, int], torch.Tensor] = {}

    def start(self, streams: list[list[torch.Tensor]], memo: dict[str, Any]) -> None:
        self.stream = [h.clone() for h in streams[0]]
        streams.append(self.stream)

    def before(self, work: BlockWork) -> None:
        start = time.perf_counter()
        self.inputs.clear()
        if any(target.expert is not None for target in work.targets):
            raise RecipeError(ROUTED)
        for j, batch in enumerate(self.stream):
            # one copy of a tensor several Linears read (q/k/v, gate/up); the tensor itself is held too, so that its
            # id is not reused by a later one while the block runs
            kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

            def keep(target: Target, inputs: torch.Tensor, j: int = j, kept: dict = kept) -> None:
                if (target, j) in self.inputs:
                    raise RecipeError(
                        f"{target.name} runs twice in its block: a fit to the dense model pairs one dense input "
                        "with each pruned one; use {method.fit} self"
                    )
                if id(inputs) not in kept:
                    kept[id(inputs)] = (inputs, inputs.clone())  # the stream's batch itself is overwritten below
                self.inputs[(target, j)] = kept[id(inputs)][1]

            with observing(work.targets, keep):
                output = run_block(work.block, batch, work.arguments[batch.shape[0]])
            overwrite(self.stream, j, output)
        skipped = sorted({t.name for t in work.targets for j in range(len(self.stream)) if (t, j) not in self.inputs})
        if skipped:
            raise RecipeError(
                f"{', '.join(skipped)} did not run on every calibration batch in the dense model (routed tokens?): "
                "a fit to the dense model pairs each layer's inputs in both models token by token; use "
                "{method.fit} self"
            )
        work.dense_input = self.input_of
        work.seconds["observe"] += time.perf_counter() - start

    def input_of(self, target: Target, number: int) -> torch.Tensor:
        dense = self.inputs.get((target, number))
        if dense is None:
            raise RecipeError(ROUTED)
        return dense

    def after(self, work: BlockWork) -> int:
        self.inputs.clear()
        work.dense_input = None
        return 1  # the dense pass
