"""Width pruning walked block by block: the input moments of each MLP's down projection (or each attention's
output projection) are observed, the block is cut (the projections that produce the removed channels or heads
lose those rows, the one that reads them loses those columns and is re-fitted), and the cut block's outputs go
on to the next block."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..engine import BlockHook, WalkParts, WalkSettings, walk
from ..errors import RecipeError
from ..models import Target, find_blocks
from ..models.family import (
    HEAD_COUNTS,
    KV_GROUPS,
    KV_HEAD_COUNTS,
    AttentionLayout,
    MLPLayout,
    attention_layout,
    mlp_layout,
)
from ..observers import MomentObserver
from ..report.schema import CutLayer, WalkRecord
from .config import set_heads, set_intermediate_size
from .methods import Width
from .surgery import keep_outputs, set_input_weight, weight_matrix
from .width import channel_scores, kept_count, obs_selection, reconstruction_error, refit

Layout = MLPLayout | AttentionLayout


class WidthCut:
    """The walk's solver: observes the reading projection of each block's MLP (or attention) and cuts the block
    when that projection's turn comes. ``layers`` collects what each cut did."""

    def __init__(self, width: Width, layouts: dict[int, tuple[Layout, object]], sizes: dict[str, int]) -> None:
        self.width = width
        self.layouts = layouts  # id(reading projection) -> (layout, the block's own config)
        self.sizes = sizes
        self.layers: list[CutLayer] = []

    def observer(self, target: Target) -> MomentObserver | None:
        if id(target.module) not in self.layouts:
            return None
        return MomentObserver(target.in_features, target.weight().device)

    def solve(self, target: Target, observer: MomentObserver | None) -> None:
        if id(target.module) not in self.layouts:
            return
        layout, config = self.layouts[id(target.module)]
        if observer is None or observer.tokens == 0:
            raise RecipeError(f"no calibration token reached {target.name}: give more calibration data")
        observer.check_finite(target.name)
        if isinstance(layout, MLPLayout):
            self.layers.append(_cut_mlp(layout, observer, self.width, self.sizes["intermediate"]))
            set_intermediate_size(config, self.sizes["intermediate"])
        else:
            self.layers.append(_cut_heads(layout, observer, self.width, self.sizes))
            set_heads(config, self.sizes["heads"], self.sizes["kv_heads"], layout.head_dim)


def _layouts(model: nn.Module, width: Width) -> dict[int, tuple[Layout, object]]:
    blocks_name, blocks = find_blocks(model)
    layouts: dict[int, tuple[Layout, object]] = {}
    for index, block in enumerate(blocks):
        prefix = f"{blocks_name}.{index}"
        config = _own_config(block, model.config)
        if width.target == "mlp":
            layout = mlp_layout(block, prefix)
            layouts[id(layout.down[1])] = (layout, config)
        else:
            layout = attention_layout(block, prefix, model.config)
            layouts[id(layout.out[1])] = (layout, config)
    return layouts


def prune_width(
    model: nn.Module, width: Width, calibration: torch.Tensor, settings: WalkSettings, hooks: list[BlockHook]
) -> tuple[dict[str, int] | None, list[CutLayer], WalkRecord | None]:
    """Cut every block of ``model`` in place and rewrite its config; returns the new sizes (None: nothing to cut),
    what each block's cut did, and the walk's record."""
    _, blocks = find_blocks(model)
    try:
        layouts = _layouts(model, width)
        first = next(iter(layouts.values()))[0]
        sizes = _new_sizes(width, first)
        if sizes is None:
            return None, [], None
        cut = WidthCut(width, layouts, sizes)
        record = walk(model, calibration, cut, settings, WalkParts(hooks=hooks))
    finally:
        for block in blocks:
            _share_config(block, model.config)
    if width.target == "mlp":
        set_intermediate_size(model.config, sizes["intermediate"])
    else:
        set_heads(model.config, sizes["heads"], sizes["kv_heads"], first.head_dim)
    return sizes, cut.layers, record


def _own_config(block: nn.Module, config: object) -> object:
    """Give the block's modules a copy of the model config while the walk runs: some forwards read head counts
    from it (Phi3 slices its fused qkv by ``config.num_attention_heads``), and cut and uncut blocks differ."""
    own = copy.copy(config)
    for module in block.modules():
        if getattr(module, "config", None) is config:
            module.config = own
    return own


def _share_config(block: nn.Module, config: object) -> None:
    for module in block.modules():
        if hasattr(module, "config") and type(module.config) is type(config):
            module.config = config


def _new_sizes(width: Width, layout: MLPLayout | AttentionLayout) -> dict[str, int] | None:
    """The kept sizes, the same in every layer (see width.StructuredRecipe); None when nothing goes."""
    if width.ratio == 0:
        return None
    if isinstance(layout, MLPLayout):
        kept = kept_count(layout.channels, width.ratio, width.multiple)
        if kept == layout.channels:
            raise RecipeError(
                f"ratio {width.ratio} of {layout.channels} channels rounds to nothing removed with --multiple "
                f"{width.multiple}: raise --ratio or lower --multiple"
            )
        return {"intermediate": kept, "intermediate_before": layout.channels}
    heads, kv_heads = layout.heads, layout.kv_heads
    if heads % kv_heads:
        raise RecipeError(f"{heads} query heads do not split into {kv_heads} KV groups: the model is not valid GQA")
    group = heads // kv_heads
    if width.head_grouping == "queries" and group > 1:
        kept_group = kept_count(group, width.ratio)
        new_heads, new_kv = kept_group * kv_heads, kv_heads
    else:  # whole KV groups (the only way when every head has its own key/value)
        new_kv = kept_count(kv_heads, width.ratio)
        new_heads = new_kv * group
    if new_heads == heads:
        raise RecipeError(
            f"ratio {width.ratio} removes no head ({heads} query heads in {kv_heads} KV groups, "
            f"{width.head_grouping}): raise --ratio"
        )
    return {"heads": new_heads, "kv_heads": new_kv, "heads_before": heads, "kv_heads_before": kv_heads}


