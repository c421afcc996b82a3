"""Protocol GPU: 2:4 sparse tensor cores against dense kernels on one CUDA GPU (an H100 80 GB), in at most 8 minutes.

    bench/gpu.sh                           # writes bench/results/gpu.json and gpu.md (needs CUDA, capability 8.0+)
    bench/gpu.sh --dry-run                 # the same code on the CPU, tiny shapes: bench/results/gpu_dry_run.json
    bench/gpu.sh --out /tmp/gpu.json --parts linear,model --nsamples 64

(a) ``linear``: ``F.linear(x, W)`` for W [out, in] of 4096 x 11008 and 11008 x 4096, float16 and bfloat16, x of
1 to 4096 rows: the dense weight (cuBLAS), the same weight pruned 2:4 by magnitude as a ``torch.sparse``
semi-structured tensor (cuSPARSELt, else CUTLASS; the backend is recorded), and a 50% unstructured weight, which
has no sparse kernel and runs dense. Variants interleave within each round; median, min and max of the rounds.
(b) ``model``: a random Llama-2-7B-shaped ``LlamaForCausalLM`` in float16 on the GPU: prefill (batch 1, 512 and
2048 tokens) and greedy decode (batch 1, 128 new tokens after a 128-token prompt, KV cache), dense, then pruned
2:4 by ``secateurs.prune`` (magnitude) and converted by ``secateurs.io.semi_structured.to_semi_structured``.
(c) ``prune``: wall seconds and peak GPU memory of ``secateurs.prune`` at 50% (Wanda, SparseGPT) on that model
(re-randomised with the same seed for each), with ``--nsamples`` x 2048 random calibration token ids.

Self-checks (in the JSON's ``checks``; any failure exits 1): each (a) 2:4 product against the dense product of the
same pruned weight, and (b) the 2:4 model's logits against the dense-stored pruned model's on one prompt.

Expected H100 budget (about 6 of the 8 minutes): start-up and imports 15 s; (a) 20 s; (b) 90 s (model build
5 s, prefill 5 s, decode 3 x 128 tokens per variant 40 s, magnitude 2:4 + conversion 10 s); (c) 4 min (Wanda
40 s, SparseGPT 3 min with 128 samples; each includes a 10 s build and move to the CPU). If SparseGPT threatens
the budget, rerun ``--parts prune --nsamples 64`` (recorded in ``settings``). The JSON is rewritten after each
part, so a run cut off by a time limit keeps the parts it finished (``complete`` false).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import platform
import secrets
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import git_state, utc_now, write_results  # noqa: E402

from secateurs.bench.speed import decode_seconds, forward_last  # noqa: E402

PROTOCOL = "GPU"
RESULTS = ROOT / "bench" / "results"
NEED_CUDA = (
    "bench/gpu.py needs a CUDA GPU of compute capability >= 8.0 (2:4 sparse tensor cores) and {found}: "
    "run it with --dry-run to exercise the same code on the CPU with tiny shapes"
)
STAND_IN = "dense stand-in (dry run, no CUDA)"
MAX_CALLS = 200  # calls per timed round of a matmul, whatever its size
LLAMA_2_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
TINY_LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
PARTS = ("linear", "model", "prune")


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= atol_fraction * max|expected| + rtol * |expected|`` everywhere (as
    ``torch.testing.assert_close``, with the absolute part scaled to the output's magnitude)."""

    rtol: float
    atol_fraction: float


# Both products read the same 16-bit operands and accumulate in float32 (cuBLAS; cuSPARSELt >= 0.5.2 and CUTLASS),
# then round once: they differ by the order of the float32 sums and an output rounding, one ulp at most (float16
# 2**-10, bfloat16 2**-7 = 0.0078 of the value). 1e-2 covers a bfloat16 ulp; the absolute part covers outputs that
# cancel to near zero, where a relative bound means nothing. A wrong kernel (metadata, a transpose) errs by O(1).
LINEAR_TOLERANCE = Tolerance(rtol=1e-2, atol_fraction=1e-2)
# 32 blocks of 7 matmuls each carry such one-ulp differences into the next block's input (float16 throughout):
# twice the per-product bound, still far below the O(1) errors of a broken kernel or a weight left unpruned.
MODEL_TOLERANCE = Tolerance(rtol=2e-2, atol_fraction=2e-2)


