"""The structured cuts that protocols S (PyTorch) and GGUF (llama.cpp) time: SmolLM2-135M dense, six of its 30
blocks removed and the rest distilled one epoch, its MLPs narrowed by 25 % and re-fitted, and both cuts
together (the narrowing applied to the depth-cut model). bench/run.py drives this script; each step runs in a
fresh process and prints one JSON line last.

    python bench/cuts.py --step prepare              # the cut folders and their GGUF files (reused when current)
    python bench/cuts.py --step gguf --arg mlp-25@f16 # one timing of one file in llama.cpp
    python bench/cuts.py --step ppl --arg mlp-25@f16  # its perplexity, read back
    python bench/cuts.py --step torch --arg mlp-25    # one timing of one folder in PyTorch (protocol S)

Ideal speedups: a decode step multiplies every matrix once, so the ideal gain of a cut is the ratio of the
weights multiplied per token, dense over cut; ``ideal_speedup_blocks`` counts the decoder blocks' matrices only,
``ideal_speedup_matmul`` adds the output projection (lm_head), which no cut here shrinks.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from q_cpu import CALIB, EVAL_SEQLEN, EVAL_WINDOWS, MODEL, THREADS, WIKITEXT, WORK  # noqa: E402
from structured import CONFIGURATIONS, matmul_parameters, unique_parameters  # noqa: E402

OUT = WORK / "cuts"
# cut -> (the folder it is pruned from, the recipe); dense is the float32 model itself
CUTS: dict[str, tuple[str | None, dict | None]] = {
    "dense": (None, None),
    "depth-6-distill": ("dense", CONFIGURATIONS["depth-6-distill"]),
    "mlp-25": ("dense", CONFIGURATIONS["mlp-25"]),
    "depth-6-distill+mlp-25": ("depth-6-distill", CONFIGURATIONS["mlp-25"]),
}
OUTTYPES = ("f32", "f16", "q8_0")
PROMPT_TOKENS, NEW_TOKENS, REPEATS = 512, 128, 3  # llama.cpp: a 512-token prompt, then 128 tokens at batch 1


def folder(cut: str) -> Path:
    return MODEL if cut == "dense" else OUT / cut


def gguf_file(cut: str, outtype: str) -> Path:
    return OUT / f"{cut}.{outtype}.gguf"


def parameters(model) -> dict:  # noqa: ANN001
    """Every parameter once (tied embeddings once), and the matrices a decode step multiplies: the blocks', and
    with lm_head."""
    return {
        "parameters": unique_parameters(model),
        "block_matmul": matmul_parameters(model.get_decoder().layers),
        "matmul": matmul_parameters(model),
    }


def _spec(cut: str) -> dict:
    source, recipe = CUTS[cut]
    return {"source": str(folder(source)) if source else None, "recipe": recipe, "calibration": CALIB.name}


def _build(cut: str) -> dict:
    """Prune one cut from its source folder and save it; its ``cut.json`` is written last (a folder without one
    is rebuilt)."""
    from safetensors.torch import load_file

    from secateurs import load, load_recipe, prune, save

    source, recipe = CUTS[cut]
    model, tokenizer = load(folder(source), "float32")
    report = prune(model, load_recipe(recipe), load_file(str(CALIB))["input_ids"], device="cpu", progress=False)
    report.model, report.dtype = str(folder(source)), "float32"
    save(model, tokenizer, folder(cut), report, overwrite=True)
    facts = {**_spec(cut), "prune_s": report.prune_seconds}
    (folder(cut) / "cut.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def _current(cut: str) -> dict | None:
    marker = folder(cut) / "cut.json"
    if not marker.exists():
        return None
    facts = json.loads(marker.read_text())
    return facts if {key: facts.get(key) for key in _spec(cut)} == json.loads(json.dumps(_spec(cut))) else None


def prepare(gguf: bool = True) -> dict:
    """Every cut's folder (built, or reused when its recipe, source and calibration are the ones wanted) and
    (``gguf``) its GGUF files; returns what each row's ratios need: parameter counts and how each cut was made."""
    import torch
    from q_cpu import folder_sha256

    from secateurs import load
    from secateurs.pipeline.export import ExportJob, run_export

    torch.set_num_threads(THREADS)
    OUT.mkdir(parents=True, exist_ok=True)
    prepared: dict = {}
    rebuilt: set[str] = set()
    for cut in CUTS:
        built = None
        if cut != "dense":
            # a cut made from a folder rebuilt just now is rebuilt too
            built = None if CUTS[cut][0] in rebuilt else _current(cut)
            reused = built is not None
            if not reused:
                built = _build(cut)
                rebuilt.add(cut)
            built["reused"] = reused
        model, _ = load(folder(cut), "float32")
        prepared[cut] = {**parameters(model), "made": built, "weights_sha256": folder_sha256(folder(cut))}
        for outtype in OUTTYPES if gguf else ():
            record = run_export(
                ExportJob(model=folder(cut), out=gguf_file(cut, outtype), outtype=outtype, overwrite=True)
            )
            check = record.llama_cpp
            prepared[cut][outtype] = {"file_bytes": record.bytes, "llama_cpp_matches": check and check.matches}
    return prepared


