"""Writers of pruned checkpoints."""

from .hf import check_output_folder, save_checkpoint

__all__ = ["check_output_folder", "save_checkpoint"]
