"""Structured pruning: a smaller dense model, with a config that describes it.

Width is walked block by block like unstructured pruning (observe the input moments of each MLP's down
projection or each attention's output projection, cut the block, propagate the cut block's outputs); depth
scores candidates on the calibration data and deletes whole blocks.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any

import torch
from torch import nn

from ..ebft import TuneSettings, tune_block, tune_report
from ..engine import walk
from ..errors import RecipeError
from ..models import Target, find_blocks
from ..observers import MomentObserver
from ..recipe import StructuredRecipe
from . import depth
from .config import check_config_describes, set_heads, set_intermediate_size
from .layout import (
    AttentionLayout,
    MLPLayout,
    attention_layout,
    keep_outputs,
    mlp_layout,
    set_input_weight,
    weight_matrix,
)
from .width import channel_scores, kept_count, obs_selection, reconstruction_error, refit


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter


def parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def prune_structured(
    model: nn.Module,
    recipe: StructuredRecipe,
    calibration: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Prune ``model`` in place (smaller modules, rewritten config); returns the structured part of the report."""
    before = {"parameters": parameter_count(model), "parameter_bytes": parameter_bytes(model)}
    start = time.perf_counter()
    with torch.no_grad():
        if recipe.method == "depth":
            details = _prune_depth(model, recipe, calibration, device, batch_size, progress)
        else:
            details = _prune_width(model, recipe, calibration, device, batch_size, progress)
    check_config_describes(model)
    after = {"parameters": parameter_count(model), "parameter_bytes": parameter_bytes(model)}
    return {
        "prune_seconds": round(time.perf_counter() - start, 3),
        "before": before,
        "after": after,
        "parameters_removed": 1 - after["parameters"] / before["parameters"],
        **details,
    }


def _prune_depth(
    model: nn.Module,
    recipe: StructuredRecipe,
    calibration: torch.Tensor,
    device: torch.device,
    batch_size: int | None,
    progress: bool,
) -> dict[str, Any]:
    blocks_name, blocks = find_blocks(model)
    remove = recipe.layers_to_remove(len(blocks))
    if remove == 0:
        return {"removed_layers": [], "candidates": []}
    calibration = calibration[: recipe.search_windows]  # the distillation after the cut still gets every window
    if recipe.score == "perplexity":
        scores = depth.consecutive_run_perplexities(model, blocks, calibration, remove, device, progress)
        best = min(range(len(scores)), key=scores.__getitem__)
        removed = list(range(best, best + remove))
        candidates = [{"layers": list(range(i, i + remove)), "perplexity": s} for i, s in enumerate(scores)]
    else:
        scores = depth.block_influence(model, blocks, calibration, batch_size or 4, device)
        removed = sorted(sorted(range(len(scores)), key=scores.__getitem__)[:remove])
        candidates = [{"layers": [i], "block_influence": s} for i, s in enumerate(scores)]
    model.to("cpu")
    kept = depth.remove_blocks(model, blocks_name, removed)
    return {
        "removed_layers": removed,
        "kept_layers": kept,
        "search_windows": int(calibration.shape[0]),
        "candidates": candidates,
    }