def _prompt_ids() -> list[int]:
    """The first PROMPT_TOKENS tokens of WikiText-2's test text (real text: the prompt's content does not change
    the work per token, but a real prompt is what users time)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    return tokenizer(WIKITEXT.read_text()[:20000], add_special_tokens=False)["input_ids"][:PROMPT_TOKENS]


def _llama_timings(path: Path) -> dict[str, list[float]]:
    """Seconds of the prompt's evaluation and of NEW_TOKENS greedy decode steps, REPEATS times after a warm-up,
    in llama.cpp with THREADS threads and its default (float16) KV cache, as a user runs it: measured around
    llama-cpp-python's generate loop (``wall``), and by llama.cpp's own counters (``engine``: its evaluation
    only, as llama-bench reports it, without the sampling and Python between tokens)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=PROMPT_TOKENS + NEW_TOKENS + 8,
        n_batch=PROMPT_TOKENS,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        seed=0,
        verbose=False,
    )
    prompt = _prompt_ids()
    timings: dict[str, list[float]] = {"wall_prompt": [], "wall_decode": [], "engine_prompt": [], "engine_decode": []}
    for repeat in range(REPEATS + 1):  # the first is the warm-up
        llm.reset()  # else generate() reuses the cached prompt instead of evaluating it again
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        start = time.perf_counter()
        steps = llm.generate(prompt, temp=0.0, top_k=1, reset=True)
        next(steps)  # the prompt evaluated and its next token sampled
        after_prompt = time.perf_counter()
        for _ in range(NEW_TOKENS):  # each step evaluates the token before it, then samples
            next(steps)
        end = time.perf_counter()
        steps.close()
        counters = llama_cpp.llama_perf_context(llm._ctx.ctx)
        if repeat:
            timings["wall_prompt"].append(after_prompt - start)
            timings["wall_decode"].append(end - after_prompt)
            timings["engine_prompt"].append(counters.t_p_eval_ms / 1000 * PROMPT_TOKENS / counters.n_p_eval)
            timings["engine_decode"].append(counters.t_eval_ms / 1000 * NEW_TOKENS / counters.n_eval)
    llm.close()
    return timings


def run_gguf(name: str) -> dict:
    """One round of one GGUF file (``cut@outtype``) in llama.cpp."""
    import llama_cpp

    from secateurs.engine.resume import file_sha256
    from secateurs.report import versions

    cut, outtype = name.split("@")
    path = gguf_file(cut, outtype)
    timings = _llama_timings(path)
    result = {
        "name": name,
        "tool": "llama.cpp",
        "cut": cut,
        "outtype": outtype,
        "file_bytes": path.stat().st_size,
        "weights_sha256": file_sha256(path),
        # llama.cpp's own counters (the targets' figures), and the same around the Python loop
        "prompt_tokens_per_s": PROMPT_TOKENS / statistics.median(timings["engine_prompt"]),
        "decode_tokens_per_s": NEW_TOKENS / statistics.median(timings["engine_decode"]),
        "wall_prompt_tokens_per_s": PROMPT_TOKENS / statistics.median(timings["wall_prompt"]),
        "wall_decode_tokens_per_s": NEW_TOKENS / statistics.median(timings["wall_decode"]),
        "versions": {**versions(), "llama_cpp_python": llama_cpp.__version__},
    }
    return result


def run_ppl(name: str) -> dict:
    """The WikiText-2 perplexity of one GGUF file (``cut@outtype``) read back by secateurs' loader."""
    from secateurs.engine.resume import file_sha256

    path = gguf_file(*name.split("@"))
    return {"ppl": _perplexity(path), "weights_sha256": file_sha256(path)}


def _perplexity(source: Path) -> float:
    import torch

    from secateurs import evaluation_ids, load
    from secateurs.evaluate import perplexity

    torch.set_num_threads(THREADS)
    model, tokenizer = load(source, "float32")
    ids = evaluation_ids(WIKITEXT, tokenizer, EVAL_SEQLEN)
    return perplexity(model, ids, EVAL_SEQLEN, EVAL_WINDOWS, device="cpu", progress=False)


def run_torch(cut: str) -> dict:
    """One round of one folder under protocol S (float32, PyTorch on the CPU, no Linear microbenchmark)."""
    import torch
    from q_cpu import folder_sha256

    from secateurs.bench.settings import SpeedSettings
    from secateurs.bench.speed import run_speed
    from secateurs.report import versions

    torch.set_num_threads(THREADS)
    row = run_speed([folder(cut)], "cpu", "float32", SpeedSettings(micro=False))["models"][0]
    return {
        "name": cut,
        "tool": "secateurs",
        "cut": cut,
        "weights_sha256": folder_sha256(folder(cut)),
        "prefill_tokens_per_s": row["prefill_tokens_per_s"],
        "decode_tokens_per_s": row["decode_tokens_per_s"],
        "peak_memory_mib": row["peak_memory_mib"],
        "versions": versions(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", required=True, choices=("prepare", "gguf", "ppl", "torch"))
    parser.add_argument("--arg", help="the configuration (gguf and ppl: cut@outtype; torch: cut)")
    parser.add_argument("--no-gguf", action="store_true", help="prepare: the folders only")
    args = parser.parse_args()
    if args.step == "prepare":
        print(json.dumps(prepare(gguf=not args.no_gguf)))
    elif args.step == "gguf":
        print(json.dumps(run_gguf(args.arg)))
    elif args.step == "ppl":
        print(json.dumps(run_ppl(args.arg)))
    else:
        print(json.dumps(run_torch(args.arg)))


if __name__ == "__main__":
    main()
