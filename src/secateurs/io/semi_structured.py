"""2:4 weights on sparse tensor cores: a loaded model's 2:4 Linear weights replaced by ``torch.sparse``
semi-structured tensors (cuSPARSELt or CUTLASS), on NVIDIA GPUs of compute capability 8.0 or newer."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import SemiStructuredError
from ..models import find_blocks, find_targets
from ..patterns import NMPattern, is_nm_sparse

SEMI_STRUCTURED = NMPattern(2, 4)


def check_semi_structured(dtype: torch.dtype) -> None:
    """Raise SemiStructuredError unless 2:4 sparse tensor-core kernels can run here in ``dtype``."""
    if not torch.cuda.is_available():
        raise SemiStructuredError(
            "semi_structured=True runs 2:4 weights on sparse tensor cores, which need an NVIDIA GPU of compute "
            "capability 8.0 or newer; this machine has no usable CUDA device: load without semi_structured (the "
            "weights stay dense, the results are the same)"
        )
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        raise SemiStructuredError(
            f"semi_structured=True needs sparse tensor cores (compute capability 8.0+, e.g. A100, H100); "
            f"{torch.cuda.get_device_name()} has {major}.{minor}: load without semi_structured"
        )
    if dtype not in (torch.float16, torch.bfloat16):
        raise SemiStructuredError(
            f"semi_structured=True runs float16 or bfloat16 matmuls but the model would be "
            f'{str(dtype).removeprefix("torch.")}: pass dtype="float16" (or "bfloat16")'
        )


def semi_structured_fits(rows: int, columns: int) -> bool:
    """Whether a 16-bit weight's shape suits both PyTorch backends (CUTLASS: multiples of 32 x 64)."""
    return rows >= 32 and columns >= 64 and rows % 32 == 0 and columns % 64 == 0


def to_semi_structured(model: nn.Module) -> list[str]:
    """Replace every 2:4 ``nn.Linear`` weight of the decoder blocks (on CUDA) with a semi-structured sparse
    tensor; returns their names. Conv1D and fused-expert weights stay dense (no sparse kernel for them)."""
    from torch.sparse import to_sparse_semi_structured

    prefix, blocks = find_blocks(model)
    swapped, unfit = [], []
    for index, block in enumerate(blocks):
        for target in find_targets(block, f"{prefix}.{index}"):
            module = target.module
            if not isinstance(module, nn.Linear) or not is_nm_sparse(module.weight.data, SEMI_STRUCTURED):
                continue
            if not semi_structured_fits(*module.weight.shape):
                unfit.append(target.name)
                continue
            sparse = to_sparse_semi_structured(module.weight.data.contiguous())
            module.weight = nn.Parameter(sparse, requires_grad=False)
            swapped.append(target.name)
    if unfit:
        warnings.warn(
            f"{len(unfit)} 2:4 Linear weights ({unfit[0]} ...) have shapes the sparse kernels do not take "
            "(multiples of 32 x 64): they stay dense",
            stacklevel=2,
        )
    if not swapped:
        raise SemiStructuredError(
            "no Linear weight of the decoder blocks is 2:4 sparse (with a shape the kernels take), so there is "
            "nothing to run on sparse tensor cores: prune with --pattern 2:4"
        )
    return swapped
