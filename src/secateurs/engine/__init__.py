"""The block-by-block walk (``loop``) and the parts it calls: capture of the first block's inputs, observation
of each Linear's inputs, a strategy per block, block stores (memory, disk offload), resume state, block hooks
(the dense model's inputs beside the pruned stream's: ``dense``)."""

from .capture import BlockInputs, capture_block_inputs, run_block
from .dense import DenseInputs
from .loop import BlockHook, WalkParts, WalkSettings, walk
from .memory import available_memory, fix_mmap_threshold, one_pass_fits, release_free_memory
from .observe import Observer, Reduce
from .resume import WalkState
from .stores import BlockStore, MemoryBlocks
from .strategies import DEFAULT_BATCH_SIZE, BlockWork, LayerSolver

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "BlockHook",
    "BlockInputs",
    "BlockStore",
    "BlockWork",
    "DenseInputs",
    "LayerSolver",
    "MemoryBlocks",
    "Observer",
    "Reduce",
    "WalkParts",
    "WalkSettings",
    "WalkState",
    "available_memory",
    "capture_block_inputs",
    "fix_mmap_threshold",
    "one_pass_fits",
    "release_free_memory",
    "run_block",
    "walk",
]
