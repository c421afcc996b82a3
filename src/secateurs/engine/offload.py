"""Models larger than memory: the model is built without weights (meta device) and each decoder block's tensors
are read from the source safetensors shards when its turn comes, pruned, written, and dropped.

Peak memory is about one block plus the calibration activations, whatever the model's size. The blocks
written by the walk's resume state (``secateurs.engine.resume``, one safetensors file per block under the
checkpoint's own names) become the output's shards (``secateurs.io.sharded``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..errors import ModelLoadError, NumericalError, UnsupportedModelError
from ..io.sharded import INDEX_NAME
from ..models.discover import find_blocks, tied_names


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
        tied = tied_names(self.model)
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
                    raise NumericalError(
                        f"the model's weight {full} holds NaN or Inf: the checkpoint is damaged; "
                        "download the model again, or check the files it was converted from"
                    )
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


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory) and keep real buffers (rotary
    tables are computed at construction), as accelerate's ``init_empty_weights(include_buffers=False)``."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        register(module, name, parameter)
        if parameter is not None:
            kept = module._parameters[name]
            module._parameters[name] = type(kept)(kept.to("meta"), requires_grad=parameter.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def open_offloaded(source: str | Path, dtype: torch.dtype) -> tuple[nn.Module, object, Path]:
    """The model's skeleton (parameters on the meta device, buffers real), its tokenizer and its folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(source).expanduser()
    if not folder.is_dir() or str(source).lower().endswith(".gguf"):
        raise ModelLoadError(
            f"--offload disk reads a local folder of safetensors shards; {source} is not one (a GGUF file or a hub "
            "id must be converted first: load it and save_pretrained it)"
        )
    safetensors_index(folder)  # a clear error for pickle-only or empty folders
    config = AutoConfig.from_pretrained(folder)
    with _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # not done on meta tensors: an untied skeleton would ask the source for a tied head
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, folder
