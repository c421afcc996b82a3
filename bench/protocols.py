"""The protocols bench/run.py runs: for each, its configurations, the targets comparing them, and how one
configuration is measured once (in a fresh process, so its peak RSS is its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

from verdict import Target

HERE = Path(__file__).resolve().parent


def _child(script: str, *args: str) -> dict:
    """Run a bench script's step in a fresh process; it prints one JSON line last."""
    done = subprocess.run([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def select(only: list[str] | None, default: list[str], known: Collection[str], pairs: list, hint: str) -> list[str]:
    """The configurations asked for (``default`` when none is; an unknown one ends the run with ``hint``), then
    the other side of every (row, other) pair whose row is wanted: what its target compares it with."""
    wanted = list(only or default)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        sys.exit(f"unknown configuration {', '.join(unknown)}: {hint}")
    for row, other in pairs:
        if row in wanted and other not in wanted:
            wanted.append(other)
    return wanted


def _pairs(targets: list[Target]) -> list[tuple[str, str]]:
    return [(target.row, target.other) for target in targets]


def _q_cpu_targets() -> list[Target]:
    """Protocol Q-CPU's targets of record, against llmcompressor in the same run."""
    peer = "llmcompressor-wanda-50"
    targets = [
        Target("Wanda 50% perplexity / llmcompressor's", "wanda-50", "ppl", peer, 1.00),
        Target("Wanda 50% prune time / llmcompressor's", "wanda-50", "prune_s", peer, 0.80),
        Target("Wanda 50% peak RSS / llmcompressor's", "wanda-50", "peak_rss_mib", peer, 0.75),
        Target("Wanda 50% --offload disk peak RSS / llmcompressor's", "wanda-50-offload", "peak_rss_mib", peer, 0.45),
        Target(
            "Wanda 50% prune time / the floor (its passes at its batch size)",
            "wanda-50",
            "prune_s",
            "floor-batch4",
            1.15,
            other_figure="one_pass_s",
            passes=True,
        ),
    ]
    for label, suffix in (("50%", "50"), ("2:4", "2:4"), ("4:8", "4:8")):
        ours, theirs = f"sparsegpt-{suffix}", f"llmcompressor-sparsegpt-{suffix}"
        chunked = f"{ours}-no-true-sequential"
        targets += [
            Target(f"SparseGPT {label} perplexity / llmcompressor's", ours, "ppl", theirs, 1.00),
            Target(f"SparseGPT {label} prune time / llmcompressor's", ours, "prune_s", theirs, 0.50),
            Target(
                f"SparseGPT {label} --no-true-sequential peak RSS / llmcompressor's",
                chunked,
                "peak_rss_mib",
                theirs,
                0.75,
            ),
        ]
    return targets


class QCpu:
    """Protocol Q-CPU (docs/benchmarks.md): SmolLM2-135M on 2 threads, C4 calibration 128 x 512, WikiText-2."""

    name = "q-cpu"
    targets = _q_cpu_targets()
    trained: list[tuple[str, str]] = []  # (a row with training, the one-shot row it starts from)

    def __init__(self) -> None:
        sys.path.insert(0, str(HERE))
        import q_cpu

        self.q_cpu = q_cpu
        self.facts = q_cpu.facts()

    def known(self) -> set[str]:
        return {*self.q_cpu.SECATEURS, *self.q_cpu.PEER, *(f"floor-batch{b}" for b in self.q_cpu.FLOOR_BATCHES)}

    def selection(self, only: list[str] | None) -> list[str]:
        """The configurations asked for (every target's row when none is), then what their targets compare with
        and the one-shot starts of training rows."""
        rows = list(dict.fromkeys(target.row for target in self.targets))
        hint = f"see python bench/run.py {self.name} --list"
        return select(only, rows, self.known(), _pairs(self.targets) + self.trained, hint)

    def prepare(self) -> None:
        _child("q_cpu.py", "--step", "prepare")

    def measure(self, name: str, evaluate: bool) -> dict:
        flags = [] if evaluate else ["--no-eval"]
        if name.startswith("floor-batch"):
            return _child("q_cpu.py", "--step", "floor", "--arg", name.removeprefix("floor-batch"))
        if name in self.q_cpu.PEER:
            return self.q_cpu.run_peer(name, evaluate)
        return _child("q_cpu.py", "--step", "secateurs", "--arg", name, *flags)


# a one-shot recipe's level -> (secateurs' SparseGPT there, llmcompressor's, the perplexity ratio to reach)
LEVELS = {
    "50": ("sparsegpt-50", "llmcompressor-sparsegpt-50", 0.80),
    "2:4": ("sparsegpt-2:4", "llmcompressor-sparsegpt-2:4", 0.80),
    "70": ("sparsegpt-70", "llmcompressor-sparsegpt-70", 0.60),
}


# a recipe with block tuning is held to the "best" budget: 4x SparseGPT's time, and this perplexity ratio
BEST_LIMITS = {"50": 0.72, "2:4": 0.72}


def _recipe_targets(recipes: dict) -> list[Target]:
    """Each recipe (named method-level[-more]) against llmcompressor's SparseGPT at its level (perplexity) and
    secateurs' own SparseGPT there (prune time: the "balanced" budget is 2x, the "best" 4x)."""
    targets = []
    for name, recipe in recipes.items():
        level = name.split("-")[1]
        ours, peer, limit = LEVELS[level]
        budget = 2.0
        if recipe.get("ebft"):
            limit, budget = BEST_LIMITS[level], 4.0
        targets += [
            Target(f"{name} perplexity / llmcompressor SparseGPT's", name, "ppl", peer, limit),
            # the gain must hold beyond WikiText-2: on held-out C4, the same ratio within 0.05
            Target(f"{name} held-out C4 ppl / llmcompressor SparseGPT's", name, "ppl_c4", peer, round(limit + 0.05, 2)),
            Target(f"{name} prune time / secateurs SparseGPT's", name, "prune_s", ours, budget),
        ]
    return targets


class Recipes(QCpu):
    """Protocol Q-CPU for the one-shot recipes beyond SparseGPT (bench/q_cpu.py's RECIPES), each with
    secateurs' and llmcompressor's SparseGPT at its sparsity in the same run."""

    name = "recipes"

    def __init__(self) -> None:
        super().__init__()
        self.targets = _recipe_targets(self.q_cpu.RECIPES)
        # a recipe with block tuning is also shown against the one-shot recipe it starts from (its gain, its cost)
        self.trained = [(name, name.split("-ebft")[0]) for name in self.q_cpu.RECIPES if "-ebft" in name]
        # the peer's perplexity is all these targets read (time is judged against secateurs' SparseGPT): one
        # measurement, in the first round, instead of three rounds of its 8-minute prune
        self.once = set(self.q_cpu.PEER)


class Structured:
    """Structured cuts under protocol Q-CPU (quality; bench/structured.py): each configuration pruned in a fresh
    process from the float32 model with the 128 x 512 calibration windows, perplexity in the first round."""

    def __init__(self) -> None:
        sys.path.insert(0, str(HERE))
        import q_cpu
        import structured

        self.structured = structured
        self.trained = structured.TRAINED_PAIRS
        self.targets = [
            Target(f"{refit} perplexity / {plain}'s", refit, "ppl", plain, 0.80)
            for refit, plain in structured.ONE_SHOT_PAIRS
        ]
        self.facts = {
            **q_cpu.facts(),
            "calibration": f"C4 slice, {q_cpu.NSAMPLES} x {q_cpu.SEQLEN}, seed 0 (depth search: the first "
            f"{structured.DEPTH_WINDOWS} windows)",
        }

    def known(self) -> list[str]:
        return ["dense", *self.structured.CONFIGURATIONS]

    def selection(self, only: list[str] | None) -> list[str]:
        """The configurations asked for, what their targets compare with, the one-shot starts of training rows,
        and dense (every perplexity's reference)."""
        known, hint = self.known(), "see python bench/run.py structured --list"
        wanted = select(only, known, known, _pairs(self.targets) + self.trained, hint)
        return list(dict.fromkeys(["dense", *wanted]))

    def prepare(self) -> None:
        _child("q_cpu.py", "--step", "prepare")

    def measure(self, name: str, evaluate: bool) -> dict:
        flags = [] if evaluate else ["--no-eval"]
        return _child("structured.py", "--step", "quality", "--arg", json.dumps(name), *flags)


class Cuts:
    """What protocols S and GGUF share: the structured cuts (bench/cuts.py), prepared once per run, and each
    row's parameter ratios to dense, which the targets' ideal gains are."""

    cuts = ("dense", "depth-6-distill", "mlp-25", "depth-6-distill+mlp-25")
    gguf = False

    def __init__(self) -> None:
        sys.path.insert(0, str(HERE))
        import cuts
        import q_cpu

        self.cuts_module = cuts
        self.facts = {
            "model": q_cpu.GGUF.name,
            "cuts": {cut: cuts.CUTS[cut][1] for cut in self.cuts},
            "calibration": f"C4 slice, {q_cpu.NSAMPLES} x {q_cpu.SEQLEN}, seed 0 (the cuts' pruning)",
            "threads": q_cpu.THREADS,
            "settings": self.settings,
        }
        self.prepared: dict = {}

    def selection(self, only: list[str] | None) -> list[str]:
        """The configurations asked for, each with its dense reference (the one of the same format)."""
        known = self.known()
        return select(only, known, known, _pairs(self.targets), f"one of {', '.join(known)}")

    def prepare(self) -> None:
        _child("q_cpu.py", "--step", "prepare")
        self.prepared = _child("cuts.py", "--step", "prepare", *([] if self.gguf else ["--no-gguf"]))
        self.facts["prepared"] = self.prepared

    def ratios(self, cut: str) -> dict:
        """The cut's parameters against dense's: all of them, and the matrices a decode step multiplies."""
        mine, dense = self.prepared[cut], self.prepared["dense"]
        return {
            "parameter_ratio": mine["parameters"] / dense["parameters"],
            "ideal_speedup_blocks": dense["block_matmul"] / mine["block_matmul"],
            "ideal_speedup_matmul": dense["matmul"] / mine["matmul"],
        }


class S(Cuts):
    """Protocol S on the structured cuts: PyTorch float32 on the CPU, prefill 8 x 512, decode 128 tokens at
    batch 1 (median of 5 after a warm-up, in each round's fresh process)."""

    figures = ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mib")
    settings = "float32, prefill 8 x 512, decode 128 tokens at batch 1, median of 5 after a warm-up"
    targets = [
        Target(
            f"{cut}: decode speedup's share of its ideal gain (matrices, lm_head included)",
            cut,
            "decode_tokens_per_s",
            "dense",
            0.80,
            bound="at least",
            ideal="ideal_speedup_matmul",
        )
        for cut in Cuts.cuts[1:]
    ]

    def known(self) -> list[str]:
        return list(self.cuts)

    def measure(self, name: str, evaluate: bool) -> dict:
        return {**_child("cuts.py", "--step", "torch", "--arg", name), **self.ratios(name)}


def _gguf_targets() -> list[Target]:
    targets = []
    for outtype in ("f32", "f16", "q8_0"):
        dense = f"dense@{outtype}"
        for cut in Cuts.cuts[1:]:
            name = f"{cut}@{outtype}"
            targets += [
                Target(
                    f"{name}: decode speedup's share of its ideal gain (the blocks' parameters)",
                    name,
                    "decode_tokens_per_s",
                    dense,
                    0.80,
                    bound="at least",
                    ideal="ideal_speedup_blocks",
                ),
                Target(
                    f"{name}: file size ratio over parameter ratio",
                    name,
                    "file_bytes",
                    dense,
                    0.02,
                    bound="within",
                    per="parameter_ratio",
                ),
            ]
    return targets


class Gguf(Cuts):
    """Protocol GGUF: the cuts written as GGUF (f32, f16, q8_0) and run in llama.cpp (llama-cpp-python) with 2
    threads: a 512-token prompt, then 128 tokens decoded at batch 1 (median of 3 after a warm-up, in each
    round's fresh process); WikiText-2 perplexity of each file read back by secateurs' loader and evaluator."""

    gguf = True
    figures = ("prompt_tokens_per_s", "decode_tokens_per_s", "wall_decode_tokens_per_s", "file_bytes")
    settings = (
        "llama.cpp (llama-cpp-python), float16 KV cache, a 512-token WikiText-2 prompt then 128 tokens at batch 1, "
        "median of 3 after a warm-up, timed by llama.cpp's own counters (its evaluation only, as llama-bench) and "
        "around the Python loop (wall); perplexity: WikiText-2 test, first 32 windows of 2048, file read back"
    )
    targets = _gguf_targets()

    def known(self) -> list[str]:
        return [f"{cut}@{outtype}" for outtype in ("f32", "f16", "q8_0") for cut in self.cuts]

    def measure(self, name: str, evaluate: bool) -> dict:
        return {**_child("cuts.py", "--step", "gguf", "--arg", name), **self.ratios(name.split("@")[0])}

    def quality(self, name: str) -> dict:
        """The file's perplexity, after the rounds (minutes each: kept out of them)."""
        return _child("cuts.py", "--step", "ppl", "--arg", name)


PROTOCOLS = {"q-cpu": QCpu, "recipes": Recipes, "structured": Structured, "s": S, "gguf": Gguf}
