"""Rewrite a model's config after structured pruning, and check that it describes the pruned model.

A Hugging Face config holds one intermediate size and one head count for all layers, and some architectures
derive the head size from ``hidden_size / num_attention_heads``: the check builds the architecture from the
new config (on the meta device, no memory) and compares every tensor shape with the pruned model's, so a
model its config cannot describe is refused instead of saved as a checkpoint that does not load.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModelError

INTERMEDIATE_SIZE = ("intermediate_size", "ffn_dim", "n_inner")  # Llama and most; OPT; GPT-2
LAYER_COUNT = ("num_hidden_layers", "n_layer", "num_layers")


def set_intermediate_size(config: object, size: int) -> None:
    for name in INTERMEDIATE_SIZE:
        if hasattr(config, name):
            setattr(config, name, size)


def set_heads(config: object, heads: int, kv_heads: int, head_dim: int) -> None:
    config.num_attention_heads = heads
    if getattr(config, "num_key_value_heads", None) is not None:
        config.num_key_value_heads = kv_heads
    # Kept explicit: many architectures would otherwise derive it from hidden_size / heads.
    config.head_dim = head_dim


def keep_layers(config: object, kept: list[int], total: int) -> None:
    """Set the layer count and cut every per-layer list (layer types, sliding-window layers...) to ``kept``."""
    for name in LAYER_COUNT:
        if getattr(config, name, None) == total:
            setattr(config, name, len(kept))
    for name, value in list(vars(config).items()):
        if isinstance(value, (list, tuple)) and len(value) == total and name not in LAYER_COUNT:
            setattr(config, name, type(value)(value[i] for i in kept))


def check_config_describes(model: nn.Module) -> None:
    """Refuse a pruned model that its config cannot rebuild (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            rebuilt = AutoModelForCausalLM.from_config(model.config)
    except Exception as error:  # the config itself is inconsistent (heads that do not divide, ...)
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__}'s config is not valid ({type(error).__name__}: {error}): "
            "choose another ratio or target"
        ) from error
    expected = {name: tuple(p.shape) for name, p in rebuilt.state_dict().items()}
    for name, tensor in model.state_dict().items():
        if name in expected and expected[name] != tuple(tensor.shape):
            raise UnsupportedModelError(
                f"{type(model.config).__name__} cannot describe the pruned model ({name} is {tuple(tensor.shape)}, "
                f"the config builds {expected[name]}): this architecture derives that size from others or keeps "
                "one size for all layers; choose another --target or --method"
            )
