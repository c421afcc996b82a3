"""Hugging Face checkpoints, written atomically: a temporary sibling folder, renamed when complete, so an
interrupted run never leaves a folder that looks like a model."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OutputError
from ..report_md import write_markdown_report

REPORT_NAME = "secateurs.json"


def check_output_folder(out: str | Path, overwrite: bool = False, source: str | Path | None = None) -> Path:
    """Refuse, before any work, an output that would lose data or cannot be written."""
    out = Path(out).expanduser().resolve()
    if source is not None:
        source_path = Path(source).expanduser().resolve()
        source_folder = source_path.parent if source_path.is_file() else source_path
        if out == source_folder or out == source_path:
            raise OutputError(f"output {out} is the input model's folder: choose another --out")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file: choose a folder path for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"output folder {out} is not empty: choose another --out, or pass --overwrite")
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist: create it first, or choose another --out")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write in {parent}: choose a writable place for --out")
    return out


def write_folder_atomically(out: Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(folder)`` on a temporary sibling of ``out``, then put it in place of ``out``: an error or
    an interruption leaves nothing behind (``out`` is checked by ``check_output_folder`` first)."""
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        fill(partial)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(partial, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(partial, out)
    except OSError as error:
        raise OutputError(
            f"could not write {out}: {error.strerror or error}: free space or choose another --out"
        ) from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def verify_saved(folder: Path, model: nn.Module) -> None:
    """Read back every tensor written to ``folder``: a short write (a full disk, a dying drive) is caught
    before the folder takes its final name. A tensor saved under its model name must equal the model's; as
    transformers renames some on save (``lm_head`` -> ``embed_out``) and splits fused MoE experts into one
    matrix per expert, the rest is checked by count: the elements written equal the model's."""
    from safetensors import SafetensorError, safe_open

    expected = model.state_dict()
    written = 0
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    tensor = handle.get_tensor(name)
                    written += tensor.numel()
                    same_name = expected.get(name)
                    if (
                        same_name is not None
                        and same_name.shape == tensor.shape
                        and not torch.equal(tensor, same_name.cpu())
                    ):
                        raise OutputError(f"{file.name} does not hold {name} as written: check the disk, and run again")
        except SafetensorError as error:
            raise OutputError(f"{file.name} cannot be read back ({error}): check the disk, and run again") from error
    storages: dict[int, int] = {}
    for tensor in expected.values():  # tied weights are written once
        pointer = tensor.untyped_storage().data_ptr()
        storages[pointer] = max(storages.get(pointer, 0), tensor.numel())
    if written != sum(storages.values()):
        raise OutputError(
            f"the checkpoint written holds {written} weights, the model {sum(storages.values())}: check the disk, "
            "and run again"
        )


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    report: dict[str, Any],
    overwrite: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` (safetensors), ``tokenizer``, the report ``secateurs.json`` and its readable form
    ``report.md`` (with its plots) to ``out``."""
    out = check_output_folder(out, overwrite)

    def fill(partial: Path) -> None:
        model.save_pretrained(partial)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        (partial / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        write_markdown_report(report, partial)
        if extra is not None:  # more files of the caller's (plots), inside the same atomic write
            extra(partial)
        verify_saved(partial, model)

    return write_folder_atomically(out, fill)