@dataclass(frozen=True)
class Protocol:
    """Sizes and repeats; ``GPU_PROTOCOL`` is the protocol, ``DRY_RUN`` its tiny CPU copy."""

    shapes: tuple[tuple[int, int], ...] = ((4096, 11008), (11008, 4096))  # W [out, in]
    tokens: tuple[int, ...] = (1, 16, 64, 256, 1024, 4096)
    dtypes: tuple[str, ...] = ("float16", "bfloat16")
    warmup: int = 2
    rounds: int = 5
    min_round_ms: float = 5.0  # a lone small matmul takes microseconds: each round repeats it for this long
    model: dict[str, int] = field(default_factory=lambda: dict(LLAMA_2_7B, vocab_size=32000))
    model_dtype: str = "float16"
    prefill_lengths: tuple[int, ...] = (512, 2048)
    prompt_tokens: int = 128
    new_tokens: int = 128
    decode_warmup_tokens: int = 16
    decode_rounds: int = 3
    nsamples: int = 128
    seqlen: int = 2048
    methods: tuple[str, ...] = ("wanda", "sparsegpt")
    sparsity: float = 0.5
    seed: int = 0


GPU_PROTOCOL = Protocol()
DRY_RUN = Protocol(
    shapes=((64, 128), (128, 64)),
    tokens=(1, 16),
    warmup=0,
    rounds=1,
    min_round_ms=0.0,
    model=dict(TINY_LLAMA, vocab_size=256),
    prefill_lengths=(16, 64),
    prompt_tokens=8,
    new_tokens=4,
    decode_warmup_tokens=0,
    decode_rounds=1,
    nsamples=4,
    seqlen=32,
)


# ------------------------------------------------------------------------------------------- timing


class Clock:
    """Milliseconds of device work: CUDA events around it on the GPU (read after the end event completes), wall
    time on the CPU. Both wait for earlier work first, so none of it is counted."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def ms(self, work: Callable[[], object], calls: int = 1) -> float:
        """Mean milliseconds of one of ``calls`` back-to-back calls of ``work``."""
        if not self.cuda:
            start = time.perf_counter()
            for _ in range(calls):
                work()
            return (time.perf_counter() - start) * 1e3 / calls
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(calls):
            work()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / calls


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "median_ms": statistics.median(values),
        "min_ms": min(values),
        "max_ms": max(values),
        "rounds_ms": [round(value, 5) for value in values],
    }


def calls_per_round(work: Callable[[], object], protocol: Protocol, clock: Clock) -> int:
    """Calls per timed round, so that a round lasts ``min_round_ms`` (from the fastest warm-up call)."""
    if protocol.warmup == 0 or protocol.min_round_ms <= 0:
        return 1
    single = min(clock.ms(work) for _ in range(protocol.warmup))
    return max(1, min(MAX_CALLS, math.ceil(protocol.min_round_ms / max(single, 1e-3))))


def time_interleaved(work: dict[str, Callable[[], object]], protocol: Protocol, clock: Clock) -> dict[str, dict]:
    """Each variant's milliseconds per call over ``protocol.rounds`` rounds, every variant once per round in a
    rotating order: a GPU's clocks drift over seconds, and the drift then moves every variant alike, none always
    timed right after the same neighbour."""
    names = list(work)
    calls = {name: calls_per_round(work[name], protocol, clock) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for number in range(protocol.rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(clock.ms(work[name], calls[name]))
    return {name: summary(samples[name]) | {"calls_per_round": calls[name]} for name in names}


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: torch.device) -> float | None:
    """Peak CUDA allocation since the last ``reset_peak`` (None on the CPU: no allocator peak to read)."""
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------- checks


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor, tolerance: Tolerance) -> dict[str, Any]:
    """One self-check's record: the largest error, the bound it had to meet, and whether every element did."""
    actual, expected = actual.float(), expected.float()
    error = (actual - expected).abs()
    scale = float(expected.abs().max())
    allowed = tolerance.atol_fraction * scale + tolerance.rtol * expected.abs()
    passed = bool(torch.isfinite(actual).all()) and bool((error <= allowed).all())
    worst = float(error.max()) if bool(torch.isfinite(error).all()) else None
    return {
        "check": name,
        "max_abs_error": worst,
        "max_abs_error_over_scale": None if worst is None or scale == 0 else worst / scale,
        "scale_max_abs_expected": scale,
        "rtol": tolerance.rtol,
        "atol": tolerance.atol_fraction * scale,
        "passed": passed,
    }


# ------------------------------------------------------------------------------------------- 2:4 backend


