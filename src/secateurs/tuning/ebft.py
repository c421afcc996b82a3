"""EBFT (Guo et al. 2024, "EBFT: Effective and Block-wise Fine-Tuning for Sparse LLMs"): after a block is pruned,
its kept weights are tuned by backpropagation so that the pruned block's output matches the dense block's output
on the same calibration inputs; every pruned weight stays zero.

SparseGPT and the OBS updates fit each Linear alone, by least squares, on inputs seen through the earlier pruned
Linears; this fits the whole block at once, through its norms, attention and activation functions. ``EbftTuner``
is the walk's block hook: it keeps the block's inputs and the outputs aimed at before the block is pruned, tunes
the block after, and hands the tuned block's outputs to the next block.

What the block is fitted to (``target``): ``block``, the dense block's output on the pruned model's inputs of the
block, as in EBFT's reference code; or ``model``, the dense model's own activation after the block (a dense
stream walks beside the pruned one), so that each block also corrects the error the pruned blocks before it left
in its inputs (the "global propagation" of Shin et al. 2024, "Rethinking Pruning Large Language Models").
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_choice, check_positive, check_whole
from ..engine.capture import run_block
from ..engine.lockstep import overwrite
from ..engine.strategies import BlockWork
from ..models.discover import Target
from ..report.schema import EbftRecord, TunedBlock
from .adam import PRECISIONS, MaskedAdam, TuneSettings, autocast, kept_masks, resolve_precision

# Adam's step, constant: on SmolLM2's first blocks 1e-4 needed four times the epochs of 1e-3 to the same error,
# 3e-3 did no better, and a cosine decay to zero did worse than the constant rate at the same epochs
DEFAULT_LR = 1e-3
TARGETS = ("block", "model")


@dataclass(frozen=True)
class Ebft:
    """``epochs`` of Adam at ``lr`` per pruned block, one step per calibration batch; ``target``: ``block`` or
    ``model`` (see the module docstring); ``precision``: the tuning's products (``secateurs.tuning.adam``)."""

    epochs: int
    lr: float = DEFAULT_LR
    target: str = "block"
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_whole(self.epochs, "epochs", 1, "8")
        check_positive(self.lr, "lr", "1e-3")
        check_choice(self.target, "target", TARGETS)
        check_choice(self.precision, "precision", PRECISIONS)

    @property
    def settings(self) -> TuneSettings:
        return TuneSettings(self.epochs, self.lr, precision=self.precision)


def tune_block(
    block: nn.Module,
    targets: list[Target],
    inputs: list[torch.Tensor],
    dense_outputs: list[torch.Tensor],
    arguments: dict[int, dict[str, Any]],
    settings: TuneSettings,
) -> list[float]:
    """Tune the kept weights of ``targets`` in ``block`` in place to minimise the mean squared error between
    ``run_block(block, inputs[j], ...)`` and ``dense_outputs[j]``; returns each epoch's mean loss.

    The steps are ``MaskedAdam``'s: pruned weights stay zero, and nothing but the targets' weights changes.
    The forward and backward products are in ``settings.precision`` (resolved: float32 or bfloat16).
    """
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    device = inputs[0].device
    with torch.enable_grad(), MaskedAdam(block, kept_masks(targets), settings.lr) as adam:
        for _ in range(settings.epochs):
            total = 0.0
            for j in torch.randperm(len(inputs), generator=generator).tolist():
                with autocast(settings.precision, device):
                    output = run_block(block, inputs[j], arguments[inputs[j].shape[0]])
                total += adam.step(F.mse_loss(output.float(), dense_outputs[j].float()))
            losses.append(total / len(inputs))
    return losses


def _squared(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((y.float() - x.float()).pow(2).sum())


class EbftTuner:
    """The walk's block hook (``secateurs.engine.BlockHook``). Before the block is pruned it keeps the block's
    inputs and the outputs aimed at: the unpruned block's on the same inputs or, toward the model, on the dense
    stream's (which then become that stream's next inputs). After, it tunes the pruned block and puts the tuned
    block's outputs in the pruned stream. The record's error is the share of the dense block's update (output -
    input) that the block misses, sum ||y - y_dense||^2 / sum ||y_dense - x_dense||^2 over the calibration
    tokens, before and after tuning; a tuning that does not lower it is undone."""

    copies = 2  # the block's inputs and the outputs aimed at, beside the stream

    def __init__(self, ebft: Ebft) -> None:
        self.ebft = ebft
        self.reference: list[torch.Tensor] | None = None  # the dense stream, toward the model
        self.blocks: list[dict[str, Any]] = []
        self.inputs: list[torch.Tensor] = []
        self.dense: list[torch.Tensor] = []
        self.update = 0.0
        self.precision = ebft.precision  # resolved at every block's start, on its activations' device

    def start(self, streams: list[list[torch.Tensor]], memo: dict[str, Any]) -> None:
        if self.ebft.target == "model":
            self.reference = [h.clone() for h in streams[0]]
            streams.append(self.reference)
        self.blocks = memo.setdefault("tuned", [])  # the blocks tuned before an interruption stay in the record

    def before(self, work: BlockWork) -> None:
        start = time.perf_counter()
        self.inputs = [batch.clone() for batch in work.hidden]
        device = self.inputs[0].device
        self.precision = resolve_precision(self.ebft.precision, device)
        with autocast(self.precision, device):
            if self.reference is None:
                self.dense = [run_block(work.block, batch, work.arguments[batch.shape[0]]) for batch in self.inputs]
                self.update = sum(_squared(x, y) for x, y in zip(self.inputs, self.dense, strict=True))
            else:
                self.update = 0.0
                for j, batch in enumerate(self.reference):
                    output = run_block(work.block, batch, work.arguments[batch.shape[0]])
                    self.update += _squared(batch, output)
                    overwrite(self.reference, j, output)
                self.dense = self.reference
        work.seconds["tune"] += time.perf_counter() - start

    def after(self, work: BlockWork) -> int:
        start = time.perf_counter()
        before = self._error(work.hidden)
        untuned = {name: tensor.clone() for name, tensor in work.block.state_dict().items()}
        settings = replace(self.ebft.settings, precision=self.precision)
        losses = tune_block(work.block, work.retarget(), self.inputs, self.dense, work.arguments, settings)
        self._propagate(work)
        after = self._error(work.hidden)
        kept = after < before
        if not kept:  # the block is left as pruned, and so are its outputs
            work.block.load_state_dict(untuned)
            self._propagate(work)
        record = TunedBlock(work.index, round(before, 6), round(after, 6), kept, [round(x, 6) for x in losses])
        self.blocks.append(vars(record))
        self.inputs, self.dense = [], []
        work.seconds["tune"] += time.perf_counter() - start
        return 2

    def _propagate(self, work: BlockWork) -> None:
        with autocast(self.precision, self.inputs[0].device):
            for j, batch in enumerate(self.inputs):
                overwrite(work.hidden, j, run_block(work.block, batch, work.arguments[batch.shape[0]]))

    def _error(self, hidden: list[torch.Tensor]) -> float:
        missed = sum(_squared(h, y) for h, y in zip(hidden, self.dense, strict=True))
        return missed / self.update if self.update else 0.0

    def record(self) -> EbftRecord:
        blocks = [TunedBlock(**block) for block in self.blocks]
        return EbftRecord(self.ebft.epochs, self.ebft.lr, self.ebft.target, blocks, self.precision)
