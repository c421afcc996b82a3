"""Distillation after pruning: the pruned model's kept weights are tuned, the whole model at once, so that its
next-token distributions on the calibration windows match the dense model's (the KL divergence of Hinton et al.
2015, "Distilling the Knowledge in a Neural Network"). Every pruned weight stays zero. After a structured cut
(width or depth) the smaller model's whole weight matrices are tuned: the "healing" of layer and channel
removal that LLM-Pruner and Gromov et al. 2024 follow their cuts with (there by fine-tuning on text), here
toward the dense model's predictions.

It runs after the block walk (and after EBFT, when both are asked): where EBFT fits each block's output, this
fits what the model is for, its predictions, through every block together. The dense model is a copy kept
beside the pruned one, so the whole model, twice, must fit on the device; a model pruned block by block from
disk (``--offload disk``) cannot be distilled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..checks import check_positive, check_whole
from .adam import MaskedAdam, TuneSettings

# Adam's step, constant: on SmolLM2 after SparseGPT 50%, one epoch at 1e-4 took WikiText-2 perplexity from
# 44.76 to 34.47 (protocol Q-CPU; a second epoch, 34.46, only fitted the calibration windows closer); a whole
# model moves further per step than one block, hence 10x below EBFT's
DEFAULT_LR = 1e-4


@dataclass(frozen=True)
class Distill:
    """``epochs`` over the calibration windows, one Adam step at ``lr`` per window."""

    epochs: int
    lr: float = DEFAULT_LR

    def __post_init__(self) -> None:
        check_whole(self.epochs, "epochs", 1, "1")
        check_positive(self.lr, "lr", "1e-4")

    @property
    def settings(self) -> TuneSettings:
        return TuneSettings(self.epochs, self.lr)


def distill(
    model: nn.Module,
    teacher: nn.Module,
    masks: dict[nn.Parameter, torch.Tensor],
    windows: torch.Tensor,
    settings: TuneSettings,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Tune the parameters of ``masks`` (in ``model``; where a mask is True: ``secateurs.ebft.kept_masks`` for a
    sparse model, all of it for a structured one) to minimise KL(teacher || model) of the next-token distributions
    over every token of ``windows`` [n, seqlen], one window per Adam step (``settings``); returns each epoch's
    mean loss (nats per token). Both models go to ``device`` for the run and come back to the CPU. The teacher
    may differ from the model in shape (a structured cut): only their logits meet."""
    model.to(device)
    teacher.to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    bar = tqdm(total=settings.epochs * len(windows), desc="distilling", unit="window", disable=not progress)
    try:
        with torch.enable_grad(), MaskedAdam(model, masks, settings.lr) as adam:
            for _ in range(settings.epochs):
                total = 0.0
                for step, j in enumerate(torch.randperm(len(windows), generator=generator).tolist(), 1):
                    ids = windows[j : j + 1].to(device)
                    with torch.no_grad():
                        aimed = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), dim=-1)
                    predicted = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
                    loss = F.kl_div(
                        predicted.flatten(0, 1), aimed.flatten(0, 1), log_target=True, reduction="batchmean"
                    )
                    total += adam.step(loss)
                    bar.update()
                    bar.set_postfix(kl=f"{total / step:.4f}")  # the epoch's mean so far
                losses.append(total / len(windows))
    finally:
        bar.close()
        model.to("cpu")
        teacher.to("cpu")
    return losses
