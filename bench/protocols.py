"""The protocols bench/run.py runs: for each, its configurations, the targets comparing them, and how one
configuration is measured once (in a fresh process, so its peak RSS is its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from verdict import Target

HERE = Path(__file__).resolve().parent


def _child(script: str, *args: str) -> dict:
    """Run a bench script's step in a fresh process; it prints one JSON line last."""
    done = subprocess.run([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


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

    targets = _q_cpu_targets()

    def __init__(self) -> None:
        sys.path.insert(0, str(HERE))
        import q_cpu

        self.q_cpu = q_cpu
        self.facts = q_cpu.facts()

    def known(self) -> set[str]:
        return {*self.q_cpu.SECATEURS, *self.q_cpu.PEER, *(f"floor-batch{b}" for b in self.q_cpu.FLOOR_BATCHES)}

    def selection(self, only: list[str] | None) -> list[str]:
        """The configurations asked for (every target's row when none is), then what their targets compare with."""
        wanted = list(only or dict.fromkeys(target.row for target in self.targets))
        unknown = [name for name in wanted if name not in self.known()]
        if unknown:
            sys.exit(f"unknown configuration {', '.join(unknown)}: see python bench/run.py q-cpu --list")
        for target in self.targets:
            if target.row in wanted and target.other not in wanted:
                wanted.append(target.other)
        return wanted

    def prepare(self) -> None:
        _child("q_cpu.py", "--step", "prepare")

    def measure(self, name: str, evaluate: bool) -> dict:
        flags = [] if evaluate else ["--no-eval"]
        if name.startswith("floor-batch"):
            return _child("q_cpu.py", "--step", "floor", "--arg", name.removeprefix("floor-batch"))
        if name in self.q_cpu.PEER:
            return self.q_cpu.run_peer(name, evaluate)
        return _child("q_cpu.py", "--step", "secateurs", "--arg", name, *flags)


PROTOCOLS = {"q-cpu": QCpu}
