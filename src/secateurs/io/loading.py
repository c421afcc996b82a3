"""Loading and saving any model secateurs reads or writes: a Hugging Face folder, a hub id, a GGUF file or a
packed checkpoint; saved as an HF folder or packed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import load_model, resolve_dtype
from ..report import Report
from .hf import save_checkpoint
from .packed import checkpoint_dtype, is_packed, load_packed, save_packed
from .semi_structured import check_semi_structured, to_semi_structured

FORMATS = ("hf", "packed")


def load(
    source: str | Path,
    dtype: str | torch.dtype | None = None,
    *,
    trust_pickle: bool = False,
    semi_structured: bool = False,
) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` on the CPU from ``source``: a packed folder, an HF folder, a ``.gguf`` file or a hub
    id; in ``dtype`` (None: the stored one; GGUF files dequantize to float32). ``trust_pickle`` allows pickle-only
    checkpoints (unpickling runs code).

    ``semi_structured``: on a CUDA GPU of compute capability 8.0+ in float16/bfloat16, move the model to the GPU
    and replace every 2:4 Linear weight of the decoder blocks with a ``torch.sparse`` semi-structured tensor,
    so its matmuls run on sparse tensor cores; anywhere else a SemiStructuredError says why not.
    """
    path = Path(source).expanduser()
    torch_dtype = resolve_dtype(dtype) if dtype is not None else None
    packed = path.is_dir() and is_packed(path)
    if semi_structured:
        check_semi_structured(torch_dtype or _stored_dtype(path, packed))
    if packed:
        model, tokenizer = load_packed(path, torch_dtype)
    else:
        model, tokenizer = load_model(source, torch_dtype or _stored_dtype(path, packed), trust_pickle=trust_pickle)
    if semi_structured:
        model.to("cuda")
        to_semi_structured(model)
    return model, tokenizer


def _stored_dtype(path: Path, packed: bool) -> torch.dtype:
    from .packed import stored_dtype

    if packed:
        return stored_dtype(path)
    return checkpoint_dtype(path) if path.is_dir() else torch.float32


def save(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    report: Report | None = None,
    *,
    format: str = "hf",
    pattern: str = "unstructured",
    ignore: tuple[str, ...] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` (and the report) to the folder ``out``, atomically: ``hf`` (what
    ``from_pretrained`` reads) or ``packed`` (pruned weights compressed; ``pattern`` and ``ignore`` say which
    weights are stored N:M, see ``secateurs.io.packed``)."""
    if format == "packed":
        return save_packed(model, tokenizer, out, report, pattern=pattern, ignore=ignore, overwrite=overwrite)
    return save_checkpoint(model, tokenizer, out, report, overwrite)