@dataclass
class Backend:
    """What the 2:4 variant runs on: a semi-structured backend (``sparse``), or the dense stand-in of a dry run.
    ``explicit_padding``: this torch refuses inputs with fewer rows than the kernel's minimum, so the bench pads x
    and slices the product (torch 2.4+ pads inside its semi-structured op, and this stays False)."""

    kernel: str
    sparse: bool
    notes: list[str] = field(default_factory=list)
    explicit_padding: bool = False
    failed: bool = False  # on CUDA, neither backend ran: the 2:4 rows are a dense stand-in and a check fails

    def convert(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.sparse:
            return weight
        from torch.sparse import to_sparse_semi_structured

        return to_sparse_semi_structured(weight.contiguous())

    def min_rows(self, dtype: torch.dtype) -> int | None:
        """The kernel's minimum multiple of rows for the dense operand x (None: no sparse kernel)."""
        if not self.sparse:
            return None
        sparse = torch.sparse
        cls = sparse.SparseSemiStructuredTensorCUTLASS if "CUTLASS" in self.kernel else None
        cls = cls or sparse.SparseSemiStructuredTensorCUSPARSELT
        constraints = getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {}).get(dtype)
        return constraints.dense_min_rows if constraints is not None else 8

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        multiple = self.min_rows(x.dtype) if self.explicit_padding else None
        if not multiple or rows % multiple == 0:
            return F.linear(x, weight)
        return F.linear(F.pad(x, (0, 0, 0, -rows % multiple)), weight)[:rows]

    def record(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "notes": self.notes, "explicit_padding": self.explicit_padding}

    def check(self) -> dict[str, Any]:
        """The probe's self-check record: passed unless no semi-structured backend ran on this GPU."""
        name = "2:4 backend probe: a 128 x 128 semi-structured product equals the dense one"
        return {"check": name, "max_abs_error": None, "atol": None, "passed": not self.failed, "notes": self.notes}


def choose_backend(device: torch.device) -> Backend:
    """cuSPARSELt when torch has it and it runs here (``_FORCE_CUTLASS`` False), else CUTLASS; the class flag
    also steers ``to_semi_structured`` in part (b), so the whole run uses one backend."""
    if device.type != "cuda":
        return Backend(STAND_IN, sparse=False, notes=["no CUDA: the 2:4 weight runs on the dense kernel"])
    warnings.filterwarnings("ignore", message=".*SparseSemiStructuredTensor.*prototype.*")
    semi = torch.sparse.SparseSemiStructuredTensor
    notes: list[str] = []
    if torch.backends.cusparselt.is_available():
        semi._FORCE_CUTLASS = False
        try:
            return probe(Backend(f"cuSPARSELt {torch.backends.cusparselt.version()}", True, notes))
        except (RuntimeError, NotImplementedError) as error:
            notes.append(f"cuSPARSELt failed here ({str(error).splitlines()[0]}): CUTLASS used")
    else:
        notes.append("this torch was built without cuSPARSELt: CUTLASS used")
    semi._FORCE_CUTLASS = True
    try:
        return probe(Backend("CUTLASS", True, notes))
    except (RuntimeError, NotImplementedError) as error:
        # the dense measurements are still worth the device time: go on, and fail the run's checks
        notes.append(f"CUTLASS failed here too ({str(error).splitlines()[0]})")
        return Backend("dense stand-in (no semi-structured backend ran here)", False, notes, failed=True)


def probe(backend: Backend) -> Backend:
    """One small 2:4 product, checked: raises if the backend cannot run here; learns whether torch pads a
    one-row input itself."""
    from secateurs.patterns import NMPattern, nm_mask

    generator = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(128, 128, device="cuda", generator=generator)
    weight = (weight * nm_mask(weight.abs(), NMPattern(2, 4))).half()
    x = torch.randn(1, 128, device="cuda", generator=generator).half()
    sparse = backend.convert(weight)
    try:
        product = F.linear(x, sparse)
    except RuntimeError:
        backend.explicit_padding = True
        backend.notes.append("torch refused a one-row input: the bench pads x to the kernel's row multiple")
        product = backend.linear(x, sparse)
    if not compare("probe", product, F.linear(x, weight), LINEAR_TOLERANCE)["passed"]:
        raise RuntimeError("a 128 x 128 2:4 product differs from the dense one")
    return backend


