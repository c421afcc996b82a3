"""The settings of protocol S (``secateurs bench``), apart from the harness so that the command line can show
their defaults without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field

LLAMA_7B_SHAPES = ((11008, 4096), (4096, 11008))  # [out, in] of Llama-7B's up/gate and down projections


@dataclass
class SpeedSettings:
    """Sizes and repeats of protocol S (the defaults are the protocol; tests shrink them)."""

    prefill_batch: int = 8
    prefill_seqlen: int = 512
    prompt_tokens: int = 128
    new_tokens: int = 128
    repeats: int = 5
    warmup: int = 1
    micro_tokens: int = 4096
    micro_shapes: list[tuple[int, int]] = field(default_factory=lambda: list(LLAMA_7B_SHAPES))
    micro: bool = True
    seed: int = 0
    interleave: bool = True  # timed runs in rounds over the models held together (see run_speed)


@dataclass(kw_only=True)
class BenchJob:
    """Protocol S on ``models`` (the dense one first) on ``device``, in ``dtype`` (None: as stored), results in
    ``out``."""

    models: tuple[str, ...]
    device: str = "auto"
    dtype: str | None = None
    out: str = "secateurs-bench"
    settings: SpeedSettings = field(default_factory=SpeedSettings)
