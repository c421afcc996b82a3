"""The output of a walk from disk (``--offload disk``): the block files the walk's resume state wrote, one per
block under the checkpoint's own tensor names, become the shards; the tensors outside the blocks (embeddings,
final norm, head) are copied from the source. An ordinary sharded checkpoint with its index."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

INDEX_NAME = "model.safetensors.index.json"


def write_sharded(
    out: Path,
    model: nn.Module,
    blocks_name: str,
    source_index: dict[str, Path],
    dtype: torch.dtype,
    block_files: list[Path],
) -> None:
    """Assemble ``out``: ``block_files`` (in block order) as shards, the source's other tensors in ``dtype`` as the
    last shard, the index, the config and the generation config."""
    weight_map: dict[str, str] = {}
    total = len(block_files) + 1
    for number, source in enumerate(block_files, 1):
        shard = f"model-{number:05d}-of-{total:05d}.safetensors"
        os.link(source, out / shard) if _same_device(source, out) else shutil.copyfile(source, out / shard)
        with safe_open(str(out / shard), framework="pt") as handle:
            weight_map.update(dict.fromkeys(handle.keys(), shard))
    rest_shard = f"model-{total:05d}-of-{total:05d}.safetensors"
    rest = {}
    for name, file in source_index.items():
        if not name.startswith(f"{blocks_name}."):
            with safe_open(str(file), framework="pt") as handle:
                rest[name] = handle.get_tensor(name).to(dtype).contiguous()
    save_file(rest, str(out / rest_shard), metadata={"format": "pt"})
    weight_map.update(dict.fromkeys(rest, rest_shard))
    size = sum((out / shard).stat().st_size for shard in set(weight_map.values()))
    index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    model.config.save_pretrained(out)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(out)


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