def _refit_reader(module: nn.Module, observer: MomentObserver, keep: torch.Tensor, width: Width) -> float:
    """Replace ``module``'s weight by its columns ``keep``, re-fitted by least squares with ``reconstruct``;
    returns the relative reconstruction error of its output on the calibration moments."""
    weight = weight_matrix(module).float()
    bias = module.bias.data.float() if getattr(module, "bias", None) is not None else None
    second, mean = observer.second_moment, observer.mean
    if width.reconstruct:
        new_weight, new_bias = refit(weight, second, mean, keep, bias, width.dampening)
    else:
        new_weight, new_bias = weight[:, keep], None
    change = None if new_bias is None else new_bias - bias
    error = reconstruction_error(weight, new_weight, keep, second, mean, change)
    set_input_weight(module, new_weight, new_bias)
    return error


def _cut_mlp(layout: MLPLayout, observer: MomentObserver, width: Width, kept: int) -> CutLayer:
    name, down = layout.down
    keep = _select(weight_matrix(down), observer, kept, width)
    channels = layout.channels
    error = _refit_reader(down, observer, keep, width)
    for _, module, parts in layout.up:
        keep_outputs(module, torch.cat([keep + part * channels for part in range(parts)]))
    return CutLayer(name, error, channels=[channels, kept])


def _select(weight: torch.Tensor, observer: MomentObserver, kept: int, width: Width) -> torch.Tensor:
    """Sorted indices of the ``kept`` input channels of ``weight`` [out, in] to keep."""
    if width.score == "obs":
        step = max(1, (weight.shape[1] - kept) // 64)  # at most 64 rounds of downdates
        return obs_selection(weight, observer.second_moment, kept, width.dampening, step)
    scores = channel_scores(weight, observer.mean, torch.diagonal(observer.second_moment), width.score)
    return torch.topk(scores, kept).indices.sort().values


def _head_scores(
    weight: torch.Tensor, observer: MomentObserver, heads: int, head_dim: int, width: Width
) -> torch.Tensor:
    """Importance of each query head, from the output projection's columns that read it (query head h belongs
    to KV group h // (heads / kv_heads)). ``obs``: the least-squares loss of removing the head's columns with
    the others re-fitted, tr(W_B ([A^-1]_BB)^-1 W_B^T); otherwise the sum of its columns' scores."""
    if width.score != "obs":
        columns = channel_scores(weight, observer.mean, torch.diagonal(observer.second_moment), width.score)
        return columns.view(heads, head_dim).sum(-1)
    A = observer.second_moment.float()
    A = A + width.dampening * torch.diagonal(A).mean().clamp_min(1e-8) * torch.eye(A.shape[0], device=A.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(A))
    losses = []
    for head in range(heads):
        block = slice(head * head_dim, (head + 1) * head_dim)
        W = weight[:, block].float()
        losses.append(torch.trace(W @ torch.linalg.solve(inverse[block, block], W.t())))
    return torch.stack(losses)


def _cut_heads(layout: AttentionLayout, observer: MomentObserver, width: Width, sizes: dict[str, int]) -> CutLayer:
    name, out = layout.out
    heads, kv_heads, head_dim = layout.heads, layout.kv_heads, layout.head_dim
    group = heads // kv_heads
    head_scores = _head_scores(weight_matrix(out), observer, heads, head_dim, width).view(kv_heads, group)
    if sizes["kv_heads"] == kv_heads:  # query heads within every group
        kept_in_group = torch.topk(head_scores, sizes["heads"] // kv_heads, dim=1).indices.sort(dim=1).values
        kept_heads = (kept_in_group + torch.arange(kv_heads).unsqueeze(1) * group).flatten()
        kept_kv = torch.arange(kv_heads)
    else:
        kept_kv = torch.topk(head_scores.sum(1), sizes["kv_heads"]).indices.sort().values
        kept_heads = (kept_kv.unsqueeze(1) * group + torch.arange(group)).flatten()
    q_rows = (kept_heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()
    kv_rows = (kept_kv.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()
    if "qkv" in layout.qkv:
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        keep_outputs(layout.qkv["qkv"][1], torch.cat([q_rows, q_size + kv_rows, q_size + kv_size + kv_rows]))
    else:
        keep_outputs(layout.qkv["q"][1], q_rows)
        keep_outputs(layout.qkv["k"][1], kv_rows)
        keep_outputs(layout.qkv["v"][1], kv_rows)
    error = _refit_reader(out, observer, q_rows, width)
    _set_head_counts(layout.module, len(kept_heads), len(kept_kv))
    return CutLayer(
        name, error, heads=[heads, len(kept_heads)], kv_heads=[kv_heads, len(kept_kv)], kept_heads=kept_heads.tolist()
    )


def _set_head_counts(attention: nn.Module, heads: int, kv_heads: int) -> None:
    """Attention modules cache their head counts at construction; the forward uses some of them."""
    values = {**dict.fromkeys(HEAD_COUNTS, heads), **dict.fromkeys(KV_HEAD_COUNTS, kv_heads)}
    values[KV_GROUPS] = heads // kv_heads
    for attribute, value in values.items():
        if hasattr(attention, attribute):
            setattr(attention, attribute, value)
