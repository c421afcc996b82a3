"""What secateurs knows of model families, in one place: the answers discovery cannot give.

Unstructured pruning needs no names (``discover`` finds blocks and weights generically). Structured pruning must
know which Linears share a dimension: an MLP's up-like projections (gate/up, fc1) produce the intermediate
channels its down projection (down, fc2) reads, and attention's q/k/v produce the heads its output projection
reads. These names cannot be discovered from shapes alone (Phi3's fused qkv has as many rows as its MLP's
intermediate size in small configs), so they are listed here (a layout per block, as SliceGPT's adapters), with
the config attributes that hold the sizes a cut changes and the names of the KV-cache arguments.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import UnsupportedModelError

MLP_UP = {"gate_proj", "up_proj", "fc1", "c_fc", "dense_h_to_4h"}
MLP_FUSED_UP = {"gate_up_proj"}  # [gate; up] stacked on the output dimension
MLP_DOWN = {"down_proj", "fc2", "dense_4h_to_h"}
ATTENTION_QKV = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}
ATTENTION_FUSED_QKV = {"qkv_proj"}  # [q; k; v] stacked on the output dimension
ATTENTION_OUT = {"o_proj", "out_proj"}

# config attributes: the MLP's width (Llama and most; OPT; GPT-2) and the decoder's depth
INTERMEDIATE_SIZE = ("intermediate_size", "ffn_dim", "n_inner")
LAYER_COUNT = ("num_hidden_layers", "n_layer", "num_layers")
# attention modules cache their head counts at construction; the forward reads some of them
HEAD_COUNTS = ("num_heads", "num_attention_heads")
KV_HEAD_COUNTS = ("num_key_value_heads", "num_kv_heads")
KV_GROUPS = "num_key_value_groups"

# A block's KV-cache arguments (transformers has renamed them over versions), dropped from captured calls: a
# captured cache grows by gigabytes and is never needed for calibration.
NO_CACHE = {"cache": None, "past_key_values": None, "past_key_value": None, "layer_past": None, "use_cache": False}


def out_features(module: nn.Module) -> int:
    return module.weight.shape[1] if isinstance(module, Conv1D) else module.weight.shape[0]


def in_features(module: nn.Module) -> int:
    return module.weight.shape[0] if isinstance(module, Conv1D) else module.weight.shape[1]


@dataclass
class MLPLayout:
    """``up`` produce the intermediate channels (a fused [gate; up] counts twice: ``parts``), ``down`` reads them."""

    up: list[tuple[str, nn.Module, int]]  # (name, module, parts)
    down: tuple[str, nn.Module]

    @property
    def channels(self) -> int:
        return in_features(self.down[1])


@dataclass
class AttentionLayout:
    """q/k/v produce ``heads`` query heads and ``kv_heads`` key/value heads of ``head_dim``; ``out`` reads them."""

    module: nn.Module  # the attention module (its head counts are updated after a cut)
    qkv: dict[str, tuple[str, nn.Module]]  # "q"/"k"/"v" -> (name, module), or "qkv" -> the fused one
    out: tuple[str, nn.Module]
    heads: int
    kv_heads: int
    head_dim: int


def _named(block: nn.Module, prefix: str) -> list[tuple[str, str, nn.Module]]:
    found = []
    for path, module in block.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)):
            found.append((f"{prefix}.{path}", path.rsplit(".", 1)[-1], module))
    return found


def mlp_layout(block: nn.Module, prefix: str) -> MLPLayout:
    up, down = [], []
    for name, last, module in _named(block, prefix):
        if last in MLP_UP:
            up.append((name, module, 1))
        elif last in MLP_FUSED_UP:
            up.append((name, module, 2))
        elif last in MLP_DOWN or (last == "c_proj" and ".mlp." in f".{name}."):
            down.append((name, module))
    if len(down) != 1 or not up:
        raise UnsupportedModelError(
            f"cannot find the MLP of block {prefix} (an up/gate projection and one down projection; "
            "mixture-of-experts MLPs are not supported for width pruning): use --target heads or --method depth"
        )
    channels = in_features(down[0][1])
    for name, module, parts in up:
        if out_features(module) != parts * channels:
            raise UnsupportedModelError(
                f"{name} has {out_features(module)} outputs but the down projection reads {channels}: "
                "this MLP layout is not supported for width pruning"
            )
    return MLPLayout(up, down[0])


def attention_layout(block: nn.Module, prefix: str, config: object) -> AttentionLayout:
    qkv, out = {}, []
    attention = None
    for name, last, module in _named(block, prefix):
        if last in ATTENTION_QKV:
            qkv[ATTENTION_QKV[last]] = (name, module)
        elif last in ATTENTION_FUSED_QKV:
            qkv["qkv"] = (name, module)
        elif last in ATTENTION_OUT:
            out.append((name, module))
    if not out or not (set(qkv) == {"q", "k", "v"} or set(qkv) == {"qkv"}):
        raise UnsupportedModelError(
            f"cannot find separate q/k/v (or a [q; k; v] qkv_proj) and an output projection in block {prefix}: "
            "head pruning supports Llama-style attention (Llama, Mistral, Qwen, Gemma, Phi3, OPT); use --target mlp "
            "or --method depth"
        )
    out_name, out_module = out[0]
    for module in block.modules():
        if any(child is out_module for child in module.children()):
            attention = module
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(attention, "head_dim", None) or in_features(out_module) // heads
    if heads * head_dim != in_features(out_module):
        raise UnsupportedModelError(
            f"{out_name} reads {in_features(out_module)} features, not {heads} heads of {head_dim}: "
            "this attention layout is not supported for head pruning"
        )
    return AttentionLayout(attention, qkv, (out_name, out_module), heads, kv_heads, head_dim)


def cache_argument(model: nn.Module) -> str:
    """The forward's KV-cache keyword: transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name
    goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
