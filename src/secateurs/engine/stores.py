"""Block stores: where a block's weights live between its turns in the walk. ``MemoryBlocks``: the whole model
is in memory and a block visits the compute device for its turn; ``secateurs.engine.offload.DiskBlocks``: each
block is read from the source's shards and dropped after (a model larger than memory)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class BlockStore(Protocol):
    def load(self, index: int, block: nn.Module) -> None: ...

    def release(self, index: int, block: nn.Module) -> None: ...

    def load_outside(self) -> None: ...

    def release_outside(self) -> None: ...


class MemoryBlocks:
    """The whole model is in memory: a block goes to the compute device for its turn and comes back."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def load(self, index: int, block: nn.Module) -> None:
        block.to(self.device)

    def release(self, index: int, block: nn.Module) -> None:
        if self.device.type != "cpu":
            block.to("cpu")

    def load_outside(self) -> None:
        pass

    def release_outside(self) -> None:
        pass
