"""Cutting a Linear (or GPT-2 Conv1D) down to some of its output rows or input columns."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def keep_outputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the output features ``index`` (rows of a Linear, columns of a Conv1D), bias included."""
    dim = 1 if isinstance(module, Conv1D) else 0
    module.weight = nn.Parameter(module.weight.data.index_select(dim, index).contiguous(), requires_grad=False)
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.data.index_select(0, index).contiguous(), requires_grad=False)
    if isinstance(module, Conv1D):
        module.nf = len(index)
    else:
        module.out_features = len(index)


def set_input_weight(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Replace the weight ``[out, in']`` (fewer inputs) of a Linear or Conv1D, and its bias when given."""
    stored = weight.t() if isinstance(module, Conv1D) else weight
    module.weight = nn.Parameter(stored.to(module.weight.dtype).contiguous(), requires_grad=False)
    if bias is not None:
        module.bias = nn.Parameter(bias.to(module.bias.dtype).contiguous(), requires_grad=False)
    if not isinstance(module, Conv1D):
        module.in_features = weight.shape[1]


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The ``[out, in]`` weight of a Linear or Conv1D."""
    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data
