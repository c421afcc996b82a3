"""Packed checkpoints: the pruned weights stored compressed, so that a pruned model is really smaller on disk.

A packed folder holds:

- ``config.json``: the model's config plus a ``secateurs`` section that describes every stored tensor
  (``format``, ``version``, ``weights`` file, ``dtype``, declared ``pattern``, and per tensor its
  ``encoding``, ``shape``, ``dtype``; for packed weights also ``transposed``, ``kept`` or ``pattern`` and
  ``index_bits``);
- ``packed.safetensors``: the model's state dict, where each pruned weight of the decoder blocks is replaced
  by compressed tensors:

  - ``bitmask`` (unstructured): ``NAME::bitmask``, uint8, one bit per weight of the ``[rows, in]`` matrix in
    row-major order, bit ``i`` of byte ``j`` is weight ``8 j + i``, zero-padded to a whole byte; and
    ``NAME::values``, the kept weights in their own dtype, 1-D, in the same order;
  - ``nm`` (N:M): ``NAME::values``, ``[rows, in * N / M]``, the N weights kept in every group of M
    consecutive inputs, in input order; and ``NAME::indices``, uint8, each kept weight's position in its
    group (0..M-1, increasing inside a group), ``ceil(log2 M)`` bits each, packed as one little-endian bit
    stream (2 bits per index for 2:4, 3 for 4:8);
  - everything else (embeddings, norms, ``lm_head``, weights that would not shrink) is stored as is;
- the tokenizer, the generation config and the pruning report ``secateurs.json``, as in an HF folder.

A weight is "kept" when its bits are not all zero, so -0.0 survives and a round trip is bit-identical.
Weights are seen as ``[out, in]`` matrices (N:M groups run along the inputs): a Linear as stored, GPT-2's
Conv1D (stored ``[in, out]``) transposed, a fused MoE expert parameter ``[experts, out, in]`` as
``experts * out`` rows. No pickle: only JSON and safetensors.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, OutputError, PackedFormatError, PatternViolationError, RecipeError
from ..models import find_blocks, find_targets, load_model, resolve_dtype
from ..models.discover import tied_names
from ..patterns import NMPattern, is_nm_sparse, parse_pattern
from ..report import REPORT_NAME, Report
from .atomic import check_output_folder, write_folder_atomically
from .hf import save_checkpoint, write_report

FORMAT = "secateurs-packed"
VERSION = 1
SECTION = "secateurs"
WEIGHTS_NAME = "packed.safetensors"
VALUES, BITMASK, INDICES = "::values", "::bitmask", "::indices"
ENCODINGS = ("dense", "bitmask", "nm")
# Files of a source folder that a packed folder replaces (weights, their index, pickles, the config).
_NOT_COPIED = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.pt", "*.pth", "*.ckpt", "config.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


# ---------------------------------------------------------------------------------------------- bits


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """1-D 0/1 tensor -> uint8 bytes, bit ``i`` of byte ``j`` holding element ``8 j + i`` (zero-padded)."""
    bits = bits.reshape(-1).to(torch.uint8)
    padding = (-bits.numel()) % 8
    if padding:
        bits = torch.cat([bits, bits.new_zeros(padding)])
    octets = bits.view(-1, 8)
    packed = torch.zeros(octets.shape[0], dtype=torch.uint8)
    for position in range(8):
        packed |= octets[:, position] << position
    return packed


def unpack_bits(packed: torch.Tensor, count: int) -> tuple[torch.Tensor, bool]:
    """uint8 bytes -> the first ``count`` bits (uint8 0/1) and whether the padding bits after them are zero."""
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = ((packed.reshape(-1, 1) >> shifts) & 1).reshape(-1)
    return bits[:count], not bool(bits[count:].any())


def index_bits(m: int) -> int:
    """Bits that hold an in-group position 0..M-1: ceil(log2 M), at least 1."""
    return max(1, (m - 1).bit_length())


def pack_indices(indices: torch.Tensor, bits: int) -> torch.Tensor:
    """Non-negative integers below ``2**bits`` -> one little-endian bit stream of ``bits`` bits each."""
    indices = indices.reshape(-1).to(torch.int32)
    planes = torch.stack([((indices >> bit) & 1).to(torch.uint8) for bit in range(bits)], dim=1)
    return pack_bits(planes)


def unpack_indices(packed: torch.Tensor, count: int, bits: int) -> tuple[torch.Tensor, bool]:
    """Inverse of ``pack_indices``: ``count`` integers (int64) and whether the padding bits are zero."""
    stream, clean = unpack_bits(packed, count * bits)
    planes = stream.view(count, bits).to(torch.int64)
    weights = torch.tensor([1 << bit for bit in range(bits)], dtype=torch.int64)
    return (planes * weights).sum(1), clean


# ------------------------------------------------------------------------------------------ encodings


def _nonzero_bits(matrix: torch.Tensor) -> torch.Tensor:
    """True where a weight's bits are not all zero (so -0.0 counts as kept and survives the round trip)."""
    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[matrix.element_size()]
    return matrix.view(integer) != 0


