"""Atomic writes: every file and folder secateurs writes appears whole or not at all. A temporary sibling is
filled and renamed over the target, so an interruption or a full disk leaves the old content (or nothing),
never half of a file or a folder that looks like a model."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import OutputError


def write_file_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary)`` on a temporary sibling of ``path`` (same suffix: plotting libraries read the format
    from it), then rename it over ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_file_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


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
    check_writable_parent(out, "--out")
    return out


def check_writable_parent(out: Path, option: str) -> None:
    """The folder ``out`` goes in must exist and take new files (``option``: the flag that named ``out``)."""
    parent = out.parent
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist: create it first, or choose another {option}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write in {parent}: choose a writable place for {option}")
