"""Capture the first block's inputs: the model runs on the calibration windows with every decoder block replaced by
a recorder that passes its input through, so block 0's hidden states are kept and each block's own arguments
(sliding or global masks, per-layer rotary tables...) are recorded once per batch size. Captured arguments never
keep a KV cache."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..models.discover import check_token_ids
from ..models.family import NO_CACHE


class _StopForward(Exception):
    """Raised after the last block has recorded its arguments: nothing after the blocks is needed."""


@dataclass
class BlockInputs:
    """The first block's input hidden states (one tensor per batch) and every block's other arguments,
    recorded once per batch size (masks and position embeddings depend on it, not on the tokens)."""

    hidden: list[torch.Tensor]
    arguments: dict[int, list[dict[str, Any]]]

    def block_arguments(self, index: int, batch: torch.Tensor) -> dict[str, Any]:
        return self.arguments[batch.shape[0]][index]

    def of_block(self, index: int) -> dict[int, dict[str, Any]]:
        """Block ``index``'s arguments for each batch size."""
        return {size: per_block[index] for size, per_block in self.arguments.items()}


def _bind_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """Split a block call into its hidden states and keyword arguments, with the KV cache dropped."""
    bound = signature.bind(*args, **kwargs)
    arguments = dict(bound.arguments)
    parameters = signature.parameters
    hidden = arguments.pop(next(iter(parameters)))
    for name, parameter in parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD and name in arguments:
            arguments.update(arguments.pop(name))
        elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and arguments.pop(name, ()):
            raise UnsupportedModelError("a decoder block takes extra positional arguments: not supported")
    for name, value in NO_CACHE.items():
        if name in arguments:
            arguments[name] = value
    return hidden, arguments


def run_block(block: nn.Module, hidden: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
    output = block(hidden, **arguments)
    return output[0] if isinstance(output, (tuple, list)) else output


def move_outside_blocks(model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> None:
    """Move embeddings, rotary tables, norms... to ``device``; blocks stay where they are."""

    def visit(module: nn.Module) -> None:
        if module is blocks:
            return
        for child in module.children():
            visit(child)
        for parameter in module.parameters(recurse=False):
            if parameter.device.type != "meta":  # an offloaded model's head: not read, not needed
                parameter.data = parameter.data.to(device)
        for name, buffer in module.named_buffers(recurse=False):
            module._buffers[name] = buffer.to(device)

    visit(model)


def _recorder(
    index: int, last: int, signature: inspect.Signature, hidden: list[torch.Tensor], recording: list
) -> Callable:
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        states, block_arguments = _bind_arguments(signature, args, kwargs)
        if index == 0:
            hidden.append(states)
        if recording[0] is not None:
            recording[0].append(block_arguments)
        if index == last:
            raise _StopForward
        return states

    return forward


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int, device: torch.device
) -> BlockInputs:
    """Run the model on ``input_ids`` in batches of ``batch_size`` with every block replaced by a recorder (see the
    module docstring). The last recorder stops the forward: no head, no logits."""
    hidden: list[torch.Tensor] = []
    arguments: dict[int, list[dict[str, Any]]] = {}
    recording: list[list[dict[str, Any]] | None] = [None]
    check_token_ids(model, input_ids)
    for index, block in enumerate(blocks):
        block.forward = _recorder(index, len(blocks) - 1, inspect.signature(block.forward), hidden, recording)
    move_outside_blocks(model, blocks, device)
    try:
        for batch in input_ids.split(batch_size):
            recording[0] = None if batch.shape[0] in arguments else arguments.setdefault(batch.shape[0], [])
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for block in blocks:
            del block.forward
        if device.type != "cpu":
            move_outside_blocks(model, blocks, torch.device("cpu"))
    return BlockInputs(hidden, arguments)
