"""Hugging Face checkpoints, written atomically (``secateurs.io.atomic``): a temporary sibling folder, renamed
when complete, so an interrupted run never leaves a folder that looks like a model. Every checkpoint folder holds
its report: ``secateurs.json`` and ``report.md``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OutputError
from ..report import REPORT_NAME, Report, peak_rss_mib, write_markdown_report
from .atomic import check_output_folder, write_folder_atomically


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


def write_report(folder: Path, report: Report | None, started: float) -> None:
    """``secateurs.json`` and ``report.md`` into ``folder``, the last files of a checkpoint: the report gets the
    save's own figures (its seconds since ``started``, the weight files' bytes, the peak memory so far)."""
    if report is None:
        return
    report.seconds["save"] = round(time.perf_counter() - started, 3)
    report.weight_file_bytes = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    report.peak_rss_mib = max(report.peak_rss_mib or 0.0, peak_rss_mib())
    (folder / REPORT_NAME).write_text(report.to_json())
    write_markdown_report(report, folder)


def save_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    report: Report | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (safetensors), ``tokenizer`` and the report to ``out``, checked by reading it back."""
    out = check_output_folder(out, overwrite)
    started = time.perf_counter()

    def fill(partial: Path) -> None:
        model.save_pretrained(partial)
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        verify_saved(partial, model)
        write_report(partial, report, started)

    return write_folder_atomically(out, fill)
