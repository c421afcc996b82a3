"""Writers and readers of pruned checkpoints: Hugging Face folders, and packed (compressed) ones."""

from .hf import check_output_folder, save_checkpoint
from .packed import is_packed, load, pack, packed_sizes, save_packed, unpack

__all__ = [
    "check_output_folder",
    "is_packed",
    "load",
    "pack",
    "packed_sizes",
    "save_checkpoint",
    "save_packed",
    "unpack",
]
