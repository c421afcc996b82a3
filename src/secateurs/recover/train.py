"""The training loop shared by LoRA recovery and training-time pruning, with checkpoints and resume.

A ``Rule`` says what pruning does around each optimizer step (recompute masks, hold pruned weights at zero,
accumulate movement scores) and what of it a checkpoint must keep. Checkpoints are safetensors plus JSON (no
pickle), written every ``checkpoint_every`` steps under new names and switched atomically; ``resume`` goes on
from the last one with the same data order, learning rate and random state, so the result is the one of an
uninterrupted run.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..errors import ResumeError
from ..io.atomic import write_text_atomic


class Rule(Protocol):
    def before_step(self, step: int) -> None: ...

    def after_backward(self, step: int) -> None: ...

    def after_step(self, step: int) -> None: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None: ...


class NoRule:
    def before_step(self, step: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


@dataclass
class TrainSettings:
    steps: int
    batch_size: int = 4
    lr: float = 1e-4
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    checkpoint_every: int = 50
    max_grad_norm: float = 1.0

    def learning_rate_factor(self, step: int) -> float:
        warmup = max(1, int(self.steps * self.warmup_fraction))
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Checkpoints:
    """Where the checkpoints go (removed by the caller once the output is written), and whether to go on from
    the last one."""

    folder: Path
    resume: bool = False


def train(
    model: nn.Module,
    parameters: dict[str, nn.Parameter],
    windows: torch.Tensor,
    settings: TrainSettings,
    rule: Rule,
    checkpoints: Checkpoints,
    device: torch.device,
    progress: bool = True,
) -> list[float]:
    """Minimize the next-token loss on ``windows`` [steps * batch, seqlen] over ``parameters``; returns the loss
    of every step."""
    folder = checkpoints.folder
    needed = settings.steps * settings.batch_size
    if windows.shape[0] < needed:
        raise ValueError(f"{needed} training windows are needed, {windows.shape[0]} given")
    optimizer = torch.optim.AdamW(list(parameters.values()), lr=settings.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, settings.learning_rate_factor)
    losses: list[float] = []
    first = 0
    if checkpoints.resume:
        first, losses = _load(folder, parameters, optimizer, scheduler, rule, settings)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    model.train()
    bar = tqdm(total=settings.steps, initial=first, desc="training", unit="step", disable=not progress)
    for step in range(first, settings.steps):
        rule.before_step(step)
        batch = windows[step * settings.batch_size : (step + 1) * settings.batch_size].to(device)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        rule.after_backward(step)
        torch.nn.utils.clip_grad_norm_(list(parameters.values()), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rule.after_step(step)
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.steps:
            _save(folder, step + 1, losses, parameters, optimizer, rule, settings)
    bar.close()
    model.eval()
    return losses


def _save(
    folder: Path,
    step: int,
    losses: list[float],
    parameters: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    rule: Rule,
    settings: TrainSettings,
) -> None:
    tensors = {f"parameter.{name}": p.detach().cpu().contiguous() for name, p in parameters.items()}
    for index, parameter in enumerate(parameters.values()):
        for key, value in optimizer.state.get(parameter, {}).items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().reshape(value.shape).contiguous()
    tensors.update({f"rule.{name}": t.detach().cpu().contiguous() for name, t in rule.state().items()})
    tensors["rng.torch"] = torch.get_rng_state()
    file = f"checkpoint-{step:07d}.safetensors"
    save_file(tensors, str(folder / file))
    document = {"step": step, "file": file, "losses": losses, "settings": asdict(settings)}
    write_text_atomic(folder / "train-state.json", json.dumps(document))
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != file:
            old.unlink()


def _load(
    folder: Path,
    parameters: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rule: Rule,
    settings: TrainSettings,
) -> tuple[int, list[float]]:
    path = folder / "train-state.json"
    if not path.is_file():
        raise ResumeError(f"no training checkpoint in {folder} to resume from: run without --resume")
    document = json.loads(path.read_text())
    if document["settings"] != asdict(settings):
        raise ResumeError(
            "the checkpoint was made with other training settings: rerun the same command, or drop --resume"
        )
    tensors = load_file(str(folder / document["file"]))
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(tensors[f"parameter.{name}"])
    for index, parameter in enumerate(parameters.values()):
        state = {key.split(".", 2)[2]: t for key, t in tensors.items() if key.startswith(f"optimizer.{index}.")}
        if state:
            optimizer.state[parameter] = {k: v.to(parameter.device) for k, v in state.items()}
    rule.load_state({key.removeprefix("rule."): t for key, t in tensors.items() if key.startswith("rule.")})
    torch.set_rng_state(tensors["rng.torch"])
    step = document["step"]
    with warnings.catch_warnings():  # stepping the schedule before the optimizer is what resuming means
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(step):
            scheduler.step()  # the learning rate where it was
    return step, document["losses"]
