"""Protocol Q-CPU (docs/benchmarks.md): quality and pruning cost of secateurs on SmolLM2-135M, with
llmcompressor 0.14 (its own virtual environment) and the forward-pass floor measured in the same run.

    python bench/run.py q-cpu --only wanda-50 sparsegpt-50    # one run, with its peers and floor, 3 rounds

This file holds the protocol's configurations and the steps bench/run.py runs, each in a fresh process, so its
peak RSS is its own: ru_maxrss when pruning returns (model load, calibration and pruning; saving and evaluation
excluded, for both tools). The GGUF is dequantized to a float32 safetensors folder once, in bench/work/, and
both tools load that folder and the same calibration tokens.

    python bench/q_cpu.py --only wanda-50     # the older form: rows merged into bench/results/q_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import read_results, write_results  # noqa: E402

SHARED = Path(os.environ.get("SECATEURS_SHARED", ROOT.parent / "shared")).resolve()
GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
C4 = SHARED / "data" / "c4" / "c4-train.00000-of-01024.head1000.jsonl"
WIKITEXT = SHARED / "data" / "wikitext-2-raw-v1" / "wiki.test.raw"
WORK = ROOT / "bench" / "work"
MODEL = WORK / "smollm2-135m-f32"
CALIB = WORK / "calib-c4-128x512-seed0.safetensors"
# the second evaluation text: the C4 slice's documents that no calibration window came from
C4_HELDOUT = WORK / "c4-heldout-seed0.jsonl"
RESULTS = ROOT / "bench" / "results" / "q_cpu.json"
THREADS = 2
NSAMPLES, SEQLEN, EVAL_SEQLEN, EVAL_WINDOWS = 128, 512, 2048, 32
FLOOR_BATCHES = (4, 16, NSAMPLES)  # the walks' batch sizes (4 by default) and the largest

# name -> the recipe (as secateurs.load_recipe reads it; method None: the dense model), with the bench's own keys
# dtype and offload (true_sequential None: the method's default, one pass for SparseGPT)
SECATEURS: dict[str, dict] = {
    "dense": {"method": None},
    "magnitude-50": {"method": "magnitude"},
    "wanda-50": {"method": "wanda"},
    "wanda-2:4": {"method": "wanda", "pattern": "2:4"},
    "wanda-4:8": {"method": "wanda", "pattern": "4:8"},
    "wanda-50-true-sequential": {"method": "wanda", "true_sequential": True},
    "wanda-50-true-sequential-bf16": {"method": "wanda", "true_sequential": True, "dtype": "bfloat16"},
    # the model streamed from its safetensors file block by block (--offload disk), pruned blocks written out
    "wanda-50-offload": {"method": "wanda", "offload": "disk"},
    "sparsegpt-50-offload": {"method": "sparsegpt", "offload": "disk"},
    # the low-memory mode: calibration in chunks (--no-true-sequential), the model streamed from its file
    "sparsegpt-50-no-true-sequential-offload": {"method": "sparsegpt", "true_sequential": False, "offload": "disk"},
    "sparsegpt-2:4-no-true-sequential-offload": {
        "method": "sparsegpt",
        "pattern": "2:4",
        "true_sequential": False,
        "offload": "disk",
    },
    "sparsegpt-50": {"method": "sparsegpt"},
    "sparsegpt-2:4": {"method": "sparsegpt", "pattern": "2:4"},
    "sparsegpt-4:8": {"method": "sparsegpt", "pattern": "4:8"},
    "sparsegpt-50-no-true-sequential": {"method": "sparsegpt", "true_sequential": False},
    "sparsegpt-2:4-no-true-sequential": {"method": "sparsegpt", "pattern": "2:4", "true_sequential": False},
    "sparsegpt-4:8-no-true-sequential": {"method": "sparsegpt", "pattern": "4:8", "true_sequential": False},
    # the Wanda paper's Section 5 ablations: a score's mask with SparseGPT's OBS update
    "magnitude-50-obs-seq": {"method": "magnitude", "update": "obs-seq"},
    "magnitude-50-obs-iter": {"method": "magnitude", "update": "obs-iter"},
    "wanda-50-obs-seq": {"method": "wanda", "update": "obs-seq"},
    "wanda-50-obs-iter": {"method": "wanda", "update": "obs-iter"},
}
# allocation, variants and refinement at 50%, 60%, 70% and 2:4
ALLOCATION: dict[str, dict] = {
    "wanda-70": {"method": "wanda", "sparsity": 0.7},
    "wanda-70-owl": {"method": "wanda", "sparsity": 0.7, "allocation": "owl"},
    "wanda-70-variant": {"method": {"name": "wanda", "variant": True}, "sparsity": 0.7},
    "wanda-70-dsnot": {"method": "wanda", "sparsity": 0.7, "refine": "dsnot"},
    "ria-70": {"method": "ria", "sparsity": 0.7},
    "sparsegpt-70": {"method": "sparsegpt", "sparsity": 0.7},
    "sparsegpt-70-owl": {"method": "sparsegpt", "sparsity": 0.7, "allocation": "owl"},
    "wanda-60": {"method": "wanda", "sparsity": 0.6},
    "wanda-60-owl": {"method": "wanda", "sparsity": 0.6, "allocation": "owl"},
    "sparsegpt-60": {"method": "sparsegpt", "sparsity": 0.6},
    "sparsegpt-60-owl": {"method": "sparsegpt", "sparsity": 0.6, "allocation": "owl"},
    "sparsegpt-50-owl": {"method": "sparsegpt", "allocation": "owl"},
    "wanda-50-true-sequential-dsnot": {"method": "wanda", "true_sequential": True, "refine": "dsnot"},
    "ria-2:4": {"method": "ria", "pattern": "2:4"},
    "wanda-2:4-true-sequential-dsnot": {
        "method": "wanda",
        "pattern": "2:4",
        "true_sequential": True,
        "refine": "dsnot",
    },
    # EBFT: each pruned block's kept weights tuned toward the dense block's output (8 epochs, Adam 1e-3)
    "sparsegpt-50-ebft": {"method": "sparsegpt", "ebft": {"epochs": 8}},
    "sparsegpt-2:4-ebft": {"method": "sparsegpt", "pattern": "2:4", "ebft": {"epochs": 8}},
    "wanda-50-ebft": {"method": "wanda", "ebft": {"epochs": 8}},
    # the same, each block fitted to the dense model's activations (a dense stream walks beside the pruned one)
    "sparsegpt-50-ebft-model": {"method": "sparsegpt", "ebft": {"epochs": 8, "target": "model"}},
    "sparsegpt-2:4-ebft-model": {"method": "sparsegpt", "pattern": "2:4", "ebft": {"epochs": 8, "target": "model"}},
    # 12 epochs: at epoch 8 every block's loss was still falling by about 1% an epoch
    "sparsegpt-50-ebft-model-e12": {"method": "sparsegpt", "ebft": {"epochs": 12, "target": "model"}},
    # distillation after the walk: the whole model's kept weights fitted to the dense model's predictions
    # (2 epochs; one gave the same perplexity, 34.47 against 34.46, in a script outside the bench)
    "sparsegpt-50-distill": {"method": "sparsegpt", "distill": {"epochs": 2}},
    "sparsegpt-2:4-distill": {"method": "sparsegpt", "pattern": "2:4", "distill": {"epochs": 1}},
    "sparsegpt-50-ebft-model-distill": {
        "method": "sparsegpt",
        "ebft": {"epochs": 8, "target": "model"},
        "distill": {"epochs": 1},
    },
}
# recipes beyond SparseGPT: ALPS (ADMM support, conjugate-gradient re-fit), alone, with OWL, with block tuning
RECIPES: dict[str, dict] = {
    "alps-50": {"method": "alps"},
    "alps-2:4": {"method": "alps", "pattern": "2:4"},
    "alps-70": {"method": "alps", "sparsity": 0.7},
    "alps-70-owl": {"method": "alps", "sparsity": 0.7, "allocation": "owl"},
    # the unstructured top-k compared within each row (Wanda's group) instead of the whole layer
    "alps-50-row": {"method": {"name": "alps", "compare": "row"}},
    "alps-70-row": {"method": {"name": "alps", "compare": "row"}, "sparsity": 0.7},
    # each layer fitted toward the dense model's output of the same tokens (a quarter of the way, the default;
    # "-mix1": the whole way), a dense stream beside the pruned one
    "alps-50-fit-dense": {"method": {"name": "alps", "fit": "dense"}},
    "alps-50-fit-dense-mix1": {"method": {"name": "alps", "fit": "dense", "mix": 1.0}},
    "alps-2:4-fit-dense": {"method": {"name": "alps", "fit": "dense"}, "pattern": "2:4"},
    "alps-70-fit-dense": {"method": {"name": "alps", "fit": "dense"}, "sparsity": 0.7},
    "alps-50-row-fit-dense": {"method": {"name": "alps", "compare": "row", "fit": "dense"}},
    "sparsegpt-50-fit-dense": {"method": {"name": "sparsegpt", "fit": "dense"}},
    # the "best" preset: one epoch of EBFT toward the dense model after ALPS (a 4x budget)
    "alps-50-ebft-model-e1": {"method": "alps", "ebft": {"epochs": 1, "target": "model"}},
    "alps-2:4-ebft-model-e1": {"method": "alps", "pattern": "2:4", "ebft": {"epochs": 1, "target": "model"}},
    # the same with the tuning's products in bfloat16 where the CPU has bfloat16 units (AVX512-BF16 here)
    "alps-50-ebft-model-e1-auto": {"method": "alps", "ebft": {"epochs": 1, "target": "model", "precision": "auto"}},
    "alps-2:4-ebft-model-e1-auto": {
        "method": "alps",
        "pattern": "2:4",
        "ebft": {"epochs": 1, "target": "model", "precision": "auto"},
    },
    # two epochs: what the tune stage's passes in bfloat16 (the dense target, the outputs handed on) leave room for
    "alps-50-ebft-model-e2-auto": {"method": "alps", "ebft": {"epochs": 2, "target": "model", "precision": "auto"}},
    "alps-2:4-ebft-model-e2-auto": {
        "method": "alps",
        "pattern": "2:4",
        "ebft": {"epochs": 2, "target": "model", "precision": "auto"},
    },
}
SECATEURS.update(ALLOCATION)
SECATEURS.update(RECIPES)
PEER = {
    "llmcompressor-wanda-50": ("wanda", "unstructured"),
    "llmcompressor-wanda-2:4": ("wanda", "2:4"),
    "llmcompressor-sparsegpt-50": ("sparsegpt", "unstructured"),
    "llmcompressor-sparsegpt-2:4": ("sparsegpt", "2:4"),
    "llmcompressor-sparsegpt-4:8": ("sparsegpt", "4:8"),
    "llmcompressor-sparsegpt-70": ("sparsegpt", "unstructured", 0.7),
    "llmcompressor-wanda-70": ("wanda", "unstructured", 0.7),
    "llmcompressor-wanda-70-owl": ("wanda", "unstructured", 0.7, "owl"),
}
GROUPS = {
    "core": [
        "floor",
        "dense",
        "magnitude-50",
        "wanda-50",
        "llmcompressor-wanda-50",
        "wanda-2:4",
        "llmcompressor-wanda-2:4",
        "wanda-4:8",
        "wanda-50-true-sequential",
        "wanda-50-true-sequential-bf16",
        "wanda-50-offload",
    ],
    "sparsegpt": [
        "sparsegpt-50",
        "llmcompressor-sparsegpt-50",
        "sparsegpt-2:4",
        "llmcompressor-sparsegpt-2:4",
        "sparsegpt-4:8",
        "llmcompressor-sparsegpt-4:8",
        "sparsegpt-50-no-true-sequential",
        "sparsegpt-2:4-no-true-sequential",
        "sparsegpt-50-offload",
        "sparsegpt-50-no-true-sequential-offload",
        "sparsegpt-2:4-no-true-sequential-offload",
        "magnitude-50-obs-seq",
        "magnitude-50-obs-iter",
        "wanda-50-obs-seq",
        "wanda-50-obs-iter",
    ],
    "allocation": [*ALLOCATION, "llmcompressor-wanda-70", "llmcompressor-wanda-70-owl"],
}


def _child(*args: str) -> dict:
    """Run this script in a fresh process for one step; it prints one JSON line last."""
    command = [sys.executable, __file__, *args]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare() -> None:
    """Dequantize the GGUF to float32 safetensors and sample the calibration windows (once)."""
    import torch
    from safetensors.torch import load_file, save_file

    from secateurs import calibration_sample, load, load_corpus

    WORK.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(GGUF, "float32")
    if not (MODEL / "config.json").exists():
        model.save_pretrained(MODEL)
        tokenizer.save_pretrained(MODEL)
    if CALIB.exists() and C4_HELDOUT.exists():
        return
    corpus = load_corpus(C4)
    ids, used = calibration_sample(corpus, tokenizer, NSAMPLES, SEQLEN, seed=0)
    if not CALIB.exists():
        save_file({"input_ids": ids.to(torch.int64).contiguous()}, str(CALIB))
    elif not torch.equal(load_file(str(CALIB))["input_ids"], ids):
        sys.exit(f"{CALIB} is not this protocol's sampling: delete bench/work and run again")
    calibrated = set(used or [])
    held_out = [text for index, text in enumerate(corpus.documents or []) if index not in calibrated]
    partial = C4_HELDOUT.with_suffix(".partial")
    partial.write_text("".join(json.dumps({"text": text}) + "\n" for text in held_out))
    partial.replace(C4_HELDOUT)


def _eval(model, tokenizer) -> dict:  # noqa: ANN001
    """Perplexity on WikiText-2 (``ppl``) and on the C4 documents the calibration did not use (``ppl_c4``), by
    the same evaluator and windows."""
    from secateurs import evaluation_ids
    from secateurs.evaluate import perplexity

    found = {}
    for key, text in (("ppl", WIKITEXT), ("ppl_c4", C4_HELDOUT)):
        ids = evaluation_ids(text, tokenizer, EVAL_SEQLEN)
        found[key] = perplexity(model, ids, EVAL_SEQLEN, EVAL_WINDOWS, device="cpu", progress=False)
    return found


def recipe_facts(recipe) -> dict:  # noqa: ANN001
    """What a results row says of its recipe, as flat values (a stage that is off: its old default)."""
    return {
        "method": recipe.method.name,
        "pattern": recipe.pattern,
        "target_sparsity": recipe.target_sparsity,
        "allocation": recipe.allocation.name if recipe.allocation is not None else "uniform",
        "true_sequential": recipe.sequential,
        "update": recipe.update.name if recipe.update is not None else None,
    }


def tuning_facts(recipe, report) -> dict:  # noqa: ANN001
    """The EBFT and distillation settings of a recipe and the report's distillation ({} when there was none)."""
    from secateurs.report.serialize import to_json_value

    return {
        "ebft_epochs": recipe.ebft.epochs if recipe.ebft is not None else 0,
        "ebft_target": recipe.ebft.target if recipe.ebft is not None else "block",
        "ebft_precision": recipe.ebft.precision if recipe.ebft is not None else None,
        "distill_epochs": recipe.distill.epochs if recipe.distill is not None else 0,
        "distill": to_json_value(report.distill) if report.distill is not None else {},
    }