# ------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    protocol: Protocol
    device: torch.device
    clock: Clock
    backend: Backend
    stamp: dict[str, str]  # protocol and run id, copied into every row
    started: float = field(default_factory=time.perf_counter)
    checks: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Callable[[], None] = lambda: None  # rewrites the results files with the rows so far

    @property
    def dense_kernel(self) -> str:
        return "cuBLAS dense GEMM" if self.device.type == "cuda" else "dense (CPU)"

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {message}", file=sys.stderr, flush=True)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------- (a) Linear


def linear_weights(shape: tuple[int, int], dtype: torch.dtype, run: Run) -> dict[str, torch.Tensor]:
    """The dense weight, its 2:4 magnitude pruning (secateurs' N:M mask) and its 50% unstructured pruning.
    Scaled by in_features**-0.5 so that outputs are of order 1 in both dtypes."""
    from secateurs.patterns import NMPattern, nm_mask, unstructured_mask

    generator = torch.Generator(device=run.device).manual_seed(run.protocol.seed)
    dense = torch.randn(shape, generator=generator, device=run.device).mul_(shape[1] ** -0.5)
    score = dense.abs()
    two_four = dense * nm_mask(score, NMPattern(2, 4))
    unstructured = dense * unstructured_mask(score, 0.5, per_row=False)
    return {"dense": dense.to(dtype), "2:4": two_four.to(dtype), "unstructured": unstructured.to(dtype)}


def linear_work(
    x: torch.Tensor, weights: dict[str, torch.Tensor], semi: torch.Tensor, backend: Backend
) -> dict[str, Callable[[], object]]:
    return {
        "dense": lambda: F.linear(x, weights["dense"]),
        "2:4": lambda: backend.linear(x, semi),
        "unstructured 50%": lambda: F.linear(x, weights["unstructured"]),
    }


