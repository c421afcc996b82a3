"""Depth pruning: remove whole decoder blocks.

Two ways to choose them. ``perplexity`` (AMD Quark's depth-wise pruner): every run of K consecutive blocks is
a candidate, scored by the calibration perplexity of the model without it; the lowest wins. ``block-influence``
(ShortGPT, Men et al. 2024): BI_i = 1 - mean over tokens of cos(input of block i, its output); the K blocks
that change their input least go, wherever they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..engine.capture import capture_block_inputs, run_block
from .config import keep_layers

SCORES = ("perplexity", "block-influence")


@contextmanager
def _blocks_replaced_by(blocks: nn.ModuleList, final_hidden: torch.Tensor) -> Iterator[None]:
    """While active, the model's blocks return ``final_hidden`` (the first) and pass it through (the rest), so
    a forward computes exactly what the model does after its blocks (final norm, head, soft-capping...)."""

    def first(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return final_hidden

    def passthrough(hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states

    for index, block in enumerate(blocks):
        block.forward = first if index == 0 else passthrough
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def _nll_sum(model: nn.Module, blocks: nn.ModuleList, final_hidden: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Sum of next-token negative log-likelihoods of ``input_ids`` given the blocks' final hidden states."""
    with _blocks_replaced_by(blocks, final_hidden):
        logits = model(input_ids=input_ids, use_cache=False).logits.float()
    return float(F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten(), reduction="sum"))


def consecutive_run_perplexities(
    model: nn.Module,
    blocks: nn.ModuleList,
    calibration: torch.Tensor,
    remove: int,
    device: torch.device,
    progress: bool,
) -> list[float]:
    """Calibration perplexity of the model without blocks [i, i + remove), for every i.

    One calibration window at a time: the dense hidden state at block i is carried forward, and each candidate
    starting at i runs only the blocks after its gap.
    """
    candidates = len(blocks) - remove + 1
    nll = [0.0] * candidates
    inputs = capture_block_inputs(model, blocks, calibration, 1, device)
    model.to(device)  # the head runs once per candidate
    bar = tqdm(inputs.hidden, desc="depth candidates", unit="window", disable=not progress)
    for window, hidden in zip(calibration.split(1), bar, strict=True):
        window = window.to(device)
        for start in range(candidates):
            state = hidden
            for index in range(start + remove, len(blocks)):
                state = run_block(blocks[index], state, inputs.block_arguments(index, state))
            nll[start] += _nll_sum(model, blocks, state, window)
            hidden = run_block(blocks[start], hidden, inputs.block_arguments(start, hidden))
    tokens = calibration.shape[0] * (calibration.shape[1] - 1)
    return [math.exp(total / tokens) for total in nll]


def block_influence(
    model: nn.Module, blocks: nn.ModuleList, calibration: torch.Tensor, batch_size: int, device: torch.device
) -> list[float]:
    """ShortGPT's BI of every block: 1 - mean cosine similarity of its input and output hidden states."""
    inputs = capture_block_inputs(model, blocks, calibration, batch_size, device)
    blocks.to(device)
    total = [0.0] * len(blocks)
    tokens = 0
    for hidden in inputs.hidden:
        tokens += hidden.shape[0] * hidden.shape[1]
        for index, block in enumerate(blocks):
            output = run_block(block, hidden, inputs.block_arguments(index, hidden))
            total[index] += float(F.cosine_similarity(hidden.float(), output.float(), dim=-1).sum())
            hidden = output
    return [1 - value / tokens for value in total]


def remove_blocks(model: nn.Module, blocks_name: str, removed: list[int]) -> list[int]:
    """Delete ``removed`` blocks from the model and its config; returns the kept (original) indices."""
    blocks: nn.ModuleList = model.get_submodule(blocks_name)
    total = len(blocks)
    kept = [i for i in range(total) if i not in set(removed)]
    parent_name, _, attribute = blocks_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.ModuleList([blocks[i] for i in kept]))
    for new_index, block in enumerate(getattr(parent, attribute)):
        for module in block.modules():  # caches are indexed by it at generation time
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    keep_layers(model.config, kept, total)
    return kept
