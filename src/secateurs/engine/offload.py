"""Models larger than memory: the model is built without weights (meta device) and each decoder block's tensors
are read from the source safetensors shards when its turn comes, pruned, written, and dropped.

Peak memory is about one block plus the calibration activations, whatever the model's size. The blocks
written by the walk's state (``secateurs.checkpoint``, one safetensors file per block under the checkpoint's
own names) become the output's shards; the tensors outside the blocks (embeddings, final norm, head) are
copied from the source at the end. The output is an ordinary sharded checkpoint with its index.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .engine import available_memory
from .errors import ModelLoadError, NumericalError, RecipeError, UnsupportedModelError
from .models.discover import find_blocks
from .recipe import Recipe, StructuredRecipe

INDEX_NAME = "model.safetensors.index.json"


def safetensors_index(folder: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the shard that holds it."""
    index_file = folder / INDEX_NAME
    if index_file.is_file():
        mapping = json.loads(index_file.read_text())["weight_map"]
        return {name: folder / shard for name, shard in mapping.items()}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for pattern in ("*.bin", "*.pt", "*.pth") for p in folder.glob(pattern)]
        hint = f" (it has {pickles[0]}: convert it to safetensors first)" if pickles else ""
        raise ModelLoadError(f"{folder} holds no safetensors weights{hint}: --offload disk reads safetensors shards")
    index = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            index.update(dict.fromkeys(handle.keys(), file))
    return index


def model_bytes_on_disk(source: str | Path) -> int:
    path = Path(source).expanduser()
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.glob("*.safetensors")) if path.is_dir() else 0