def _prune_width(
    model: nn.Module,
    recipe: StructuredRecipe,
    calibration: torch.Tensor,
    device: torch.device,
    batch_size: int | None,
    progress: bool,
) -> dict[str, Any]:
    blocks_name, blocks = find_blocks(model)
    layouts: dict[int, tuple[MLPLayout | AttentionLayout, object]] = {}  # id(reading projection) -> layout, config
    for index, block in enumerate(blocks):
        prefix = f"{blocks_name}.{index}"
        config = _own_config(block, model.config)
        if recipe.target == "mlp":
            layout = mlp_layout(block, prefix)
            layouts[id(layout.down[1])] = (layout, config)
        else:
            layout = attention_layout(block, prefix, model.config)
            layouts[id(layout.out[1])] = (layout, config)
    try:
        first = next(iter(layouts.values()))[0]
        sizes = _new_sizes(recipe, first)
        if sizes is None:
            return {"layers": []}
        layers: list[dict[str, Any]] = []

        def make_observer(target: Target) -> MomentObserver | None:
            return MomentObserver(target.in_features, target.weight().device) if id(target.module) in layouts else None

        def solve(target: Target, observer: MomentObserver | None) -> None:
            if id(target.module) not in layouts:
                return
            layout, config = layouts[id(target.module)]
            if observer is None or observer.tokens == 0:
                raise RecipeError(f"no calibration token reached {target.name}: give more calibration data")
            observer.check_finite(target.name)
            if isinstance(layout, MLPLayout):
                layers.append(_cut_mlp(layout, observer, recipe, sizes["intermediate"]))
                set_intermediate_size(config, sizes["intermediate"])
            else:
                layers.append(_cut_heads(layout, observer, recipe, sizes))
                set_heads(config, sizes["heads"], sizes["kv_heads"], layout.head_dim)

        ebft = TuneSettings(recipe.ebft_epochs, recipe.ebft_lr) if recipe.ebft_epochs else None
        walk_report = walk(
            model,
            calibration,
            make_observer,
            solve,
            batch_size=batch_size,
            device=device,
            progress=progress,
            tune=None if ebft is None else functools.partial(tune_block, settings=ebft),
            tune_target=recipe.ebft_target,
        )
    finally:
        for block in blocks:
            _share_config(block, model.config)
    if recipe.target == "mlp":
        set_intermediate_size(model.config, sizes["intermediate"])
    else:
        set_heads(model.config, sizes["heads"], sizes["kv_heads"], first.head_dim)
    walk_info: dict[str, Any] = {"mode": walk_report.mode, "seconds": walk_report.seconds}
    if ebft is not None:
        walk_info["ebft"] = tune_report(ebft, recipe.ebft_target, walk_report.tuned)
    return {"sizes": sizes, "layers": layers, "walk": walk_info}


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


def _new_sizes(recipe: StructuredRecipe, layout: MLPLayout | AttentionLayout) -> dict[str, int] | None:
    """The kept sizes, the same in every layer (see recipe.StructuredRecipe); None when nothing goes."""
    if recipe.ratio == 0:
        return None
    if isinstance(layout, MLPLayout):
        kept = kept_count(layout.channels, recipe.ratio, recipe.multiple)
        if kept == layout.channels:
            raise RecipeError(
                f"ratio {recipe.ratio} of {layout.channels} channels rounds to nothing removed with --multiple "
                f"{recipe.multiple}: raise --ratio or lower --multiple"
            )
        return {"intermediate": kept, "intermediate_before": layout.channels}
    heads, kv_heads = layout.heads, layout.kv_heads
    if heads % kv_heads:
        raise RecipeError(f"{heads} query heads do not split into {kv_heads} KV groups: the model is not valid GQA")
    group = heads // kv_heads
    if recipe.head_grouping == "queries" and group > 1:
        kept_group = kept_count(group, recipe.ratio)
        new_heads, new_kv = kept_group * kv_heads, kv_heads
    else:  # whole KV groups (the only way when every head has its own key/value)
        new_kv = kept_count(kv_heads, recipe.ratio)
        new_heads = new_kv * group
    if new_heads == heads:
        raise RecipeError(
            f"ratio {recipe.ratio} removes no head ({heads} query heads in {kv_heads} KV groups, "
            f"{recipe.head_grouping}): raise --ratio"
        )
    return {"heads": new_heads, "kv_heads": new_kv, "heads_before": heads, "kv_heads_before": kv_heads}