def bitmask_bytes(numel: int, kept: int, itemsize: int) -> int:
    """Stored bytes of a bitmask-encoded weight: one bit per weight plus the kept values."""
    return (numel + 7) // 8 + kept * itemsize


def nm_bytes(numel: int, pattern: NMPattern, itemsize: int) -> int:
    """Stored bytes of an N:M-encoded weight: N/M of the values plus ceil(log2 M) bits per kept value."""
    kept = numel // pattern.m * pattern.n
    return kept * itemsize + (kept * index_bits(pattern.m) + 7) // 8


def encode_bitmask(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, columns]`` weight -> (bitmask bytes, kept values in row-major order)."""
    mask = _nonzero_bits(matrix)
    return pack_bits(mask), matrix[mask].contiguous()


def decode_bitmask(bitmask: torch.Tensor, values: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """Inverse of ``encode_bitmask``; raises PackedFormatError (without a name) when they disagree."""
    numel = rows * columns
    if bitmask.dtype != torch.uint8 or bitmask.dim() != 1 or bitmask.numel() != (numel + 7) // 8:
        raise _Mismatch(
            f"the bitmask is {_tensor_text(bitmask)} where uint8 [{(numel + 7) // 8}] (one bit per weight of "
            f"{rows} x {columns}) is described"
        )
    bits, clean = unpack_bits(bitmask, numel)
    mask = bits.bool()
    kept = int(mask.sum())
    if values.dim() != 1 or values.numel() != kept:
        raise _Mismatch(f"the bitmask marks {kept} kept weights but the values are {_tensor_text(values)}")
    if not clean:
        raise _Mismatch("the bitmask's padding bits after the last weight are not zero")
    matrix = torch.zeros(numel, dtype=values.dtype)
    matrix[mask] = values
    return matrix.view(rows, columns)


def is_nm_packable(matrix: torch.Tensor, pattern: NMPattern) -> bool:
    """True when every group of M consecutive inputs holds at most N weights whose bits are not zero."""
    rows, columns = matrix.shape
    if columns % pattern.m:
        return False
    counts = _nonzero_bits(matrix).reshape(rows, columns // pattern.m, pattern.m).sum(-1)
    return bool((counts <= pattern.n).all())


def encode_nm(matrix: torch.Tensor, pattern: NMPattern) -> tuple[torch.Tensor, torch.Tensor]:
    """``[rows, columns]`` N:M weight -> (values ``[rows, columns * N / M]``, packed in-group indices).

    Needs ``is_nm_packable``; a group with fewer than N non-zeros also keeps its first zeros."""
    rows, columns = matrix.shape
    n, m = pattern.n, pattern.m
    groups = matrix.reshape(rows, columns // m, m)
    nonzero = _nonzero_bits(groups).to(torch.int16)
    # Unique key per position: non-zeros first, then earlier positions; the N largest are the kept ones.
    key = nonzero * m + torch.arange(m - 1, -1, -1, dtype=torch.int16)
    kept = torch.topk(key, n, dim=-1, sorted=False).indices.sort(dim=-1).values
    values = torch.gather(groups, -1, kept).reshape(rows, columns // m * n)
    return values.contiguous(), pack_indices(kept, index_bits(m))


def decode_nm(values: torch.Tensor, indices: torch.Tensor, rows: int, columns: int, pattern: NMPattern) -> torch.Tensor:
    """Inverse of ``encode_nm``; raises PackedFormatError (without a name) when they disagree."""
    n, m = pattern.n, pattern.m
    if columns % m:
        raise _Mismatch(f"{columns} inputs are not a multiple of M={m}, so the weight cannot be {pattern}")
    kept_per_row = columns // m * n
    if tuple(values.shape) != (rows, kept_per_row):
        raise _Mismatch(
            f"the values are {_tensor_text(values)} where [{rows}, {kept_per_row}] ({pattern}) is described"
        )
    count, bits = rows * kept_per_row, index_bits(m)
    if indices.dtype != torch.uint8 or indices.dim() != 1 or indices.numel() != (count * bits + 7) // 8:
        raise _Mismatch(
            f"the indices are {_tensor_text(indices)} where uint8 [{(count * bits + 7) // 8}] ({count} indices "
            f"of {bits} bits) is described"
        )
    positions, clean = unpack_indices(indices, count, bits)
    if not clean:
        raise _Mismatch("the indices' padding bits after the last index are not zero")
    positions = positions.view(rows, columns // m, n)
    if positions.numel() and int(positions.max()) >= m:
        raise _Mismatch(f"an in-group index is {int(positions.max())}, out of range for groups of M={m}")
    if n > 1 and not bool((positions[..., 1:] > positions[..., :-1]).all()):
        raise _Mismatch(
            f"a group lists the same in-group index twice (or out of order), so the weight is not {pattern}"
        )
    matrix = torch.zeros(rows, columns // m, m, dtype=values.dtype)
    matrix.scatter_(-1, positions, values.view(rows, columns // m, n))
    return matrix.view(rows, columns)


class _Mismatch(PackedFormatError):
    """A tensor disagrees with its description; re-raised with the tensor's name and what to do."""


