"""Resumable pruning: the walk's state after every finished block, kept beside the output until it is written.

``.{out}.state/`` holds ``state.json`` (a fingerprint of the run, the finished block count, the report's
layers so far, and the SHA-256 of every file it names), one ``block-{i}.safetensors`` per finished block (its
pruned tensors) and ``inputs-{k}.safetensors`` (the next block's calibration inputs). Files are written under
new names first and ``state.json`` is replaced last, so a crash at any instant leaves the previous consistent
state. ``--resume`` reloads the finished blocks and the inputs, checks every checksum, and the walk goes on
from block k: the result is bit-identical to an uninterrupted run on the same machine, device and dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ResumeError
from ..io.atomic import write_text_atomic
from ..models.discover import tied_names, untied
from ..report.schema import LayerRecord
from ..report.serialize import from_json_value, to_json_value

STATE_VERSION = 1


def state_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.state"


def has_state(out: Path) -> bool:
    """Whether an interrupted run of ``out`` left something to resume (one process, or rank 0 of several)."""
    folder = state_folder(out)
    return (folder / "state.json").is_file() or (folder / "rank-0" / "state.json").is_file()


def fingerprint(**parts: Any) -> str:
    """A digest of everything that decides the result (source, recipe, calibration tokens, dtype, batching)."""
    digest = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        if isinstance(value, torch.Tensor):
            value = hashlib.sha256(value.cpu().contiguous().numpy().tobytes()).hexdigest()
        digest.update(f"{key}={json.dumps(value, sort_keys=True, default=str)};".encode())
    return digest.hexdigest()


def source_identity(source: str | Path) -> dict[str, Any]:
    """Names, sizes and modification times of a local model's files (hashing a large model would take minutes)."""
    path = Path(source).expanduser()
    if not path.exists():
        return {"hub": str(source)}
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {str(p.name): [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_tensors_streaming(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``tensors`` as a safetensors file one tensor at a time. ``safetensors.torch.save_file`` first
    builds the whole file in memory: for the calibration inputs (151 MB for SmolLM2 at 128 x 512) that is a
    second copy of them, made after every block."""
    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape)}
        header[name]["data_offsets"] = [offset, offset + size]
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes with spaces
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in tensors.values():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            handle.write(memoryview(flat.view(torch.uint8).numpy()))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WalkState:
    """What the walk saves after each block and restores on ``--resume`` (see the module docstring)."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.layers: list[LayerRecord] = []  # the report's layer records, appended to by the solve step
        self.blocks_done = 0
        self.files: dict[str, str] = {}
        self.extra: dict[str, Any] = {}

    # ---------------------------------------------------------------------------------------- saving

    def start(self) -> None:
        """A fresh run: any older state of this output goes."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)

    def save_block(self, index: int, prefix: str, block: nn.Module, hidden: list[torch.Tensor]) -> None:
        """Block ``index``'s tensors under their checkpoint names (``prefix.<name>``: the files can serve as the
        output's shards), and the next block's inputs."""
        block_file = f"block-{index:05d}.safetensors"
        inputs_file = f"inputs-{index + 1:05d}.safetensors"
        tensors = {f"{prefix}.{name}": t.detach().cpu().contiguous() for name, t in block.state_dict().items()}
        save_file(untied(tensors), str(self.folder / block_file), metadata={"format": "pt"})
        save_tensors_streaming({f"batch.{j:05d}": h for j, h in enumerate(hidden)}, self.folder / inputs_file)
        previous_inputs = f"inputs-{index:05d}.safetensors"
        self.files.pop(previous_inputs, None)
        self.files[block_file] = file_sha256(self.folder / block_file)
        self.files[inputs_file] = file_sha256(self.folder / inputs_file)
        self.blocks_done = index + 1
        self._write_json()
        (self.folder / previous_inputs).unlink(missing_ok=True)
        _crash_for_tests(index)

    def _write_json(self) -> None:
        document = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "blocks_done": self.blocks_done,
            "files": self.files,
            "layers": to_json_value(self.layers),
            "extra": self.extra,
        }
        write_text_atomic(self.folder / "state.json", json.dumps(document))

    def finish(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.name.startswith("rank-"):  # the last rank to finish removes the run's folder
            try:
                self.folder.parent.rmdir()
            except OSError:
                pass

    # ---------------------------------------------------------------------------------------- resuming

    def load(self) -> None:
        """Read and check ``state.json`` and every file it names; raises ResumeError when they do not match."""
        path = self.folder / "state.json"
        if not path.is_file():
            raise ResumeError(f"there is no saved state in {self.folder} to resume from: run without --resume")
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ResumeError(f"{path} is damaged ({error}): run without --resume to start over") from error
        if document.get("version") != STATE_VERSION or document.get("fingerprint") != self.fingerprint:
            raise ResumeError(
                f"the state in {self.folder} comes from another model, recipe, calibration set, dtype or batching: "
                "rerun the interrupted command exactly, or run without --resume to start over"
            )
        for name, digest in document["files"].items():
            file = self.folder / name
            if not file.is_file() or file_sha256(file) != digest:
                raise ResumeError(f"{file} is missing or damaged (checksum): run without --resume to start over")
        self.blocks_done = document["blocks_done"]
        self.files = document["files"]
        self.layers[:] = from_json_value(list[LayerRecord], document["layers"])
        self.extra = document.get("extra", {})

    def resume(self, blocks: nn.ModuleList, streams: list[list[torch.Tensor]]) -> int:
        """Load an interrupted run's finished blocks and the next block's inputs into ``streams`` (the pruned
        stream's batches, then any stream walking beside it); returns the first block to walk (0: none done)."""
        if not self.blocks_done:
            return 0
        saved = self.restore(blocks, load_blocks=self.extra.get("restore_blocks", True))
        if saved is not None:
            device = streams[0][0].device
            if [tuple(h.shape) for h in saved] != [tuple(h.shape) for stream in streams for h in stream]:
                raise ResumeError("the saved calibration inputs do not match this run's batches: run without --resume")
            for stream in streams:
                stream[:], saved = [h.to(device) for h in saved[: len(stream)]], saved[len(stream) :]
        return self.blocks_done

    def restore(self, blocks: nn.ModuleList, load_blocks: bool = True) -> list[torch.Tensor] | None:
        """Load the finished blocks' tensors into ``blocks`` (unless they stay on disk, offloaded); returns the
        next block's inputs (None: block 0's)."""
        for index in range(self.blocks_done if load_blocks else 0):
            saved = load_file(str(self.folder / f"block-{index:05d}.safetensors"))
            tensors = {_relative(name, index): t for name, t in saved.items()}
            missing, unexpected = blocks[index].load_state_dict(tensors, strict=False)
            if unexpected or any(name not in tied_names(blocks[index]) for name in missing):
                raise ResumeError(f"the saved block {index} does not fit the model: run without --resume")
        if self.blocks_done == 0:
            return None
        saved = load_file(str(self.folder / f"inputs-{self.blocks_done:05d}.safetensors"))
        return [saved[name] for name in sorted(saved)]


def _relative(name: str, index: int) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``mlp.up_proj.weight`` (the block's own name)."""
    marker = f".{index}."
    return name.split(marker, 1)[1]


def _crash_for_tests(index: int) -> None:
    """Fault injection for the crash-and-resume tests: SIGKILL right after block ``index``'s state is saved."""
    if os.environ.get("SECATEURS_KILL_AFTER_BLOCK") == str(index):
        os.kill(os.getpid(), 9)
