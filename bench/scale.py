"""Scale benchmark: a model larger than we want in memory, pruned block by block from disk; and calibration
spread over two processes.

    python bench/scale.py                  # both parts, writes bench/results/scale.json
    python bench/scale.py --only offload   # or: distributed

offload: a random-initialized Llama-architecture model of about 1.54 B parameters in float32 (about 6.2 GB on disk),
built once in bench/work/llama-1.5b-random/. Wanda 50 % (16 calibration windows of 256 builtin tokens) runs twice,
each in a fresh process: in memory, and with --offload disk. Reported: peak RSS (ru_maxrss of the pruning
process, target at most 0.3x the model's size with offload), prune wall time (target at most 1.3x in memory), and
whether both outputs hold the same weights.

distributed: Wanda 50 % on SmolLM2 with protocol Q-CPU's calibration (128 x 512 C4 windows, bench/q_cpu.py
prepares them), in one process and in two (gloo, one thread each), with the wall times and the fraction of
identical mask entries.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import write_results  # noqa: E402
from q_cpu import C4, MODEL, WORK  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "scale.json"
BIG = WORK / "llama-1.5b-random"
BIG_CONFIG = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=20,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=49152,  # SmolLM2's tokenizer, which the bench saves with it: every token id needs an embedding row
    max_position_embeddings=2048,
)


def build_big() -> dict:
    """The random model, saved in 2 GB shards, with SmolLM2's tokenizer (its vocabulary is the model's)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if BIG.exists():
        built = json.loads((BIG / "config.json").read_text())
        if all(built.get(key) == value for key, value in BIG_CONFIG.items()):
            return {}
        shutil.rmtree(BIG)  # built by an earlier version of this script with another shape
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**BIG_CONFIG, tie_word_embeddings=False))
    partial = BIG.with_name(BIG.name + ".partial")  # renamed when complete: an interrupted build is redone
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, max_shard_size="2GB")
    AutoTokenizer.from_pretrained(MODEL).save_pretrained(partial)
    partial.rename(BIG)
    return {}


def _secateurs(*args: str) -> tuple[float, int]:
    """Run ``secateurs prune`` in a fresh process; returns (wall seconds, exit code)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "secateurs", "prune", *args], stdout=subprocess.PIPE, text=True)
    return time.perf_counter() - start, done.returncode


def _report(folder: Path) -> dict:
    return json.loads((folder / "secateurs.json").read_text())


def _same_weights(a: Path, b: Path) -> float:
    """The fraction of identical tensors (by name) of two sharded checkpoints."""
    from safetensors import safe_open

    def tensors(folder: Path) -> dict:
        found = {}
        for file in folder.glob("*.safetensors"):
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118
                    found[name] = (file, name)
        return found

    left, right = tensors(a), tensors(b)
    same = 0
    for name, (file, key) in left.items():
        with safe_open(str(file), framework="pt") as x, safe_open(str(right[name][0]), framework="pt") as y:
            same += bool((x.get_tensor(key) == y.get_tensor(name)).all())
    return same / max(len(left), 1)


def offload() -> dict:
    subprocess.run([sys.executable, __file__, "--step", "build"], check=True)
    size = sum(p.stat().st_size for p in BIG.glob("*.safetensors"))
    common = ["--method", "wanda", "--calib", "builtin", "--nsamples", "16", "--seqlen", "256", "--quiet"]
    common += ["--device", "cpu", "--threads", "2", "--overwrite"]
    result: dict = {"model_bytes": size, "model": BIG_CONFIG}
    for mode in ("none", "disk"):
        out = WORK / f"scale-offload-{mode}"
        seconds, code = _secateurs(str(BIG), "--out", str(out), "--offload", mode, *common)
        if code != 0:
            result[mode] = {"error": f"exit {code}"}
            continue
        report = _report(out)
        result[mode] = {
            "wall_s": round(seconds, 1),
            "prune_s": report["prune_seconds"],
            "peak_rss_mib": report["peak_rss_mib_after_prune"],
            "walk_seconds": report.get("walk", {}).get("seconds"),
        }
    if "prune_s" in result.get("none", {}) and "prune_s" in result.get("disk", {}):
        result["peak_rss_over_model_size"] = result["disk"]["peak_rss_mib"] * 2**20 / size
        result["time_offload_over_memory"] = result["disk"]["prune_s"] / result["none"]["prune_s"]
        result["identical_tensors"] = _same_weights(WORK / "scale-offload-none", WORK / "scale-offload-disk")
    return result


def distributed() -> dict:
    # the C4 slice, 128 x 512, seed 0: protocol Q-CPU's calibration windows
    common = ["--method", "wanda", "--calib", str(C4), "--nsamples", "128", "--seqlen", "512", "--seed", "0"]
    common += ["--quiet", "--device", "cpu", "--overwrite"]
    result: dict = {}
    for workers in (1, 2):
        out = WORK / f"scale-workers-{workers}"
        threads = ["--threads", "2"] if workers == 1 else []
        seconds, code = _secateurs(str(MODEL), "--out", str(out), "--workers", str(workers), *threads, *common)
        result[f"workers_{workers}"] = {"wall_s": round(seconds, 1), "exit": code}
        if code == 0:
            report = _report(out)
            result[f"workers_{workers}"].update(
                prune_s=report["prune_seconds"], peak_rss_mib_per_rank=report.get("peak_rss_mib_per_rank")
            )
    if all(result[f"workers_{w}"]["exit"] == 0 for w in (1, 2)):
        result["identical_mask_fraction"] = _mask_agreement(WORK / "scale-workers-1", WORK / "scale-workers-2")
    return result


def _mask_agreement(a: Path, b: Path) -> float:
    from transformers import AutoModelForCausalLM

    x = AutoModelForCausalLM.from_pretrained(a).state_dict()
    y = AutoModelForCausalLM.from_pretrained(b).state_dict()
    same = sum(int(((x[k] == 0) == (y[k] == 0)).sum()) for k in x)
    return same / sum(x[k].numel() for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=["offload", "distributed"])
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "build":
        build_big()
        return
    if not (MODEL / "config.json").exists():
        sys.exit("run python bench/q_cpu.py --only dense first: it prepares SmolLM2 in float32")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for part in args.only or ["offload", "distributed"]:
        print(f"[scale] {part} ...", file=sys.stderr, flush=True)
        results[part] = {"offload": offload, "distributed": distributed}[part]()
        print(f"[scale] {part}: {json.dumps(results[part])}", file=sys.stderr, flush=True)
        _write(results)


def _write(results: dict) -> None:
    write_results(RESULTS, results, protocol="scale (see bench/scale.py)")


if __name__ == "__main__":
    main()
