"""Tuning kept weights by Adam with pruned weights held at zero: what EBFT and the distillation share."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..models.discover import Target

# the precision of the tuning's matrix products: float32, bfloat16 (autocast: products and their gradients in
# bfloat16, the weights, Adam's state and the loss in float32, as mixed-precision training does), or auto
PRECISIONS = ("float32", "bfloat16", "auto")


@dataclass(frozen=True)
class TuneSettings:
    """``epochs`` passes over the calibration batches (or windows, ``secateurs.tuning.distill``), each one Adam
    step at learning rate ``lr``, in an order drawn from ``seed``; the forward and backward passes' products in
    ``precision`` (float32 or bfloat16, see ``autocast``)."""

    epochs: int
    lr: float
    seed: int = 0
    precision: str = "float32"


def bfloat16_units(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports bfloat16, or a CPU
    with AVX512-BF16 or AMX. Elsewhere bfloat16 products are emulated, slower than float32 ones."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence looked up with a default
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bfloat16 where the device has bfloat16 units (about 4x float32's product rate on an AVX512-BF16
    CPU), float32 elsewhere; the other precisions are themselves."""
    if precision == "auto":
        return "bfloat16" if bfloat16_units(device) else "float32"
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Inside: products in ``precision`` (a resolved one); the parameters stay as they are."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


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
