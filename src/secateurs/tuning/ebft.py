"""EBFT (Guo et al. 2024, "Effective and Block-wise Fine-Tuning for Sparse LLMs"): after a block is pruned,
its kept weights are tuned by backpropagation so that the pruned block's output matches the dense block's
output on the same calibration inputs; every pruned weight stays zero.

SparseGPT and the OBS updates fit each Linear alone, by least squares, on inputs seen through the earlier
pruned Linears; this fits the whole block at once, through its norms, attention and activation functions.
The walk calls ``tune_block`` between the solve and the propagation (``walk(..., tune=...)``).

What the block is fitted to (``secateurs.engine.TUNE_TARGETS``): ``block``, the dense block's output on the
pruned model's inputs of the block, as in EBFT's reference code; or ``model``, the dense model's own activation
after the block, so that each block also corrects the error the pruned blocks before it left in its inputs (the
"global propagation" of Shin et al. 2024, "Rethinking Pruning Large Language Models").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .engine import run_block
from .models.discover import Target

# Adam's step, constant: on SmolLM2's first blocks 1e-4 needed four times the epochs of 1e-3 to the same error,
# 3e-3 did no better, and a cosine decay to zero did worse than the constant rate at the same epochs
DEFAULT_LR = 1e-3


@dataclass(frozen=True)
class TuneSettings:
    """``epochs`` passes over the calibration batches (or windows, ``secateurs.distill``), each one Adam step at
    learning rate ``lr``, in an order drawn from ``seed``."""

    epochs: int
    lr: float = DEFAULT_LR
    seed: int = 0


def tune_report(settings: TuneSettings, target: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's ``walk.ebft``: the settings, what each block was fitted to, and the walk's per-block record
    (``WalkReport.tuned``: errors before and after, whether the tuning was kept, each epoch's loss)."""
    return {"epochs": settings.epochs, "lr": settings.lr, "target": target, "blocks": blocks}


def kept_masks(targets: list[Target]) -> dict[nn.Parameter, torch.Tensor]:
    """For each parameter holding a pruned target: True where a target's weight is kept (non-zero). The rest
    of the parameter (an ignored expert of a fused tensor) stays as it is."""
    masks: dict[nn.Parameter, torch.Tensor] = {}
    for target in targets:
        mask = masks.setdefault(target.parameter, torch.zeros_like(target.parameter, dtype=torch.bool))
        view = mask[target.expert] if target.expert is not None else mask
        view = view.t() if target.transposed else view
        view.copy_(target.weight() != 0)
    return masks


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
    """
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    with torch.enable_grad(), MaskedAdam(block, kept_masks(targets), settings.lr) as adam:
        for _ in range(settings.epochs):
            total = 0.0
            for j in torch.randperm(len(inputs), generator=generator).tolist():
                output = run_block(block, inputs[j], arguments[inputs[j].shape[0]])
                total += adam.step(F.mse_loss(output.float(), dense_outputs[j].float()))
            losses.append(total / len(inputs))
    return losses


class MaskedAdam:
    """Adam on float32 copies of the parameters in ``masks`` (a 16-bit model's weights are rounded from them
    after every step), with each gradient masked from the first step: Adam's moments stay exactly zero where the
    gradient always was, so a pruned weight never leaves zero, and an ignored one never changes. Inside ``with``
    only those parameters of ``module`` take gradients; on leaving, every parameter is as it was."""

    def __init__(self, module: nn.Module, masks: dict[nn.Parameter, torch.Tensor], lr: float) -> None:
        self.module, self.masks = module, masks
        self.master = [parameter.detach().float().clone() for parameter in masks]
        self.optimizer = torch.optim.Adam(self.master, lr=lr)
        self.frozen = {parameter: parameter.requires_grad for parameter in module.parameters()}

    def __enter__(self) -> MaskedAdam:
        for parameter in self.module.parameters():
            parameter.requires_grad_(parameter in self.masks)
        return self

    def __exit__(self, *exception: object) -> None:
        for parameter, requires_grad in self.frozen.items():
            parameter.requires_grad_(requires_grad)
            parameter.grad = None

    def step(self, loss: torch.Tensor) -> float:
        """Back-propagate ``loss``, take one masked step; returns the loss."""
        for parameter in self.masks:
            parameter.grad = None
        loss.backward()
        for (parameter, mask), copy in zip(self.masks.items(), self.master, strict=True):
            copy.grad = parameter.grad.float() * mask if parameter.grad is not None else None
        self.optimizer.step()
        with torch.no_grad():
            for parameter, copy in zip(self.masks, self.master, strict=True):
                parameter.copy_(copy)
        return float(loss.detach())