def _tensor_text(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


# ------------------------------------------------------------------------------- which weights, how


def _matrix(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The ``[out, in]`` view the encodings work on (N:M groups run along the inputs)."""
    return tensor.t() if transposed else tensor.reshape(-1, tensor.shape[-1])


def _matrix_shape(shape: list[int], transposed: bool) -> tuple[int, int]:
    if transposed:
        return shape[1], shape[0]
    rows = 1
    for size in shape[:-1]:
        rows *= size
    return rows, shape[-1]


def _from_matrix(matrix: torch.Tensor, shape: list[int], transposed: bool) -> torch.Tensor:
    return matrix.t().contiguous() if transposed else matrix.reshape(shape)


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without the second name of tied weights (``lm_head`` tied to the embeddings)."""
    tied = tied_names(model)
    return {name: tensor.detach() for name, tensor in model.state_dict(keep_vars=True).items() if name not in tied}


def _pruned_weights(model: nn.Module, ignore: list[str]) -> dict[str, tuple[bool, bool]]:
    """State-dict name -> (transposed, pattern applies) for every weight the pruning walk sees; the pattern
    does not apply to weights the recipe's ``ignore`` globs left dense."""
    prefix, blocks = find_blocks(model)
    names: dict[int, str] = {}
    for name, parameter in model.named_parameters():
        names.setdefault(id(parameter), name)
    found: dict[str, tuple[bool, bool]] = {}
    for index, block in enumerate(blocks):
        pruned = {target.name for target in find_targets(block, f"{prefix}.{index}", ignore)}
        for target in find_targets(block, f"{prefix}.{index}"):
            name = names[id(target.parameter)]
            applies = found.get(name, (False, False))[1] or target.name in pruned
            found[name] = (target.transposed, applies)
    return found


def _nm_violation(matrix: torch.Tensor, pattern: NMPattern) -> str:
    rows, columns = matrix.shape
    if columns % pattern.m:
        return f"its {columns} inputs are not a multiple of M={pattern.m}"
    counts = (matrix != 0).reshape(rows, columns // pattern.m, pattern.m).sum(-1)
    row, group = (counts > pattern.n).nonzero()[0].tolist()
    return (
        f"row {row}, inputs {group * pattern.m}..{group * pattern.m + pattern.m - 1} hold "
        f"{int(counts[row, group])} non-zeros"
    )


def choose_encoding(matrix: torch.Tensor, pattern: NMPattern | None, applies: bool, name: str) -> str:
    """``nm`` when the weight is N:M as declared; else ``bitmask`` when that is smaller than the dense weight,
    else ``dense``. A weight the declared pattern applies to but does not fit is a PatternViolationError."""
    if pattern is not None:
        if is_nm_packable(matrix, pattern):
            return "nm"
        if applies and not is_nm_sparse(matrix, pattern):
            raise PatternViolationError(
                f"weight {name} is not {pattern} sparse ({_nm_violation(matrix, pattern)}), but {pattern} is "
                f"claimed: prune it with --pattern {pattern}, leave it out with --ignore, or pack with "
                "--pattern unstructured"
            )
        # Value-wise N:M but for -0.0 entries: the bitmask keeps them bit-exact.
    kept = int(_nonzero_bits(matrix).sum())
    smaller = bitmask_bytes(matrix.numel(), kept, matrix.element_size()) < matrix.numel() * matrix.element_size()
    return "bitmask" if smaller else "dense"


def encode_state(
    model: nn.Module, pattern: NMPattern | None, ignore: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The tensors to store and their descriptions (see the module's docstring)."""
    pruned = _pruned_weights(model, ignore)
    tensors: dict[str, torch.Tensor] = {}
    described: dict[str, dict[str, Any]] = {}
    for name, tensor in _unique_state(model).items():
        tensor = tensor.cpu()
        entry: dict[str, Any] = {"encoding": "dense", "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype)}
        if name in pruned and tensor.is_floating_point():
            transposed, applies = pruned[name]
            matrix = _matrix(tensor, transposed)
            encoding = choose_encoding(matrix, pattern, applies, name)
            if encoding == "nm":
                assert pattern is not None
                tensors[name + VALUES], tensors[name + INDICES] = encode_nm(matrix, pattern)
                entry.update(pattern=str(pattern), index_bits=index_bits(pattern.m))
            elif encoding == "bitmask":
                tensors[name + BITMASK], tensors[name + VALUES] = encode_bitmask(matrix)
                entry["kept"] = tensors[name + VALUES].numel()
            if encoding != "dense":
                entry.update(encoding=encoding, transposed=transposed)
        if entry["encoding"] == "dense":
            tensors[name] = tensor.contiguous()
        described[name] = entry
    return tensors, described


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _main_dtype(described: dict[str, dict[str, Any]]) -> str:
    """The floating dtype holding most weights: the one the model is built in."""
    sizes: dict[str, int] = {}
    for entry in described.values():
        if _torch_dtype(entry["dtype"]).is_floating_point:
            count = 1
            for size in entry["shape"]:
                count *= size
            sizes[entry["dtype"]] = sizes.get(entry["dtype"], 0) + count
    return max(sizes, key=sizes.__getitem__) if sizes else "float32"


# ------------------------------------------------------------------------------------------- writing


def save_packed(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    report: Report | None = None,
    *,
    pattern: str = "unstructured",
    ignore: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    copy_files_from: Path | None = None,
) -> Path:
    """Write ``model`` as a packed checkpoint to ``out`` (atomically: nothing is left behind on error).

    ``pattern``: ``"2:4"``, ``"4:8"``... stores the pruned weights that satisfy it as N:M (one that the
    pattern applies to but does not satisfy is a PatternViolationError), ``"unstructured"`` stores bitmasks.
    ``ignore``: globs of weights the pattern does not apply to. ``copy_files_from``: a source folder whose
    tokenizer and other non-weight files are copied (else ``tokenizer`` is saved).
    """
    out = check_output_folder(out, overwrite, source=copy_files_from)
    nm = parse_pattern(pattern)
    started = time.perf_counter()

    def fill(partial: Path) -> None:
        if copy_files_from is not None:
            _copy_side_files(copy_files_from, partial)
        elif tokenizer is not None:
            tokenizer.save_pretrained(partial)
        generation = getattr(model, "generation_config", None)
        if generation is not None and not (partial / "generation_config.json").exists():
            generation.save_pretrained(partial)
        _write_packed(model, partial, nm, list(ignore))
        verify_packed(partial, model)
        write_report(partial, report, started)

    return write_folder_atomically(out, fill)


def _write_packed(model: nn.Module, folder: Path, nm: NMPattern | None, ignore: list[str]) -> None:
    """The weights file and the config with its ``secateurs`` section (see the module docstring)."""
    from safetensors.torch import save_file

    tensors, described = encode_state(model, nm, ignore)
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", SECTION: f"{FORMAT} {VERSION}"})
    model.config.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = _main_dtype(described)
    config[SECTION] = {
        "format": FORMAT,
        "version": VERSION,
        "weights": WEIGHTS_NAME,
        "dtype": config["dtype"],
        "pattern": str(nm) if nm is not None else "unstructured",
        "tensors": described,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def verify_packed(folder: Path, model: nn.Module) -> None:
    """Decode every tensor written to ``folder``, one at a time, and compare it with the model's: a short write
    (a full disk, a dying drive) is caught before the folder takes its final name."""
    expected = _unique_state(model)
    for name, tensor in decode_tensors(folder, read_description(folder)[1]):
        if name in expected and not torch.equal(tensor, expected[name].cpu()):
            raise OutputError(f"{WEIGHTS_NAME} does not hold {name} as written: check the disk, and run again")


def _copy_side_files(source: Path, destination: Path) -> None:
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not any(path.match(g) for g in _NOT_COPIED):
            shutil.copy2(path, destination / path.name)


def pack(
    source: str | Path,
    out: str | Path,
    *,
    pattern: str = "unstructured",
    ignore: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
) -> Path:
    """Pack the HF folder ``source`` (a pruned model, in its own dtype) into ``out``, its report copied.
    ``pattern``/``ignore`` as in ``save_packed``."""
    folder = Path(source).expanduser()
    check_output_folder(out, overwrite, source=folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a Hugging Face model folder (no config.json): give the pruned folder")
    if is_packed(folder):
        raise OutputError(f"{folder} is already packed: give an ordinary Hugging Face folder, or unpack it first")
    model, tokenizer = load_model(folder, checkpoint_dtype(folder))
    return save_packed(
        model,
        tokenizer,
        out,
        source_report(folder),
        pattern=pattern,
        ignore=ignore,
        overwrite=overwrite,
        copy_files_from=folder,
    )


def source_report(folder: Path) -> Report | None:
    """The report a secateurs run left in ``folder``, carried over to what is made of it (None: none, or one this
    version cannot read)."""
    try:
        return Report.read(folder / REPORT_NAME)
    except (OSError, ValueError, TypeError):
        return None


def checkpoint_dtype(folder: Path) -> torch.dtype:
    """The floating dtype an HF folder's weights are stored in (float32 when it cannot tell)."""
    from safetensors import safe_open

    codes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as weights:
                for key in weights.keys():
                    code = weights.get_slice(key).get_dtype()
                    if code in codes:
                        return codes[code]
        except Exception:  # noqa: BLE001 - an unreadable file is the loader's error to report
            break
    return torch.float32


# ------------------------------------------------------------------------------------------- reading


def is_packed(folder: str | Path) -> bool:
    """Whether ``folder`` is a packed checkpoint (its config.json has a ``secateurs`` packed section)."""
    config = Path(folder) / "config.json"
    try:
        section = json.loads(config.read_text()).get(SECTION)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(section, dict) and section.get("format") == FORMAT


def read_description(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config without the packed section, the section), checked for a format this version reads."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise PackedFormatError(
            f"{folder}/config.json cannot be read ({error}): the packed folder is damaged"
        ) from None
    section = config.pop(SECTION, None)
    if not isinstance(section, dict) or section.get("format") != FORMAT:
        raise PackedFormatError(f"{folder} is not a packed checkpoint: its config.json has no '{SECTION}' section")
    version = section.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise PackedFormatError(
            f"{folder} was packed in format version {version!r}; this secateurs reads version {VERSION}: "
            "upgrade secateurs"
        )
    tensors = section.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise PackedFormatError(f"{folder}/config.json describes no tensors: the packed folder is damaged")
    return config, section


def _torch_dtype(name: Any) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise PackedFormatError(f"dtype {name!r} in the description is not a torch dtype: the packed folder is damaged")
    return dtype


def _damaged(file: Path, name: str, problem: str) -> PackedFormatError:
    return PackedFormatError(
        f"{file}: tensor {name}: {problem}: the file does not match its description in config.json (damaged or "
        "altered): pack the model again"
    )


def decode_tensors(folder: Path, section: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(state-dict name, tensor)`` for every described tensor, checking each against its description."""
    from safetensors import SafetensorError, safe_open

    file = _weights_file(folder, section)
    if not file.is_file():
        raise PackedFormatError(f"{file} is missing: copy the whole packed folder, or pack the model again")
    try:
        with safe_open(str(file), "pt") as weights:
            stored = set(weights.keys())
            expected = set()
            for name, entry in section["tensors"].items():
                expected |= _stored_names(name, entry)
            if stored - expected:
                extra = sorted(stored - expected)[0]
                raise _damaged(file, extra, "it is stored but not described")
            for name, entry in section["tensors"].items():
                missing = sorted(_stored_names(name, entry) - stored)
                if missing:
                    raise _damaged(file, missing[0], "it is described but missing from the file")
                try:
                    yield name, _decode(weights, name, entry)
                except _Mismatch as problem:
                    raise _damaged(file, name, str(problem)) from None
    except SafetensorError as error:
        raise PackedFormatError(
            f"{file} cannot be read ({error}): it is truncated or damaged; pack the model again"
        ) from None


def _weights_file(folder: Path, section: dict[str, Any]) -> Path:
    name = str(section.get("weights", WEIGHTS_NAME))
    if Path(name).name != name:  # the weights live in the folder itself, nowhere else
        raise PackedFormatError(f"{folder}/config.json names weights {name!r} outside the folder: pack the model again")
    return folder / name


def _stored_names(name: str, entry: Any) -> set[str]:
    encoding = entry.get("encoding") if isinstance(entry, dict) else None
    if encoding == "dense":
        return {name}
    if encoding == "bitmask":
        return {name + BITMASK, name + VALUES}
    if encoding == "nm":
        return {name + VALUES, name + INDICES}
    raise PackedFormatError(
        f"tensor {name} has encoding {encoding!r} in config.json; this secateurs reads {', '.join(ENCODINGS)}: "
        "upgrade secateurs, or pack the model again"
    )


def _decode(weights: Any, name: str, entry: dict[str, Any]) -> torch.Tensor:
    shape, dtype = entry.get("shape"), _torch_dtype(entry.get("dtype"))
    if not (isinstance(shape, list) and all(isinstance(size, int) and size >= 0 for size in shape)):
        raise _Mismatch(f"its shape {shape!r} in the description is not a list of sizes")
    encoding = entry["encoding"]
    if encoding == "dense":
        tensor = weights.get_tensor(name)
        if list(tensor.shape) != shape or tensor.dtype != dtype:
            raise _Mismatch(f"it is {_tensor_text(tensor)} where {_dtype_name(dtype)} {shape} is described")
        return tensor
    transposed = bool(entry.get("transposed", False))
    if len(shape) < 2 or (transposed and len(shape) != 2):
        raise _Mismatch(f"a packed weight must be a matrix, its described shape is {shape}")
    rows, columns = _matrix_shape(shape, transposed)
    values = weights.get_tensor(name + VALUES)
    if values.dtype != dtype:
        raise _Mismatch(f"its values are {_tensor_text(values)} where dtype {_dtype_name(dtype)} is described")
    if encoding == "bitmask":
        matrix = decode_bitmask(weights.get_tensor(name + BITMASK), values, rows, columns)
        if values.numel() != entry.get("kept"):
            raise _Mismatch(
                f"{values.numel()} values are stored where {entry.get('kept')!r} kept weights are described"
            )
    else:
        try:
            pattern = parse_pattern(str(entry.get("pattern")))
        except RecipeError as error:
            raise _Mismatch(f"its pattern is not N:M ({error})") from None
        if pattern is None or entry.get("index_bits") != index_bits(pattern.m):
            raise _Mismatch(f"its pattern {entry.get('pattern')!r} / index_bits {entry.get('index_bits')!r} disagree")
        matrix = decode_nm(values, weights.get_tensor(name + INDICES), rows, columns, pattern)
    return _from_matrix(matrix, shape, transposed)


def _build_model(config: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    """An empty model of the config's class (no random initialisation: every tensor is loaded after)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers before 5
        from transformers.modeling_utils import no_init_weights

    model_type = config.pop("model_type", None)
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot build a {model_type!r} model from config.json: {error}") from None
    model.tie_weights()  # no_init_weights also skips the tying that post_init does
    return model.eval()


def _fill_model(model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> None:
    """Put each tensor in the model (as stored, or cast to ``dtype``); every tensor of the model must come."""
    state = model.state_dict(keep_vars=True)
    filled: set[int] = set()
    where = f"the packed weights of this {type(model).__name__}"
    for name, tensor in tensors:
        if name not in state:
            raise PackedFormatError(f"{where} hold {name}, which the model built from config.json lacks: pack again")
        target = state[name]
        if target.shape != tensor.shape:
            raise PackedFormatError(
                f"{where}: {name} is {list(tensor.shape)} but the model built from config.json needs "
                f"{list(target.shape)}: config.json and the weights do not belong together; pack again"
            )
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if id(target) in filled:  # tied to a tensor already loaded: both copies must agree
            if not torch.equal(target.data, tensor):
                raise PackedFormatError(f"{where}: {name} differs from the weight the config ties it to: pack again")
            continue
        target.data = tensor
        filled.add(id(target))
    missing = [name for name, tensor in state.items() if id(tensor) not in filled]
    if missing:
        raise PackedFormatError(
            f"{where} lack {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}: the description is "
            "incomplete; pack the model again"
        )


def load_packed(folder: Path, dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from the packed ``folder``: an ordinary transformers model with bit-identical
    weights, on the CPU, in the stored dtype unless ``dtype`` is given; tokenizer None when the folder has none."""
    config, section = read_description(folder)
    model = _build_model(config, dtype or _torch_dtype(section.get("dtype", "float32")))
    _fill_model(model, decode_tensors(folder, section), dtype)
    return model, _load_side_files(model, folder)


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype a packed folder's model is built in."""
    return _torch_dtype(read_description(folder)[1].get("dtype", "float32"))


def _load_side_files(model: nn.Module, folder: Path) -> Any:
    from transformers import AutoTokenizer, GenerationConfig

    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"the tokenizer in {folder} cannot be read: {str(error).splitlines()[0]}") from error


def unpack(
    source: str | Path, out: str | Path, *, dtype: str | torch.dtype | None = None, overwrite: bool = False
) -> Path:
    """Write the packed folder ``source`` as an ordinary HF folder ``out`` (``from_pretrained`` loads it)."""
    folder = Path(source).expanduser()
    out_path = check_output_folder(out, overwrite, source=folder)
    if not is_packed(folder):
        raise PackedFormatError(f"{folder} is not a packed checkpoint (no '{SECTION}' section in its config.json)")
    model, tokenizer = load_packed(folder, resolve_dtype(dtype) if dtype is not None else None)
    return save_checkpoint(model, tokenizer, out_path, source_report(folder), overwrite)


def packed_sizes(folder: str | Path) -> dict[str, int]:
    """Bytes of a packed folder's weights: ``file`` (on disk), ``packed`` (the compressed weights' tensors),
    ``packed_dense`` (the same weights stored dense), ``dense`` (the tensors stored as is)."""
    path = Path(folder)
    _, section = read_description(path)
    file = _weights_file(path, section)
    sizes = {"file": file.stat().st_size, "packed": 0, "packed_dense": 0, "dense": 0}
    from safetensors import safe_open

    with safe_open(str(file), "pt") as weights:
        for name, entry in section["tensors"].items():
            itemsize = _torch_dtype(entry["dtype"]).itemsize
            numel = 1
            for size in entry["shape"]:
                numel *= size
            if entry["encoding"] == "dense":
                sizes["dense"] += numel * itemsize
                continue
            sizes["packed_dense"] += numel * itemsize
            for part in _stored_names(name, entry):
                tensor = weights.get_slice(part)
                count = 1
                for size in tensor.get_shape():
                    count *= size
                sizes["packed"] += count * (itemsize if part.endswith(VALUES) else 1)
    return sizes
