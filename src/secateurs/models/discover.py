"""Find a causal LM's decoder blocks and the weights inside them, without per-architecture tables.

Blocks: the ``nn.ModuleList`` holding most of the model's parameters (``model.layers``, ``transformer.h``,
``model.decoder.layers``, ``gpt_neox.layers`` ...). Weights: every ``nn.Linear``, every GPT-2 style
``Conv1D`` (stored transposed), and every 3-D parameter, which transformers uses for fused MoE experts
(``[experts, out_features, in_features]``, applied with ``F.linear(x, weight[e])``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import CalibrationError, UnsupportedModelError


@dataclass(eq=False)
class Target:
    """One prunable weight matrix: a Linear, a Conv1D, or one expert of a fused 3-D parameter."""

    name: str
    module: nn.Module
    parameter: nn.Parameter
    expert: int | None = None
    transposed: bool = False  # Conv1D keeps [in, out]

    def weight(self) -> torch.Tensor:
        """A ``[out_features, in_features]`` view of the stored weight; writing to it writes the model."""
        data = self.parameter.data
        if self.expert is not None:
            data = data[self.expert]
        return data.t() if self.transposed else data

    @property
    def in_features(self) -> int:
        return self.weight().shape[1]


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder blocks: the ModuleList with the most parameters (nested lists hold fewer)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None or best[0] == 0:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no list of decoder blocks (an nn.ModuleList of layers): "
            "secateurs prunes transformer decoders such as Llama, Qwen, Mistral, GPT-2, OPT"
        )
    return best[1], best[2]


def find_targets(block: nn.Module, prefix: str, ignore: list[str] | tuple[str, ...] = ()) -> list[Target]:
    """Every prunable weight of ``block``, named ``prefix.<path>`` (experts ``...gate_up_proj.<e>``),
    less those matching an ``ignore`` glob."""
    targets: list[Target] = []
    for path, module in block.named_modules():
        name = f"{prefix}.{path}" if path else prefix
        if isinstance(module, nn.Linear):
            targets.append(Target(name, module, module.weight))
        elif isinstance(module, Conv1D):
            targets.append(Target(name, module, module.weight, transposed=True))
        else:
            for parameter_name, parameter in module.named_parameters(recurse=False):
                if parameter.dim() == 3:
                    for expert in range(parameter.shape[0]):
                        targets.append(Target(f"{name}.{parameter_name}.{expert}", module, parameter, expert))
    return [t for t in targets if not any(fnmatchcase(t.name, glob) for glob in ignore)]


def check_token_ids(model: nn.Module, ids: torch.Tensor) -> None:
    """Every token id must have a row in the model's input embedding: a tokenizer from another model (a larger
    vocabulary) would otherwise fail deep inside the forward with an index error."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None or ids.numel() == 0:
        return
    largest, smallest = int(ids.max()), int(ids.min())
    if largest >= rows or smallest < 0:
        bad = largest if largest >= rows else smallest
        raise CalibrationError(
            f"token id {bad} is outside the model's embedding of {rows} rows: the text was tokenized with a "
            "tokenizer that does not belong to this model; use the model's own tokenizer (the one saved with it)"
        )


def tied_names(module: nn.Module) -> set[str]:
    """The names under which a parameter seen under an earlier name appears again (tied weights: ``lm_head``
    tied to the embeddings). By identity, so it holds on the meta device too."""
    seen: set[int] = set()
    tied = set()
    for name, parameter in module.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return tied


def untied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` less every one whose memory an earlier one holds (safetensors refuses tensors that share
    memory): the first name of each storage is kept."""
    seen: set[tuple[int, int]] = set()
    kept = {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key not in seen:
            seen.add(key)
            kept[name] = tensor
    return kept