def variant_facts(variant: str, tokens: int, dtype: torch.dtype, run: Run) -> dict[str, Any]:
    """The kernel a variant ran on, and what a reader must know about it."""
    if variant == "dense":
        return {"kernel": run.dense_kernel, "note": ""}
    if variant == "unstructured 50%":
        note = "no unstructured sparse kernel exists: the zeros are multiplied like any weight (dense kernel)"
        return {"kernel": run.dense_kernel, "note": note}
    multiple = run.backend.min_rows(dtype)
    if multiple is None:
        return {"kernel": run.backend.kernel, "note": "the 2:4 weight on the dense kernel: " + run.backend.notes[-1]}
    padded = -(-tokens // multiple) * multiple
    where = "by the bench" if run.backend.explicit_padding else "inside torch's semi-structured op"
    note = f"x padded from {tokens} to {padded} rows ({where}), product sliced" if padded != tokens else ""
    return {"kernel": run.backend.kernel, "padded_rows": padded, "note": note}


def linear_case(shape: tuple[int, int], dtype_name: str, run: Run) -> list[dict[str, Any]]:
    """Every token count of one weight shape and dtype: a self-check, then the three variants timed."""
    dtype = getattr(torch, dtype_name)
    weights = linear_weights(shape, dtype, run)
    semi = run.backend.convert(weights["2:4"])
    zeros = {name: float((weight == 0).float().mean()) for name, weight in weights.items()}
    generator = torch.Generator(device=run.device).manual_seed(run.protocol.seed + 1)
    rows = []
    for tokens in run.protocol.tokens:
        x = torch.randn(tokens, shape[1], generator=generator, device=run.device).to(dtype)
        case = {"shape": list(shape), "dtype": dtype_name, "tokens": tokens}
        with torch.inference_mode():
            check = compare(
                f"linear {shape[0]}x{shape[1]} {dtype_name} tokens {tokens}: 2:4 vs dense product of the pruned weight",
                run.backend.linear(x, semi),
                F.linear(x, weights["2:4"]),
                LINEAR_TOLERANCE,
            )
            timed = time_interleaved(linear_work(x, weights, semi, run.backend), run.protocol, run.clock)
        run.checks.append(check | case)
        dense_ms = timed["dense"]["median_ms"]
        for variant, timing in timed.items():
            sparsity = zeros["unstructured" if variant.startswith("unstructured") else variant]
            rows.append(
                run.stamp
                | {"part": "linear", "variant": variant, **case, "sparsity": round(sparsity, 4)}
                | variant_facts(variant, tokens, dtype, run)
                | timing
                | {"speedup_vs_dense": dense_ms / timing["median_ms"], "check_passed": check["passed"]}
            )
    return rows


def linear_part(run: Run, rows: list[dict[str, Any]]) -> None:
    for shape in run.protocol.shapes:
        for dtype_name in run.protocol.dtypes:
            rows += linear_case(shape, dtype_name, run)
            free(run.device)
            run.log(f"(a) linear {shape[0]}x{shape[1]} {dtype_name} done")
    run.checkpoint()


# ------------------------------------------------------------------------------------------- (b) model


def build_model(run: Run) -> nn.Module:
    """A random ``LlamaForCausalLM`` of the protocol's shapes, built in its dtype straight on the device
    (``no_init_weights``: no float32 copy, no slow init on the CPU), then every matrix drawn from N(0, 0.02) by a
    seeded generator on that device, so each rebuild holds the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.initialization import no_init_weights

    sizes = run.protocol.model
    config = LlamaConfig(
        **sizes,
        num_key_value_heads=sizes["num_attention_heads"],
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    with no_init_weights(), torch.device(run.device):
        model = LlamaForCausalLM._from_config(config, dtype=getattr(torch, run.protocol.model_dtype))
    generator = torch.Generator(device=run.device).manual_seed(run.protocol.seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:  # Linear and embedding matrices; the norms keep their ones
                parameter.normal_(0.0, 0.02, generator=generator)
    return model.eval().requires_grad_(False)


@dataclass
class ModelInputs:
    prefill: dict[int, torch.Tensor]  # length -> ids [1, length]
    prompt: torch.Tensor  # [1, prompt_tokens], the decode prompt and the logits check's


def model_inputs(run: Run) -> ModelInputs:
    generator = torch.Generator().manual_seed(run.protocol.seed + 2)
    vocab = run.protocol.model["vocab_size"]

    def ids(length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (1, length), generator=generator).to(run.device)

    return ModelInputs(
        {length: ids(length) for length in run.protocol.prefill_lengths}, ids(run.protocol.prompt_tokens)
    )


def decode_ms(model: nn.Module, prompt: torch.Tensor, new_tokens: int, device: torch.device) -> float:
    """Milliseconds of ``new_tokens`` greedy steps with the KV cache (protocol S's decode, secateurs.bench.speed)."""
    with torch.inference_mode():
        return decode_seconds(model, prompt, new_tokens, device) * 1e3


def prefill_sampler(model: nn.Module, ids: torch.Tensor, clock: Clock) -> Callable[[], float]:
    """Milliseconds of one prefill forward without a KV cache, each time it is called."""

    def sample() -> float:
        with torch.inference_mode():
            return clock.ms(lambda: forward_last(model, ids, use_cache=False))

    return sample


def repeated(sample: Callable[[], float], warmup: Callable[[], object], rounds: int, run: Run) -> dict[str, Any]:
    """``rounds`` samples after the warm-up, with the peak GPU memory of them all (reset first)."""
    reset_peak(run.device)
    warmup()
    values = [sample() for _ in range(rounds)]
    return summary(values) | {"peak_memory_mib": peak_mib(run.device)}


def measure_model(model: nn.Module, variant: str, kernel: str, inputs: ModelInputs, run: Run) -> list[dict]:
    """Prefill at each length and decode, for the model as it is now (dense, or with 2:4 weights)."""
    from secateurs.bench.speed import tensor_bytes

    protocol, clock = run.protocol, run.clock
    base = run.stamp | {"part": "model", "variant": variant, "kernel": kernel, "dtype": protocol.model_dtype}
    base["weights_mib"] = round(tensor_bytes(model) / 2**20, 1)
    rows = []
    for length, ids in inputs.prefill.items():
        once = prefill_sampler(model, ids, clock)
        timing = repeated(once, lambda once=once: [once() for _ in range(protocol.warmup)], protocol.rounds, run)
        row = base | {"measurement": f"prefill {length}", "batch": 1, "tokens": length} | timing
        rows.append(row | {"tokens_per_s": length / (timing["median_ms"] / 1e3)})
    steps = protocol.new_tokens
    timing = repeated(
        lambda: decode_ms(model, inputs.prompt, steps, run.device),
        lambda: decode_ms(model, inputs.prompt, protocol.decode_warmup_tokens, run.device),
        protocol.decode_rounds,
        run,
    )
    decode = {"measurement": f"decode {steps}", "batch": 1, "prompt_tokens": protocol.prompt_tokens}
    rate = {"ms_per_token": timing["median_ms"] / steps, "tokens_per_s": steps / (timing["median_ms"] / 1e3)}
    rows.append(base | decode | {"new_tokens": steps} | timing | rate)
    run.log(f"(b) {variant} model measured")
    return rows


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def prune_two_four(model: nn.Module, run: Run) -> dict[str, Any]:
    """Magnitude 2:4 on every decoder-block Linear through secateurs (no walk: the weights stay on the GPU)."""
    from secateurs import load_recipe, prune

    reset_peak(run.device)
    start = time.perf_counter()
    report = prune(model, load_recipe({"method": "magnitude", "pattern": "2:4"}), progress=False, device=run.device)
    seconds = time.perf_counter() - start
    if next(model.parameters()).device != run.device:  # defensive: later secateurs versions might move it
        model.to(run.device)
    return {"magnitude_2_4_seconds": round(seconds, 3), "magnitude_2_4_sparsity": report.sparsity}


def semi_structured_model(model: nn.Module, run: Run) -> dict[str, Any]:
    """Swap the 2:4 weights to semi-structured tensors (secateurs' own conversion); a dry run keeps them dense."""
    if not run.backend.sparse:
        return {"swapped_weights": 0, "conversion": run.backend.kernel}
    from secateurs.io.semi_structured import to_semi_structured

    start = time.perf_counter()
    swapped = to_semi_structured(model)
    free(run.device)
    return {"swapped_weights": len(swapped), "conversion_seconds": round(time.perf_counter() - start, 3)}


def model_part(run: Run, rows: list[dict[str, Any]]) -> None:
    """Dense first; then pruned 2:4 in place, checked against its dense-stored self, converted and measured."""
    model = build_model(run)
    inputs = model_inputs(run)
    rows += measure_model(model, "dense", run.dense_kernel, inputs, run)
    run.checkpoint()
    facts = prune_two_four(model, run)
    reference = logits(model, inputs.prompt)
    facts |= semi_structured_model(model, run)
    actual = logits(model, inputs.prompt)
    check = compare("model logits: 2:4 semi-structured vs dense-stored 2:4 weights", actual, reference, MODEL_TOLERANCE)
    check["top1_agreement"] = float((actual.argmax(-1) == reference.argmax(-1)).float().mean())
    run.checks.append(check | {"prompt_tokens": run.protocol.prompt_tokens})
    del reference, actual
    sparse_rows = measure_model(model, "2:4", run.backend.kernel, inputs, run)
    for dense, sparse in zip(rows, sparse_rows, strict=True):
        sparse.update(facts, speedup_vs_dense=dense["median_ms"] / sparse["median_ms"])
        if dense["peak_memory_mib"] and sparse["peak_memory_mib"]:
            sparse["peak_memory_vs_dense"] = sparse["peak_memory_mib"] / dense["peak_memory_mib"]
    del model
    free(run.device)
    rows += sparse_rows


# ------------------------------------------------------------------------------------------- (c) prune


def prune_once(method: str, run: Run) -> dict[str, Any]:
    """One ``secateurs.prune`` of a freshly built model (same seed), held on the CPU as secateurs expects: each
    block visits the GPU for its turn. The build and the move are not timed."""
    from secateurs import load_recipe, prune

    protocol = run.protocol
    model = build_model(run).to("cpu")
    free(run.device)
    generator = torch.Generator().manual_seed(protocol.seed + 3)
    calibration = torch.randint(
        0, protocol.model["vocab_size"], (protocol.nsamples, protocol.seqlen), generator=generator
    )
    recipe = load_recipe({"method": method, "sparsity": protocol.sparsity})
    reset_peak(run.device)
    start = time.perf_counter()
    report = prune(model, recipe, calibration, progress=False, device=run.device)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    walk = report.walk
    row = run.stamp | {"part": "prune", "method": method, "target_sparsity": protocol.sparsity}
    row |= {"sparsity": report.sparsity, "nsamples": protocol.nsamples, "seqlen": protocol.seqlen}
    row |= {"wall_seconds": round(wall, 3), "report_prune_seconds": report.prune_seconds}
    row |= {"peak_memory_mib": peak_mib(run.device), "report_peak_cuda_mib": report.peak_cuda_mib}
    row |= {"peak_rss_mib": report.peak_rss_mib, "model_held_on": "cpu, one block at a time on " + str(run.device)}
    if walk is not None:
        row |= {"walk_mode": walk.mode, "walk_batch_size": walk.batch_size, "walk_seconds": walk.seconds}
    del model
    free(run.device)
    run.log(f"(c) {method} pruned in {wall:.1f} s")
    return row


def prune_part(run: Run, rows: list[dict[str, Any]]) -> None:
    for method in run.protocol.methods:
        rows.append(prune_once(method, run))
        run.checkpoint()  # SparseGPT is the longest step: a run cut off in it keeps Wanda's row


# ------------------------------------------------------------------------------------------- provenance


def command_output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def host_facts(device: torch.device) -> dict[str, Any]:
    from secateurs.report import machine

    facts: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu": machine()["cpu"],
        "kernel": platform.release(),
        "platform": platform.platform(),
        "cuda_runtime": torch.version.cuda,
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        driver = command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        facts |= {
            "gpu": properties.name,
            "cuda_capability": f"{properties.major}.{properties.minor}",
            "gpu_memory_mib": round(properties.total_memory / 2**20),
            "driver": driver.splitlines()[0] if driver else None,
            "cusparselt": torch.backends.cusparselt.version(),
            # cuBLAS may reduce split-K partial sums in 16 bits when these are on (the defaults): the dense
            # reference of the self-checks is then that much less exact
            "fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            "bf16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        }
    return facts


# ------------------------------------------------------------------------------------------- outputs


def cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def spread(row: dict[str, Any]) -> str:
    return f"{cell(row['median_ms'])} ({cell(row['min_ms'])}-{cell(row['max_ms'])})"


def linear_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| W [out, in] | dtype | tokens | dense ms | 2:4 ms | 2:4 speedup | unstructured 50% ms | its speedup "
        "| 2:4 kernel |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_case: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        by_case.setdefault((tuple(row["shape"]), row["dtype"], row["tokens"]), {})[row["variant"]] = row
    for (shape, dtype, tokens), variants in by_case.items():
        two_four, unstructured = variants["2:4"], variants["unstructured 50%"]
        lines.append(
            f"| {shape[0]} x {shape[1]} | {dtype} | {tokens} | {spread(variants['dense'])} | {spread(two_four)} | "
            f"{cell(two_four['speedup_vs_dense'], 2)}x | {spread(unstructured)} | "
            f"{cell(unstructured['speedup_vs_dense'], 2)}x | {two_four['kernel']} |"
        )
    return lines


def model_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| measurement | variant | kernel | median ms (min-max) | tokens/s | speedup | peak MiB | weights MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        speedup = row.get("speedup_vs_dense")
        lines.append(
            f"| {row['measurement']} | {row['variant']} | {row['kernel']} | {spread(row)} | "
            f"{cell(row['tokens_per_s'], 1)} | {cell(speedup, 2) + 'x' if speedup else '-'} | "
            f"{cell(row['peak_memory_mib'], 0)} | {cell(row['weights_mib'], 1)} |"
        )
    return lines


def prune_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| method | calibration | wall s | peak GPU MiB | sparsity | walk |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['nsamples']} x {row['seqlen']} | {cell(row['wall_seconds'], 1)} | "
            f"{cell(row['peak_memory_mib'], 0)} | {cell(row['sparsity'], 4)} | {row.get('walk_mode', '-')} |"
        )
    return lines


