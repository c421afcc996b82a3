"""Perplexity as in the Wanda/SparseGPT papers (and the benchmark protocols, docs/benchmarks.md): non-overlapping
windows of ``seqlen`` tokens, perplexity = exp(mean over windows of the window's mean next-token NLL)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..models import family
from ..models.discover import check_token_ids


def window_nll(model: nn.Module, windows: torch.Tensor, chunk: int) -> torch.Tensor:
    """Mean next-token NLL of each window ``[batch, seqlen]`` -> ``[batch]`` float64.

    The window goes through in pieces of ``chunk`` tokens with the KV cache, so the logits held at once
    are ``batch x chunk x vocab`` rather than the whole window's: the same result, a fraction of the memory.
    """
    batch, seqlen = windows.shape
    cache_argument = family.cache_argument(model)
    total = torch.zeros(batch, dtype=torch.float64)
    cache = None
    previous_logit = None
    for start in range(0, seqlen, chunk):
        piece = windows[:, start : start + chunk]
        use_cache = start + chunk < seqlen
        output = model(input_ids=piece, use_cache=use_cache, **{cache_argument: cache})
        cache = output[cache_argument] if use_cache else None
        logits = output.logits.float()
        if previous_logit is not None:  # the last logit of the previous piece predicts this piece's first token
            logits = torch.cat([previous_logit, logits], dim=1)
            targets = piece
        else:
            targets = piece[:, 1:]
        predicted = logits[:, : targets.shape[1]]
        nll = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), reduction="none")
        total += nll.view(batch, -1).sum(1).double().cpu()
        previous_logit = logits[:, -1:]
        del output, logits, predicted
    return total / (seqlen - 1)


def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    seqlen: int = 2048,
    max_windows: int | None = None,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    chunk: int | None = None,
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on token ids ``[1, tokens]``, over its first ``max_windows`` windows."""
    check_token_ids(model, ids)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    windows = ids[0, : (ids.shape[1] // seqlen) * seqlen].view(-1, seqlen)
    if max_windows is not None:
        windows = windows[:max_windows]
    chunk = chunk or (seqlen if device.type == "cuda" else min(seqlen, 512))
    nll = []
    with torch.no_grad():
        bar = tqdm(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress)
        for batch in bar:
            nll.append(window_nll(model, batch.to(device), chunk))
    return math.exp(torch.cat(nll).mean().item())
