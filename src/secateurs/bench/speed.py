"""Protocol S (docs/benchmarks.md): inference speed and memory, each model as a ratio to the first (dense)
model measured in the same process run, plus a per-Linear-shape microbenchmark of dense vs 2:4 matmuls.

Per model: prefill (batch 8 x 512 tokens, one forward without a KV cache, logits of the last position only, as
generation does) and decode (batch 1: a 128-token prompt, then 128 greedy steps of one token each with the KV
cache; only the steps are timed) in tokens per second, the median of 5 runs after a warm-up, timed in rounds
over all the models so that the host's drift does not favour one (see ``run_speed``); peak memory while
loading and running (CPU: the growth of the process's peak resident memory, reset per model through
/proc/self/clear_refs; CUDA: ``max_memory_allocated``); the memory the loaded model holds (``resident_mib``, the
same measures right after loading) and the bytes of its tensors; and the size of its weight files. On CUDA a
2:4 model in float16/bfloat16 is measured twice: dense kernels, then ``semi_structured`` sparse kernels.

Microbenchmark: ``F.linear`` with ``tokens`` rows on every Linear shape of the first model and on Llama-7B-like
4096 x 11008 shapes: the dense weight, the same weight made 2:4 run by the dense kernel, and on CUDA the 2:4
weight as a ``torch.sparse`` semi-structured tensor (sparse tensor cores). On the CPU there is no sparse kernel:
the 2:4 column is the dense kernel on a 2:4 weight, labelled so.
"""

from __future__ import annotations

import gc
import inspect
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SecateursError
from ..io.atomic import write_file_atomic, write_json_atomic, write_text_atomic
from ..models import family, find_blocks, find_targets, resolve_device, resolve_dtype
from ..patterns import NMPattern, is_nm_sparse
from ..report import machine, peak_rss_mib, versions
from ..report.plots import new_figure, plots_available
from .settings import SpeedSettings

PROTOCOL = "S"
TWO_FOUR = NMPattern(2, 4)


# ------------------------------------------------------------------------------------------- memory


