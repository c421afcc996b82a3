"""Memory: what the walk returns to the system between blocks, and whether the one-pass walk's activations fit."""

from __future__ import annotations

import ctypes
import os

import torch
from torch import nn

from ..models.discover import Target


def release_free_memory() -> None:
    """Give the allocator's free pages back to the system (glibc's malloc_trim; nothing elsewhere). Between
    blocks, freed activations and weights otherwise stay resident in malloc's arenas, fragmented: measured here
    that is a few hundred MB of peak RSS over a walk, for about a millisecond a block."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def fix_mmap_threshold() -> None:
    """Give every allocation of 1 MiB or more its own mapping, returned to the system when freed (glibc's
    mallopt; nothing elsewhere, nor when the user set MALLOC_MMAP_THRESHOLD_). glibc's default threshold rises
    to the size of each large block freed, after which activations come from the heap and fragment it: on
    the Q-CPU walk that cost 150-350 MB of peak RSS that malloc_trim between blocks did not give back.
    The price is a page fault per fresh activation: in memory, Wanda's Q-CPU walk took 23% longer (offloaded,
    SparseGPT's took 30% longer and Wanda's no longer), so only the memory-first mode (``--offload disk``)
    sets it."""
    if _LIBC is not None and hasattr(_LIBC, "mallopt") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def available_memory(device: torch.device | str = "cpu") -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def one_pass_fits(
    model: nn.Module,
    targets: list[Target],
    input_ids: torch.Tensor,
    batch_size: int,
    device: torch.device,
    copies: float = 0,
) -> bool:
    """Rough bound on one block's activations in the one-pass walk with batches of ``batch_size`` windows in
    lockstep: every paused batch holds a few copies of the hidden states and of the widest projection (its
    residual, the input of the Linear it waits at), the running batch its temporaries and, where they are
    materialized, its attention scores; ``copies`` more hidden states per token are kept (tuning: 2; a fit to the
    dense model: its stream and a block's kept inputs)."""
    samples, length = input_ids.shape
    element = torch.finfo(next(model.parameters()).dtype).bits // 8
    config = getattr(model, "config", None)
    hidden_size = getattr(config, "hidden_size", 0) or max(t.in_features for t in targets)
    widest = max(t.weight().shape[0] for t in targets)
    tokens = samples * length
    running = min(batch_size, samples) * length
    needed = element * (tokens * ((3 + copies) * hidden_size + 2 * widest) + running * (8 * hidden_size + 4 * widest))
    if getattr(config, "_attn_implementation", "eager") == "eager":
        heads = getattr(config, "num_attention_heads", 1)
        needed += min(batch_size, samples) * heads * length**2 * element * 2
    return needed < 0.6 * available_memory(device)
