"""What pruning does around each optimizer step: hold pruned weights at zero, and recompute the masks on a
schedule, by magnitude (gradual pruning), by movement scores, or by a one-shot method (iterative pruning)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models.discover import Target
from ..patterns import lowest_mask, prune_count
from . import movement
from .schedule import CubicSchedule


class HoldMasks:
    """Pruned weights stay exactly zero: the masks are applied after every optimizer step."""

    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.masks = {t.name: t.weight() != 0 for t in targets}
        self.history: list[dict[str, float]] = []  # step and achieved sparsity at each mask update

    def apply(self) -> None:
        with torch.no_grad():
            for target in self.targets:
                target.weight().mul_(self.masks[target.name])

    def sparsity(self) -> float:
        total = sum(mask.numel() for mask in self.masks.values())
        return 1 - sum(int(mask.sum()) for mask in self.masks.values()) / max(total, 1)

    def record(self, step: int) -> None:
        self.history.append({"step": step, "sparsity": self.sparsity()})

    def before_step(self, step: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        self.apply()

    def state(self) -> dict[str, torch.Tensor]:
        return {f"mask.{name}": mask.to(torch.uint8) for name, mask in self.masks.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self.masks:
            self.masks[name] = tensors[f"mask.{name}"].bool().to(self.masks[name].device)


def magnitude_masks(targets: list[Target], scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Per layer: keep all but the ``prune_count(numel, sparsity)`` lowest scores."""
    return {t.name: lowest_mask(scores[t.name], prune_count(scores[t.name].numel(), sparsity)) for t in targets}


class GradualMagnitude(HoldMasks):
    """Zhu & Gupta's gradual magnitude pruning: at every update of the cubic schedule, each layer keeps its
    largest weights at the scheduled sparsity."""

    def __init__(self, targets: list[Target], schedule: CubicSchedule) -> None:
        super().__init__(targets)
        self.schedule = schedule

    def before_step(self, step: int) -> None:
        if self.schedule.updates_at(step):
            scores = {t.name: t.weight().abs().float() for t in self.targets}
            self.masks = magnitude_masks(self.targets, scores, self.schedule.sparsity(step))
            self.apply()
            self.record(step)

    def final_update(self, steps: int) -> None:
        """Reach the final sparsity even when training stops before the schedule ends."""
        if self.sparsity() < self.schedule.final - 1e-6:
            self.schedule = CubicSchedule(self.schedule.final, 0, 0, 1, self.schedule.final)
            self.before_step(steps)


class Movement(HoldMasks):
    """Hard movement pruning: scores S -= W dL/dW for every weight (its last unmasked value stands in for a
    removed one), and at every update of the cubic schedule each layer keeps its top-scoring weights."""

    def __init__(self, targets: list[Target], schedule: CubicSchedule) -> None:
        super().__init__(targets)
        self.schedule = schedule
        self.scores = {t.name: torch.zeros_like(t.weight(), dtype=torch.float32) for t in targets}
        self.dense = {t.name: t.weight().detach().clone() for t in targets}

    def after_backward(self, step: int) -> None:
        for target in self.targets:
            gradient = _weight_gradient(target)
            if gradient is not None:
                movement.accumulate(self.scores[target.name], self.dense[target.name], gradient)

    def after_step(self, step: int) -> None:
        with torch.no_grad():
            for target in self.targets:  # kept weights trained; removed ones keep their last value
                self.dense[target.name] = torch.where(self.masks[target.name], target.weight(), self.dense[target.name])
        self.apply()

    def before_step(self, step: int) -> None:
        if self.schedule.updates_at(step):
            sparsity = self.schedule.sparsity(step)
            if sparsity > 0:
                self.masks = magnitude_masks(self.targets, self.scores, sparsity)
                with torch.no_grad():
                    for target in self.targets:
                        target.weight().copy_(self.dense[target.name] * self.masks[target.name])
                self.record(step)

    def state(self) -> dict[str, torch.Tensor]:
        tensors = super().state()
        tensors.update({f"score.{name}": s for name, s in self.scores.items()})
        tensors.update({f"dense.{name}": d for name, d in self.dense.items()})
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_state(tensors)
        for name in self.scores:
            self.scores[name] = tensors[f"score.{name}"].to(self.scores[name].device)
            self.dense[name] = tensors[f"dense.{name}"].to(self.dense[name].device)

    def final_update(self, steps: int) -> None:
        if self.sparsity() < self.schedule.final - 1e-6:
            self.schedule = CubicSchedule(self.schedule.final, 0, 0, 1, self.schedule.final)
            self.before_step(steps)


class Iterative(HoldMasks):
    """Iterative pruning: ``rounds`` one-shot prunings to increasing sparsity (final * r / rounds), each followed
    by fine-tuning with the masks held, the rounds spread evenly over the steps."""

    def __init__(self, targets: list[Target], rounds: int, steps: int, final: float, prune: Callable[[float], None]):
        super().__init__(targets)
        self.starts = {
            round_number * steps // rounds: final * (round_number + 1) / rounds for round_number in range(rounds)
        }
        self.prune = prune

    def before_step(self, step: int) -> None:
        if step in self.starts:
            self.prune(self.starts[step])
            self.masks = {t.name: t.weight() != 0 for t in self.targets}
            self.record(step)


def _weight_gradient(target: Target) -> torch.Tensor | None:
    gradient = target.parameter.grad
    if gradient is None:
        return None
    if target.expert is not None:
        gradient = gradient[target.expert]
    return gradient.t() if target.transposed else gradient
