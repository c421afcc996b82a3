"""``secateurs pack`` and ``secateurs unpack``: a pruned folder's weights stored compressed, and back;
``secateurs export``: a folder as a GGUF file."""

from __future__ import annotations

import argparse

from ..pipeline.export import ExportJob, run_export
from ..pipeline.pack import PackJob, UnpackJob, run_pack, run_unpack
from .build import fields_of
from .output import emit, gguf_lines, record_document
from .parser import CliOptions, Flag, given


def run_pack_command(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    job = PackJob(**fields_of(given(args, rows), "job"))
    sizes = run_pack(job)
    ratio = sizes["packed"] / sizes["packed_dense"] if sizes["packed_dense"] else None
    lines = [f"Packed {job.model} into {job.out}: {sizes['file']:,} bytes on disk"]
    if ratio is not None:
        lines.append(f"  pruned weights take {ratio:.1%} of their dense bytes")
    emit(cli.json, lines, {"out": str(job.out), **sizes, "packed_over_dense": ratio and round(ratio, 4)})


def run_unpack_command(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    job = UnpackJob(**fields_of(given(args, rows), "job"))
    run_unpack(job)
    emit(cli.json, [f"Unpacked {job.model} into {job.out}"], {"out": str(job.out)})


def run_export_command(args: argparse.Namespace, rows: tuple[Flag, ...], cli: CliOptions) -> None:
    job = ExportJob(**fields_of(given(args, rows), "job"))
    record = run_export(job)
    emit(cli.json, gguf_lines(record), record_document(record))