def markdown(document: dict[str, Any]) -> str:
    host, git = document["host"], document["git"]
    where = host.get("gpu") or f"CPU {host['cpu']}"
    lines = [
        f"# Protocol {document['protocol']}{' (dry run: tiny shapes on the CPU)' if document['dry_run'] else ''}",
        "",
        f"Run `{document['run_id']}` on {where} (capability {host.get('cuda_capability', '-')}, driver "
        f"{host.get('driver', '-')}, CUDA {host.get('cuda_runtime')}), {document['start_time']} to "
        f"{document.get('end_time', '(unfinished)')}; commit {git['commit']} ({'clean' if git['clean'] else 'dirty'} "
        f"tree); torch {document['versions'].get('torch')}, transformers {document['versions'].get('transformers')}; "
        f"2:4 backend: {document['semi_structured_backend']['kernel']}.",
        "",
        f"Command: `{document['command']}`",
    ]
    titles = {"linear": "(a) Linear: ms per call", "model": "(b) Whole model", "prune": "(c) Prune wall time"}
    tables = {"linear": linear_table, "model": model_table, "prune": prune_table}
    for name, part in document["parts"].items():
        lines += ["", f"## {titles[name]}", ""]
        body = tables[name](part["rows"]) if part["rows"] else []
        if not part["finished"]:
            why = part.get("error", "still running when these files were written")
            body += ["", f"Not finished: {why}"] if body else [f"Not finished: {why}"]
        lines += body
    lines += [
        "",
        "## Self-checks",
        "",
        "| check | max abs error | allowed (atol) | passed |",
        "| --- | --- | --- | --- |",
    ]
    for check in document["checks"]:
        error, allowed = cell(check["max_abs_error"], 6), cell(check["atol"], 6)
        lines.append(f"| {check['check']} | {error} | {allowed} | {check['passed']} |")
    return "\n".join(lines) + "\n"


