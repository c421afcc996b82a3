"""Models: loading (HF folder, hub id, GGUF) and generic discovery of decoder blocks and their weights."""

from .discover import Target, check_token_ids, find_blocks, find_targets
from .load import load_model, resolve_device, resolve_dtype

__all__ = ["Target", "check_token_ids", "find_blocks", "find_targets", "load_model", "resolve_device", "resolve_dtype"]
