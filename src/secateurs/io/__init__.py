"""Reading and writing models and files: atomic writes, HF folders, packed checkpoints, sharded output of a walk
from disk, 2:4 kernels."""

from .atomic import check_output_folder, write_folder_atomically, write_json_atomic, write_text_atomic
from .loading import FORMATS, load, save
from .packed import is_packed, pack, packed_sizes, save_packed, unpack

__all__ = [
    "FORMATS",
    "check_output_folder",
    "is_packed",
    "load",
    "pack",
    "packed_sizes",
    "save",
    "save_packed",
    "unpack",
    "write_folder_atomically",
    "write_json_atomic",
    "write_text_atomic",
]