def save(document: dict[str, Any], out: Path) -> None:
    """The JSON (``write_results``: atomic, with the machine and versions) and its Markdown table beside it."""
    from secateurs.io.atomic import write_text_atomic

    write_results(out, document)
    write_text_atomic(out.with_suffix(".md"), markdown(document))


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny shapes")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/gpu.json, or gpu_dry_run.json)")
    parser.add_argument("--nsamples", type=int, help="calibration windows of part (c) (default 128; dry run 4)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="which parts to run, comma-separated: linear,model,prune"
    )
    parser.add_argument("--methods", help="methods of part (c), comma-separated (default wanda,sparsegpt)")
    args = parser.parse_args(argv)
    args.parts = [part for part in args.parts.split(",") if part]
    if unknown := [part for part in args.parts if part not in PARTS]:
        parser.error(f"unknown part {unknown[0]!r}: choose among {', '.join(PARTS)}")
    return args


def cuda_problem() -> str | None:
    """Why this machine cannot run the protocol, or None."""
    if not torch.cuda.is_available():
        return "this machine has no usable CUDA device"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 0):
        return f"{torch.cuda.get_device_name()} has compute capability {major}.{minor}"
    return None


def protocol_for(args: argparse.Namespace) -> Protocol:
    protocol = DRY_RUN if args.dry_run else GPU_PROTOCOL
    if args.nsamples is not None:
        protocol = dataclasses.replace(protocol, nsamples=args.nsamples)
    if args.methods:
        protocol = dataclasses.replace(protocol, methods=tuple(args.methods.split(",")))
    return protocol