def _refit_reader(module: nn.Module, observer: MomentObserver, keep: torch.Tensor, recipe: StructuredRecipe) -> float:
    """Replace ``module``'s weight by its columns ``keep``, re-fitted by least squares when the recipe says so;
    returns the relative reconstruction error of its output on the calibration moments."""
    weight = weight_matrix(module).float()
    bias = module.bias.data.float() if getattr(module, "bias", None) is not None else None
    second, mean = observer.second_moment, observer.mean
    if recipe.reconstruct:
        new_weight, new_bias = refit(weight, second, mean, keep, bias, recipe.dampening)
    else:
        new_weight, new_bias = weight[:, keep], None
    change = None if new_bias is None else new_bias - bias
    error = reconstruction_error(weight, new_weight, keep, second, mean, change)
    set_input_weight(module, new_weight, new_bias)
    return error


def _cut_mlp(layout: MLPLayout, observer: MomentObserver, recipe: StructuredRecipe, kept: int) -> dict[str, Any]:
    name, down = layout.down
    keep = _select(weight_matrix(down), observer, kept, recipe)
    channels = layout.channels
    error = _refit_reader(down, observer, keep, recipe)
    for _, module, parts in layout.up:
        keep_outputs(module, torch.cat([keep + part * channels for part in range(parts)]))
    return {"name": name, "channels": [channels, kept], "reconstruction_error": error}


def _select(weight: torch.Tensor, observer: MomentObserver, kept: int, recipe: StructuredRecipe) -> torch.Tensor:
    """Sorted indices of the ``kept`` input channels of ``weight`` [out, in] to keep."""
    if recipe.score == "obs":
        step = max(1, (weight.shape[1] - kept) // 64)  # at most 64 rounds of downdates
        return obs_selection(weight, observer.second_moment, kept, recipe.dampening, step)
    scores = channel_scores(weight, observer.mean, torch.diagonal(observer.second_moment), recipe.score)
    return torch.topk(scores, kept).indices.sort().values


def _head_scores(
    weight: torch.Tensor, observer: MomentObserver, heads: int, head_dim: int, recipe: StructuredRecipe
) -> torch.Tensor:
    """Importance of each query head, from the output projection's columns that read it (query head h belongs
    to KV group h // (heads / kv_heads)). ``obs``: the least-squares loss of removing the head's columns with
    the others re-fitted, tr(W_B ([A^-1]_BB)^-1 W_B^T); otherwise the sum of its columns' scores."""
    if recipe.score != "obs":
        columns = channel_scores(weight, observer.mean, torch.diagonal(observer.second_moment), recipe.score)
        return columns.view(heads, head_dim).sum(-1)
    A = observer.second_moment.float()
    A = A + recipe.dampening * torch.diagonal(A).mean().clamp_min(1e-8) * torch.eye(A.shape[0], device=A.device)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(A))
    losses = []
    for head in range(heads):
        block = slice(head * head_dim, (head + 1) * head_dim)
        W = weight[:, block].float()
        losses.append(torch.trace(W @ torch.linalg.solve(inverse[block, block], W.t())))
    return torch.stack(losses)


def _cut_heads(
    layout: AttentionLayout, observer: MomentObserver, recipe: StructuredRecipe, sizes: dict[str, int]
) -> dict[str, Any]:
    name, out = layout.out
    heads, kv_heads, head_dim = layout.heads, layout.kv_heads, layout.head_dim
    group = heads // kv_heads
    head_scores = _head_scores(weight_matrix(out), observer, heads, head_dim, recipe).view(kv_heads, group)
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
    error = _refit_reader(out, observer, q_rows, recipe)
    _set_head_counts(layout.module, len(kept_heads), len(kept_kv))
    return {
        "name": name,
        "heads": [heads, len(kept_heads)],
        "kv_heads": [kv_heads, len(kept_kv)],
        "kept_heads": kept_heads.tolist(),
        "reconstruction_error": error,
    }


def _set_head_counts(attention: nn.Module, heads: int, kv_heads: int) -> None:
    """Attention modules cache their head counts at construction; the forward uses some of them."""
    for attribute, value in (
        ("num_heads", heads),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("num_kv_heads", kv_heads),
        ("num_key_value_groups", heads // kv_heads),
    ):
        if hasattr(attention, attribute):
            setattr(attention, attribute, value)