def _status_mib(field_name: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident size to its current size (Linux: clear_refs 5), so that each model's
    peak is its own in one process."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class _Memory:
    """Peak memory of what runs between ``start`` and ``peak_mib``: CUDA allocations, or resident growth."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset = True
        self.before = 0.0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.reset = _reset_peak_rss()
            self.before = _status_mib("VmRSS") or 0.0

    def current_mib(self) -> float:
        """Memory held now beyond what was held at ``start`` (CUDA allocations, or resident size)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20 - self.before
        return (_status_mib("VmRSS") or 0.0) - self.before

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.before
        peak = _status_mib("VmHWM") if self.reset else None
        return (peak if peak is not None else peak_rss_mib()) - self.before


# ------------------------------------------------------------------------------------------- timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def forward_last(model: nn.Module, ids: torch.Tensor, **kwargs: Any) -> Any:
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1  # the last position's logits only, as generation computes them
    return model(input_ids=ids, **kwargs)


def decode_seconds(model: nn.Module, prompt: torch.Tensor, new_tokens: int, device: torch.device) -> float:
    """Greedy decode of ``new_tokens`` after ``prompt``, one token per step with the KV cache; only the steps
    are timed (the prompt's forward is the prefill's business)."""
    name = family.cache_argument(model)
    output = forward_last(model, prompt, use_cache=True)
    cache = output.get("cache", None) or output.get("past_key_values", None)
    token = output.logits[:, -1:].argmax(-1)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        output = forward_last(model, token, use_cache=True, **{name: cache})
        cache = output.get("cache", None) or output.get("past_key_values", None)
        token = output.logits[:, -1:].argmax(-1)
    _synchronize(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------- models


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers as held in memory (a semi-structured sparse weight counts
    its compressed values and metadata)."""
    total, seen = 0, set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        flatten = getattr(tensor, "__tensor_flatten__", None)  # a tensor subclass holding inner tensors
        if flatten is not None:
            names, _ = flatten()
            total += sum(getattr(tensor, name).nbytes for name in names if getattr(tensor, name) is not None)
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def file_bytes(source: str | Path) -> int:
    """Bytes of a model's weight files: a folder's ``*.safetensors`` (or the file itself, e.g. a .gguf)."""
    path = Path(source)
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.glob("*.safetensors"))


def describe_sparsity(model: nn.Module) -> dict[str, Any]:
    """Achieved sparsity of the decoder blocks' weights and the N:M pattern they all satisfy, if any."""
    prefix, blocks = find_blocks(model)
    weights = [t.weight() for i, block in enumerate(blocks) for t in find_targets(block, f"{prefix}.{i}")]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    pattern = "dense" if zeros / max(total, 1) < 0.01 else "unstructured"
    for candidate in (TWO_FOUR, NMPattern(4, 8)):
        if pattern != "dense" and all(is_nm_sparse(w, candidate) for w in weights):
            pattern = str(candidate)
            break
    return {"sparsity": round(zeros / max(total, 1), 4), "pattern": pattern}


def linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """The distinct ``[out, in]`` shapes of the decoder blocks' weights, in order of appearance."""
    prefix, blocks = find_blocks(model)
    shapes: list[tuple[int, int]] = []
    for index, block in enumerate(blocks):
        for target in find_targets(block, f"{prefix}.{index}"):
            shape = tuple(target.weight().shape)
            if shape not in shapes:
                shapes.append(shape)  # type: ignore[arg-type]
    return shapes


@dataclass
class _Measured:
    """One model (one kernel choice) under measurement: its row, and while it is held, the model and inputs."""

    row: dict[str, Any]
    model: nn.Module | None = None
    inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # prefill ids, decode prompt


def _time_once(entry: _Measured, device: torch.device, settings: SpeedSettings) -> None:
    """One timed prefill and one timed decode of ``entry``'s model, appended to its row."""
    assert entry.model is not None and entry.inputs is not None
    prefill_ids, prompt = entry.inputs
    with torch.inference_mode():
        entry.row["prefill_seconds"] += median_seconds(
            lambda: forward_last(entry.model, prefill_ids, use_cache=False), device, repeats=1, warmup=0
        )
        entry.row["decode_seconds"].append(decode_seconds(entry.model, prompt, settings.new_tokens, device))


def _load_measured(
    source: str | Path,
    device: torch.device,
    dtype: torch.dtype | None,
    settings: SpeedSettings,
    semi_structured: bool = False,
) -> _Measured:
    """Load one model, run its warm-ups and its first timed round; the row holds every figure but the speeds.
    Peak memory covers the loading, the warm-ups and that first round."""
    from ..io import is_packed, load

    memory = _Memory(device)
    memory.start()
    start = time.perf_counter()
    model, _ = load(source, semi_structured=semi_structured, dtype=dtype)
    if not semi_structured:  # semi-structured loading already put the model on the GPU
        model.to(device)
    load_seconds = time.perf_counter() - start
    resident = memory.current_mib()
    generator = torch.Generator().manual_seed(settings.seed)
    vocab = model.get_input_embeddings().num_embeddings
    prefill_ids = torch.randint(0, vocab, (settings.prefill_batch, settings.prefill_seqlen), generator=generator)
    prompt = torch.randint(0, vocab, (1, settings.prompt_tokens), generator=generator)
    prefill_ids, prompt = prefill_ids.to(device), prompt.to(device)
    path = Path(source)
    entry = _Measured(
        row={
            "model": path.name or str(source),
            "source": str(source),
            "format": "packed" if path.is_dir() and is_packed(path) else "hf",
            "kernels": "2:4 sparse" if semi_structured else "dense",
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "prefill_seconds": [],
            "decode_seconds": [],
        },
        model=model,
        inputs=(prefill_ids, prompt),
    )
    with torch.inference_mode():
        for _ in range(settings.warmup):
            forward_last(model, prefill_ids, use_cache=False)
            decode_seconds(model, prompt, settings.new_tokens, device)
    if settings.repeats:
        _time_once(entry, device, settings)
    entry.row.update(
        {
            "resident_mib": round(resident, 1),
            "peak_memory_mib": round(memory.peak_mib(), 1),
            "peak_memory_kind": "cuda max_memory_allocated"
            if device.type == "cuda"
            else ("peak RSS growth" if memory.reset else "process peak RSS growth (peak could not be reset)"),
            "model_bytes": tensor_bytes(model),
            "file_bytes": file_bytes(source),
            "load_seconds": round(load_seconds, 3),
        }
    )
    return entry


def _speeds(row: dict[str, Any], settings: SpeedSettings) -> None:
    """Tokens per second from the median of the timed runs."""
    row["prefill_tokens_per_s"] = (
        settings.prefill_batch * settings.prefill_seqlen / statistics.median(row["prefill_seconds"])
    )
    row["decode_tokens_per_s"] = settings.new_tokens / statistics.median(row["decode_seconds"])


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Every figure as a ratio to the first row's (the dense model, measured in this run)."""
    reference = next((row for row in rows if "error" not in row), None)
    if reference is None:
        return
    for row in rows:
        if "error" in row:
            continue
        row["ratio_to_first"] = {
            key: round(row[key] / reference[key], 4) if reference[key] else None
            for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mib", "model_bytes", "file_bytes")
        }


# ------------------------------------------------------------------------------------ microbenchmark


def micro_benchmark(
    shapes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype, settings: SpeedSettings
) -> list[dict[str, Any]]:
    """Milliseconds of ``F.linear`` at ``settings.micro_tokens`` rows per ``[out, in]`` shape: dense weight,
    2:4 weight on the dense kernel, and (CUDA) 2:4 weight on the sparse kernel. With ``settings.warmup``, the first
    shape runs once more, untimed, before any is measured."""
    generator = torch.Generator().manual_seed(settings.seed)
    rows = []
    if settings.warmup and shapes:  # the first matmul of a run pays for thread-pool and kernel set-up
        x = torch.randn(settings.micro_tokens, shapes[0][1], generator=generator).to(device, dtype)
        _linear_ms(x, torch.randn(shapes[0], generator=generator).to(device, dtype), device, settings)
    for out_features, in_features in shapes:
        x = torch.randn(settings.micro_tokens, in_features, generator=generator).to(device, dtype)
        weight = torch.randn(out_features, in_features, generator=generator).to(device, dtype)
        row: dict[str, Any] = {"shape": [out_features, in_features], "tokens": settings.micro_tokens}
        row["dtype"] = str(dtype).removeprefix("torch.")
        with torch.inference_mode():
            row["dense_ms"] = _linear_ms(x, weight, device, settings)
            if in_features % 4:
                row["note"] = "inputs not a multiple of 4: no 2:4 weight"
                rows.append(row)
                continue
            two_four = weight * random_two_four_mask(weight.shape, generator).to(device, weight.dtype)
            row["two_four_dense_kernel_ms"] = _linear_ms(x, two_four, device, settings)
            row["sparse_kernel_ms"] = None
            if device.type == "cuda":
                row.update(_sparse_kernel(x, two_four, device, settings))
            else:
                row["note"] = "CPU: no 2:4 sparse kernel; the 2:4 weight runs on the dense kernel"
        row["two_four_dense_kernel_speedup"] = row["dense_ms"] / row["two_four_dense_kernel_ms"]
        if row.get("sparse_kernel_ms"):
            row["sparse_kernel_speedup"] = row["dense_ms"] / row["sparse_kernel_ms"]
        rows.append(row)
    return rows


def random_two_four_mask(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A 2:4 keep-mask with the two kept positions of each group drawn at random (the kernels' speed does not
    depend on which two; a random pick costs a fraction of ranking the weights)."""
    pairs = torch.tensor([[i in pair for i in range(4)] for pair in itertools.combinations(range(4), 2)])
    choice = torch.randint(0, len(pairs), (shape[0] * shape[1] // 4,), generator=generator)
    return pairs[choice].reshape(shape)


def _linear_ms(x: torch.Tensor, weight: torch.Tensor, device: torch.device, settings: SpeedSettings) -> float:
    times = median_seconds(lambda: F.linear(x, weight), device, settings.repeats, settings.warmup)
    return statistics.median(times) * 1e3


def _sparse_kernel(
    x: torch.Tensor, two_four: torch.Tensor, device: torch.device, settings: SpeedSettings
) -> dict[str, Any]:
    from torch.sparse import to_sparse_semi_structured

    from ..io.semi_structured import check_semi_structured, semi_structured_fits

    try:
        check_semi_structured(two_four.dtype)
        if not semi_structured_fits(*two_four.shape):
            return {"note": "shape not a multiple of 32 x 64: no sparse kernel"}
        sparse = to_sparse_semi_structured(two_four)
        return {"sparse_kernel_ms": _linear_ms(x, sparse, device, settings), "sparse_backend": type(sparse).__name__}
    except (SecateursError, RuntimeError, NotImplementedError) as error:
        return {"note": f"sparse kernel unavailable: {str(error).splitlines()[0]}"}


# ------------------------------------------------------------------------------------------ the run


def run_speed(
    models: list[str | Path],
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    settings: SpeedSettings | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Protocol S for ``models`` (the first is the dense reference), in this process; writes ``speed.json``,
    ``speed.md`` and ``speed.png`` to ``out`` when given. Returns the JSON document. With ``settings.warmup``
    the first model also runs once, untimed, before any is measured (the process's own warm-up).

    With ``settings.interleave`` (the default) every model stays loaded and the timed runs go in rounds, one run
    of each model per round, so that a machine that slows down or speeds up during the run (shared hosts do, by
    10-20% over minutes) moves every model's median alike instead of favouring the models measured at its fast
    moments. Without it, each model is loaded, timed ``repeats`` times and freed before the next (less memory)."""
    settings = settings or SpeedSettings()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype) if dtype is not None else None
    entries: list[_Measured] = []
    shapes: list[tuple[int, int]] = []
    if settings.warmup and models:
        # The process's first model pays for lazy imports, kernel selection and allocator growth: run it once
        # untimed so that the first row is not penalised against the others.
        _load_measured(models[0], torch_device, torch_dtype, replace(settings, repeats=0, warmup=1))
    for source in models:
        entry = _load_measured(source, torch_device, torch_dtype, settings)
        assert entry.model is not None
        entry.row.update(describe_sparsity(entry.model))
        shapes = shapes or linear_shapes(entry.model)
        added = [entry]
        if torch_device.type == "cuda" and entry.row["pattern"] == "2:4":
            model_dtype = next(entry.model.parameters()).dtype
            added.append(_sparse_entry(source, torch_device, torch_dtype or model_dtype, settings, entry.row))
        entries += added
        if not settings.interleave:
            _time_rounds(added, torch_device, settings)
    if settings.interleave:
        _time_rounds(entries, torch_device, settings)
    rows = [entry.row for entry in entries]
    for row in rows:
        if "error" not in row:
            _speeds(row, settings)
    _add_ratios(rows)
    result: dict[str, Any] = {
        "protocol": PROTOCOL,
        "device": str(torch_device),
        "settings": asdict(settings),
        "models": rows,
        "machine": machine(),
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    if settings.micro:
        micro_dtype = torch.float16 if torch_device.type == "cuda" else (torch_dtype or torch.float32)
        micro_shapes = shapes + [s for s in settings.micro_shapes if s not in shapes]
        result["microbenchmark"] = micro_benchmark(micro_shapes, torch_device, micro_dtype, settings)
    if out is not None:
        write_outputs(result, Path(out))
    return result


def _time_rounds(entries: list[_Measured], device: torch.device, settings: SpeedSettings) -> None:
    """The timed rounds after each model's first (run when it was loaded), one run of every held model per
    round; then the models are let go."""
    for _ in range(1, settings.repeats):
        for entry in entries:
            if entry.model is not None:
                _time_once(entry, device, settings)
    for entry in entries:
        entry.model = entry.inputs = None


def _sparse_entry(
    source: str | Path, device: torch.device, dtype: torch.dtype, settings: SpeedSettings, dense_row: dict
) -> _Measured:
    """The same 2:4 model on sparse kernels; a row with an ``error`` (and no model) when they cannot run here."""
    try:
        entry = _load_measured(source, device, dtype, settings, semi_structured=True)
        entry.row.update(sparsity=dense_row["sparsity"], pattern=dense_row["pattern"])
        return entry
    except (SecateursError, RuntimeError, NotImplementedError) as error:
        row = {"model": dense_row["model"], "kernels": "2:4 sparse", "error": str(error).splitlines()[0]}
        return _Measured(row=row)


# ------------------------------------------------------------------------------------------ outputs


def markdown(result: dict[str, Any]) -> str:
    """The models' table and the microbenchmark's, in Markdown."""
    machine_info = result["machine"]
    where = machine_info.get("cuda_device") if result["device"].startswith("cuda") else machine_info.get("cpu")
    settings = result["settings"]
    lines = [
        f"Protocol **{result['protocol']}** on {result['device']} ({where}; {result['threads']} threads; torch "
        f"{result['versions'].get('torch')}). Prefill: batch {settings['prefill_batch']} x "
        f"{settings['prefill_seqlen']}; decode: batch 1, {settings['new_tokens']} new tokens after a "
        f"{settings['prompt_tokens']}-token prompt; median of {settings['repeats']} after {settings['warmup']} "
        f"warm-up{_rounds(settings)}. Ratios are to the first row, measured in the same run.",
        "",
        "| model | format | pattern | sparsity | kernels | dtype | prefill tok/s | decode tok/s | peak MiB | "
        "tensors MiB | file MiB | prefill / first | decode / first | peak / first | file / first |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["models"]:
        if "error" in row:
            lines.append(f"| {row['model']} | | | | {row['kernels']} | | not run: {row['error']} | | | | | | | | |")
            continue
        ratio = row["ratio_to_first"]
        lines.append(
            f"| {row['model']} | {row['format']} | {row['pattern']} | {row['sparsity']:.2f} | {row['kernels']} | "
            f"{row['dtype']} | {row['prefill_tokens_per_s']:.1f} | {row['decode_tokens_per_s']:.1f} | "
            f"{row['peak_memory_mib']:.0f} | {row['model_bytes'] / 2**20:.1f} | {row['file_bytes'] / 2**20:.1f} | "
            f"{_ratio(ratio['prefill_tokens_per_s'])} | {_ratio(ratio['decode_tokens_per_s'])} | "
            f"{_ratio(ratio['peak_memory_mib'])} | {_ratio(ratio['file_bytes'])} |"
        )
    micro = result.get("microbenchmark")
    if micro:
        lines += [
            "",
            f"Linear microbenchmark: `F.linear` on {micro[0]['tokens']} tokens, {micro[0]['dtype']}, median of "
            f"{settings['repeats']}; speedups are dense ms / 2:4 ms.",
            "",
            "| weight [out, in] | dense ms | 2:4 on dense kernel ms | 2:4 sparse kernel ms | "
            "speedup (dense kernel) | speedup (sparse kernel) | note |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in micro:
            sparse = row.get("sparse_kernel_ms")
            lines.append(
                f"| {row['shape'][0]} x {row['shape'][1]} | {row['dense_ms']:.3f} | "
                f"{_number(row.get('two_four_dense_kernel_ms'))} | {_number(sparse)} | "
                f"{_ratio(row.get('two_four_dense_kernel_speedup'))} | {_ratio(row.get('sparse_kernel_speedup'))} | "
                f"{row.get('note', '')} |"
            )
    return "\n".join(lines) + "\n"


def _rounds(settings: dict[str, Any]) -> str:
    return ", timed in rounds over the models" if settings.get("interleave") else ""


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot(result: dict[str, Any], path: Path) -> None:
    """A PNG bar chart: each model's ratios to the first, and the microbenchmark's speedups."""
    rows = [row for row in result["models"] if "ratio_to_first" in row]
    micro = result.get("microbenchmark") or []
    figure = new_figure(13 if micro else 7, 4.5)
    axes = figure.subplots(1, 2 if micro else 1, squeeze=False)
    keys = [
        ("prefill_tokens_per_s", "prefill tok/s"),
        ("decode_tokens_per_s", "decode tok/s"),
        ("peak_memory_mib", "peak memory"),
        ("file_bytes", "file size"),
    ]
    width = 0.8 / max(len(rows), 1)
    for index, row in enumerate(rows):
        values = [row["ratio_to_first"][key] or 0 for key, _ in keys]
        positions = [k + index * width for k in range(len(keys))]
        axes[0][0].bar(positions, values, width, label=f"{row['model']}, {row['kernels']} kernels")
    axes[0][0].set_xticks([k + width * (len(rows) - 1) / 2 for k in range(len(keys))], [label for _, label in keys])
    axes[0][0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0][0].set_ylabel("ratio to the first model")
    axes[0][0].set_title(f"Protocol S on {result['device']}")
    axes[0][0].legend(fontsize=7)
    if micro:
        labels = [f"{r['shape'][0]}x{r['shape'][1]}" for r in micro]
        dense_kernel = [r.get("two_four_dense_kernel_speedup") or 0 for r in micro]
        sparse_kernel = [r.get("sparse_kernel_speedup") or 0 for r in micro]
        positions = list(range(len(micro)))
        if any(sparse_kernel):
            axes[0][1].bar([p - 0.2 for p in positions], dense_kernel, 0.4, label="2:4, dense kernel")
            axes[0][1].bar([p + 0.2 for p in positions], sparse_kernel, 0.4, label="2:4, sparse kernel")
        else:  # no sparse kernel on this device
            axes[0][1].bar(positions, dense_kernel, 0.6, label="2:4 weight, dense kernel (no sparse kernel here)")
        axes[0][1].set_xticks(positions, labels, rotation=30, fontsize=7)
        axes[0][1].axhline(1.0, color="grey", linewidth=0.8)
        axes[0][1].set_ylabel("speedup over dense")
        axes[0][1].set_title(f"F.linear, {micro[0]['tokens']} tokens, {micro[0]['dtype']}")
        axes[0][1].legend(fontsize=7)
    figure.savefig(path, dpi=110)


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    """``speed.json``, ``speed.md`` and ``speed.png`` (with matplotlib) in ``out``, each written whole."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json_atomic(out / "speed.json", result)}
    paths["markdown"] = write_text_atomic(out / "speed.md", markdown(result))
    if plots_available():
        paths["png"] = write_file_atomic(out / "speed.png", lambda temporary: plot(result, temporary))
    return paths