def start_document(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    return run.stamp | {
        "dry_run": args.dry_run,
        "complete": False,
        "command": shlex.join(sys.orig_argv),
        "start_time": utc_now(),
        "git": git_state(),
        "host": host_facts(run.device),
        "settings": dataclasses.asdict(run.protocol) | {"parts": args.parts, "device": str(run.device)},
        "tolerances": {"linear": dataclasses.asdict(LINEAR_TOLERANCE), "model": dataclasses.asdict(MODEL_TOLERANCE)},
        "semi_structured_backend": run.backend.record(),
        "parts": {},
        "checks": run.checks,
    }


def run_part(name: str, run: Run, document: dict[str, Any]) -> None:
    """One part into ``document["parts"][name]``: its rows as they come, ``finished``, or the error that stopped
    it (the next parts still run: device time is scarce)."""
    parts = {"linear": linear_part, "model": model_part, "prune": prune_part}
    entry: dict[str, Any] = {"rows": [], "finished": False}
    document["parts"][name] = entry
    start = time.perf_counter()
    try:
        parts[name](run, entry["rows"])
        entry["finished"] = True
    except Exception as error:  # any failure: recorded in the JSON and in the exit status
        traceback.print_exc()
        entry["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    free(run.device)
    entry["seconds"] = round(time.perf_counter() - start, 2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = None if args.dry_run else cuda_problem()
    if problem:
        print(NEED_CUDA.format(found=problem), file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    out = args.out or RESULTS / ("gpu_dry_run.json" if args.dry_run else "gpu.json")
    stamp = {"protocol": PROTOCOL, "run_id": f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"}
    run = Run(protocol_for(args), device, Clock(device), choose_backend(device), stamp)
    run.checks.append(run.backend.check())
    document = start_document(args, run)
    run.checkpoint = lambda: save(document, out)  # a run cut off by a time limit keeps what it finished
    run.log(f"run {stamp['run_id']}: 2:4 backend {run.backend.kernel}, writing {out}")
    for name in args.parts:
        run_part(name, run, document)
        run.checkpoint()
    failed = [check["check"] for check in run.checks if not check["passed"]]
    errors = [name for name, part in document["parts"].items() if not part["finished"]]
    document |= {"end_time": utc_now(), "complete": True, "checks_passed": not failed, "part_errors": errors}
    save(document, out)
    run.log(f"wrote {out} and {out.with_suffix('.md')}: {len(run.checks)} checks, {len(failed)} failed")
    for name in failed:
        print(f"check failed: {name}", file=sys.stderr)
    return 1 if failed or errors else 0


if __name__ == "__main__":
    sys.exit(main())