class DiskBlocks:
    """Reads a block's tensors from the source when the walk needs them and drops them after (the engine's
    ``store``); the model's other tensors are read for the capture of the first block's inputs only."""

    def __init__(self, model: nn.Module, folder: Path, dtype: torch.dtype, device: torch.device) -> None:
        self.model = model
        self.folder = folder
        self.dtype = dtype
        self.device = device
        self.index = safetensors_index(folder)
        self.blocks_name, self.blocks = find_blocks(model)
        self._check_names()

    def _check_names(self) -> None:
        """Every parameter must be in the source under its own name (checkpoints that transformers converts on
        load, such as per-expert MoE tensors, cannot be streamed)."""
        tied = _tied_names(self.model)
        for name, _ in self.model.named_parameters(remove_duplicate=False):
            if name in tied:
                continue
            if name not in self.index:
                raise UnsupportedModelError(
                    f"the source has no tensor named {name} (its names differ from the model's, as transformers "
                    "converts them on load): prune this model in memory, without --offload disk"
                )

    def _read(self, module: nn.Module, prefix: str, device: torch.device | str) -> None:
        with _Shards() as shards:
            for name, _ in list(module.named_parameters()):
                full = f"{prefix}.{name}"
                tensor = shards.read(self.index[full], full).to(device=device, dtype=self.dtype)
                if not torch.isfinite(tensor).all():
                    raise NumericalError(f"the model's weight {full} holds NaN or Inf: the checkpoint is damaged")
                _set_parameter(module, name, tensor)

    def load(self, index: int, block: nn.Module) -> None:
        self._read(block, f"{self.blocks_name}.{index}", self.device)

    def release(self, index: int, block: nn.Module) -> None:
        block.to("meta")

    def _outside_names(self) -> list[str]:
        """Parameters outside the blocks that the capture needs: all but an untied output head."""
        head = self.model.get_output_embeddings()
        embedding = {id(p) for p in self.model.get_input_embeddings().parameters()}
        untied_head = {id(p) for p in head.parameters()} - embedding if head is not None else set()
        prefix = f"{self.blocks_name}."
        return [
            name
            for name, parameter in self.model.named_parameters()
            if not name.startswith(prefix) and id(parameter) not in untied_head
        ]

    def load_outside(self) -> None:
        with _Shards() as shards:
            for name in self._outside_names():
                _set_parameter(self.model, name, shards.read(self.index[name], name).to(self.dtype))

    def release_outside(self) -> None:
        for name in self._outside_names():
            parameter = self.model.get_parameter(name)
            _set_parameter(self.model, name, torch.empty_like(parameter, device="meta"))

    def write_output(self, out: Path, state_folder: Path, blocks_done: int) -> None:
        """Assemble the output folder: the walk's block files as shards, the rest copied from the source."""
        weight_map: dict[str, str] = {}
        total = blocks_done + 1
        for index in range(blocks_done):
            shard = f"model-{index + 1:05d}-of-{total:05d}.safetensors"
            source = state_folder / f"block-{index:05d}.safetensors"
            os.link(source, out / shard) if _same_device(source, out) else shutil.copyfile(source, out / shard)
            with safe_open(str(out / shard), framework="pt") as handle:
                weight_map.update(dict.fromkeys(handle.keys(), shard))
        rest_shard = f"model-{total:05d}-of-{total:05d}.safetensors"
        rest = {}
        block_prefix = f"{self.blocks_name}."
        for name, file in self.index.items():
            if not name.startswith(block_prefix):
                with safe_open(str(file), framework="pt") as handle:
                    rest[name] = handle.get_tensor(name).to(self.dtype).contiguous()
        save_file(rest, str(out / rest_shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(rest, rest_shard))
        size = sum((out / shard).stat().st_size for shard in set(weight_map.values()))
        index = {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        self.model.config.save_pretrained(out)
        generation = getattr(self.model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(out)


def _set_parameter(module: nn.Module, dotted: str, tensor: torch.Tensor) -> None:
    owner_name, _, name = dotted.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    owner._parameters[name] = nn.Parameter(tensor, requires_grad=False)


class _Shards:
    """Open safetensors shards, each opened once per read batch."""

    def __enter__(self) -> _Shards:
        self.handles: dict[Path, Any] = {}
        return self

    def read(self, file: Path, name: str) -> torch.Tensor:
        if file not in self.handles:
            self.handles[file] = safe_open(str(file), framework="pt")
        return self.handles[file].get_tensor(name)

    def __exit__(self, *exc: object) -> None:
        self.handles.clear()


def _tied_names(model: nn.Module) -> set[str]:
    seen: dict[int, str] = {}
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.setdefault(id(parameter), name)
    return tied


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def open_offloaded(source: str | Path, dtype: torch.dtype) -> tuple[nn.Module, object, Path]:
    """The model's skeleton (parameters on the meta device, buffers real), its tokenizer and its folder."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(source).expanduser()
    if not folder.is_dir() or str(source).lower().endswith(".gguf"):
        raise ModelLoadError(
            f"--offload disk reads a local folder of safetensors shards; {source} is not one (a GGUF file or a hub "
            "id must be converted first: load it and save_pretrained it)"
        )
    safetensors_index(folder)  # a clear error for pickle-only or empty folders
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # not done on meta tensors: an untied skeleton would ask the source for a tied head
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, folder


def should_offload(
    offload: str, source: str, dtype: str, recipe: Recipe | StructuredRecipe, evaluation: str | None, format: str
) -> bool:
    """Whether to stream the blocks from disk; refuses what an offloaded run cannot do, before any work."""
    if offload not in ("none", "disk", "auto"):
        raise RecipeError(f"--offload {offload!r} is not known: choose none, disk or auto")
    if offload == "none":
        return False
    if offload == "auto":
        folder = Path(source).expanduser()
        if not folder.is_dir() or model_bytes_on_disk(folder) * _dtype_ratio(source, dtype) < 0.8 * available_memory():
            return False
    blockers = [
        (isinstance(recipe, StructuredRecipe), "structured pruning rebuilds modules in memory"),
        (evaluation is not None, "--eval needs the whole model in memory: evaluate the output with secateurs eval"),
        (format != "hf", "--format packed needs the whole model: run secateurs pack on the output"),
    ]
    for blocked, why in blockers:
        if blocked:
            raise RecipeError(f"--offload disk: {why}")
    return True


def _dtype_ratio(source: str, dtype: str) -> float:
    """Bytes in memory per byte on disk: a float32 checkpoint pruned in bfloat16 takes half."""
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return 1.0
    document = json.loads(config.read_text())
    stored = document.get("dtype") or document.get("torch_dtype")
    sizes = {"float32": 4, "bfloat16": 2, "float16": 2}
    return sizes.get(dtype, 4) / sizes.get(str(stored), 4)