def walk_facts(report) -> dict:  # noqa: ANN001
    """The report's walk as the JSON of secateurs.json ({} when nothing was walked: magnitude)."""
    from secateurs.report.serialize import to_json_value

    return to_json_value(report.walk) if report.walk is not None else {}


def weights_sha256(tensors: dict) -> str:
    """One hash of a model's tensors (sorted by name): the same weights in every round, or not."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def folder_sha256(folder: Path) -> str:
    from safetensors.torch import load_file

    tensors: dict = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return weights_sha256(tensors)


def run_secateurs(name: str, evaluate: bool = True) -> dict:
    import torch
    from safetensors.torch import load_file

    from secateurs import load, load_recipe, prune
    from secateurs.report import peak_rss_mib, versions

    torch.set_num_threads(THREADS)
    options = dict(SECATEURS[name])
    dtype = options.pop("dtype", "float32")
    if options.pop("offload", None):
        return run_offloaded(name, options, dtype, evaluate)
    model, tokenizer = load(MODEL, dtype)
    result: dict = {"name": name, "tool": "secateurs", "dtype": dtype, "versions": versions()}
    if options["method"] is not None:
        calibration = load_file(str(CALIB))["input_ids"]
        recipe = load_recipe(options)
        report = prune(model, recipe, calibration, device="cpu", progress=False)
        notes = [layer.note for layer in report.layers if layer.note is not None]
        result.update(
            **recipe_facts(recipe),
            **tuning_facts(recipe, report),
            prune_s=report.prune_seconds,
            sparsity=report.sparsity,
            walk=walk_facts(report),
            layer_notes=notes,
        )
        allocation = report.allocation
        if allocation is not None and allocation.block_sparsities is not None:  # compared with the peer's modifier
            result["block_sparsities"] = allocation.block_sparsities
    result["peak_rss_mib"] = peak_rss_mib()
    result["weights_sha256"] = weights_sha256(model.state_dict())
    if evaluate:
        model.float()
        result.update(_eval(model, tokenizer))
    return result


def run_offloaded(name: str, options: dict, dtype: str, evaluate: bool = True) -> dict:
    """The CLI's path with ``--offload disk``: only the block being pruned is in memory; the pruned
    checkpoint is written block by block, then evaluated in a fresh process."""
    from secateurs import PruneJob, load_recipe, run_prune
    from secateurs.report import peak_rss_mib, versions

    # the same windows as CALIB: the protocol's sampling of the C4 slice, seed 0
    calibration = {"source": str(C4), "nsamples": NSAMPLES, "seqlen": SEQLEN, "seed": 0}
    recipe = load_recipe({**options, "calibration": calibration})
    out = WORK / name.replace(":", "-")
    job = PruneJob(
        model=str(MODEL),
        recipe=recipe,
        out=out,
        device="cpu",
        dtype=dtype,
        overwrite=True,
        progress=False,
        offload="disk",
    )
    report = run_prune(job)
    result = {
        "name": name,
        "tool": "secateurs",
        "dtype": dtype,
        "versions": versions(),
        **recipe_facts(recipe),
        "offload": "disk",
        "prune_s": report.prune_seconds,
        "sparsity": report.sparsity,
        "walk": walk_facts(report),
        "peak_rss_mib": peak_rss_mib(),
        "weights_sha256": folder_sha256(out),
    }
    if evaluate:
        result.update(_child("--step", "eval", "--arg", str(out)))
    return result


def run_eval(folder: str) -> dict:
    import torch

    from secateurs import load

    torch.set_num_threads(THREADS)
    model, tokenizer = load(folder, "float32")
    return _eval(model, tokenizer)


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX); elsewhere torch emulates it, many
    times slower than float32, and a bfloat16 timing says nothing about the method."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_floor(batch: int | None = None) -> dict:
    """The cost floor: float32 forward passes of the calibration set through the blocks (no hooks). With
    ``batch``: one pass at that batch size (bench/run.py's row); without: the older file's set of passes."""
    import torch

    torch.set_num_threads(THREADS)
    if batch is not None:
        from secateurs.report import versions

        return {"tool": "floor", "batch_size": batch, "one_pass_s": _one_pass("float32", batch), "versions": versions()}
    floor: dict = {}
    runs = [("float32", 16), ("float32", 4), ("float32", NSAMPLES)]
    if native_bfloat16():
        runs += [("bfloat16", 16), ("bfloat16", NSAMPLES)]
    else:
        floor["bfloat16"] = "not measured: this CPU has no native bfloat16 (torch emulates it)"
    for dtype, size in runs:
        floor[f"one_pass_{dtype}_batch{size}_s"] = _one_pass(dtype, size)
    return floor


def _one_pass(dtype: str, batch: int) -> float:
    import torch
    from safetensors.torch import load_file

    from secateurs import load
    from secateurs.engine import capture_block_inputs, run_block
    from secateurs.models import find_blocks

    calibration = load_file(str(CALIB))["input_ids"]
    model, _ = load(MODEL, dtype)
    _, blocks = find_blocks(model)
    with torch.no_grad():
        inputs = capture_block_inputs(model, blocks, calibration, batch, torch.device("cpu"))
        start = time.perf_counter()
        hidden = inputs.hidden
        for index, block in enumerate(blocks):
            hidden = [run_block(block, h, inputs.block_arguments(index, h)) for h in hidden]
    return round(time.perf_counter() - start, 2)


def facts() -> dict:
    """The protocol's fixed settings, recorded with every run."""
    return {
        "model": GGUF.name,
        "calibration": f"C4 slice, {NSAMPLES} x {SEQLEN}, seed 0",
        "evaluation": f"WikiText-2 test, first {EVAL_WINDOWS} windows of {EVAL_SEQLEN}",
        "threads": THREADS,
        "peak_rss_point": "ru_maxrss when pruning returns (load, calibration, pruning; saving and evaluation excluded)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="configuration or group names (see SECATEURS, PEER, GROUPS, 'floor')")
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help=f"the JSON to add to (default {RESULTS.relative_to(ROOT)}); one file holds one machine kind's figures",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--arg", help=argparse.SUPPRESS)
    parser.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        step = {
            "prepare": lambda: prepare() or {},
            "secateurs": lambda: run_secateurs(args.arg, not args.no_eval),
            "eval": lambda: run_eval(args.arg),
            "floor": lambda: run_floor(int(args.arg) if args.arg else None),
        }[args.step]
        print(json.dumps(step()))
        return
    if not GGUF.exists():
        sys.exit(f"{GGUF} not found: set SECATEURS_SHARED to the folder holding models/ and data/")

    names = [n for name in (args.only or list(GROUPS)) for n in GROUPS.get(name, [name])]
    if not native_bfloat16():
        names = [n for n in names if SECATEURS.get(n, {}).get("dtype") != "bfloat16"]
    path = args.results
    results = read_results(path, adding=True)
    _child("--step", "prepare")
    for name in names:
        print(f"[q_cpu] {name} ...", file=sys.stderr, flush=True)
        try:
            if name == "floor":
                results["floor"] = _child("--step", "floor")
            elif name in SECATEURS:
                results["runs"][name] = _child("--step", "secateurs", "--arg", name)
            elif name in PEER:
                results["runs"][name] = run_peer(name)
            else:
                sys.exit(f"unknown configuration {name}")
        except subprocess.CalledProcessError as error:  # keep the other configurations' figures
            print(f"[q_cpu] {name} failed: {error}", file=sys.stderr)
            continue
        print(f"[q_cpu] {name}: {json.dumps(results['runs'].get(name, results.get('floor')))}", file=sys.stderr)
        _write(results, path)


def run_peer(name: str, evaluate: bool = True) -> dict:
    spec = PEER[name]  # (method, pattern[, sparsity (0.5)[, OWL profile]])
    method, pattern = spec[:2]
    sparsity = spec[2] if len(spec) > 2 else 0.5
    profile = spec[3] if len(spec) > 3 else None
    python = (
        subprocess.run(["bash", str(ROOT / "bench" / "peer_env.sh")], stdout=subprocess.PIPE, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    out = WORK / name.replace(":", "-")
    report = WORK / f"{name.replace(':', '-')}.json"
    subprocess.run(
        [
            python,
            str(ROOT / "bench" / "peer_llmcompressor.py"),
            "--model",
            str(MODEL),
            "--calib-tokens",
            str(CALIB),
            "--method",
            method,
            "--sparsity",
            str(sparsity),
            *(["--profile", profile] if profile else []),
            "--pattern",
            pattern,
            "--out",
            str(out),
            "--json",
            str(report),
            "--threads",
            str(THREADS),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    measured = json.loads(report.read_text())
    measured.pop("per_module_sparsity", None)  # 210 lines of 0.5
    result = {"name": name, "tool": "llmcompressor", **measured, "weights_sha256": folder_sha256(out)}
    if evaluate:
        result.update(_child("--step", "eval", "--arg", str(out)))
    return result


def _write(results: dict, path: Path) -> None:
    write_results(path, results, protocol="Q-CPU", **facts())


if __name__ == "__main__":
    main()
