"""When and how much to prune while training.

Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): at steps t0, t0 + dt, ..., t0 + n dt
the sparsity is s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3: fast at first, while the network has
redundancy to give, slow near the end; after t0 + n dt it stays at s_f while training goes on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    final: float
    start: int  # t0, the first pruning step
    end: int  # t0 + n dt, the step at which the final sparsity is reached
    every: int  # dt, steps between mask updates
    initial: float = 0.0

    def sparsity(self, step: int) -> float:
        """s_t at ``step`` (held between updates: the value of the last update at or before ``step``)."""
        if step < self.start:
            return self.initial
        if step >= self.end:
            return self.final
        last_update = self.start + (step - self.start) // self.every * self.every
        progress = (last_update - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1 - progress) ** 3

    def updates_at(self, step: int) -> bool:
        """Whether the mask is recomputed at ``step``."""
        if step < self.start or step > self.end:
            return False
        return (step - self.start) % self.every == 0 or step == self.end

    def milestones(self) -> list[int]:
        steps = list(range(self.start, self.end, self.every))
        return [*steps, self.end]


def default_schedule(final: float, steps: int, every: int | None = None) -> CubicSchedule:
    """Prune over the first 75 % of training, in about 20 updates, then fine-tune at the final sparsity."""
    end = max(1, int(steps * 0.75))
    every = every or max(1, end // 20)
    return CubicSchedule(final=final, start=0, end=end, every=every)
