"""Bit-for-bit check of pruned weights across a refactor: run a fixed set of ``secateurs prune`` commands (every
method and pattern, the allocations, DSnoT, EBFT, distillation, width, depth, packed and offloaded output, on tiny
models built here, and Wanda 50% and SparseGPT 2:4 on ../shared's SmolLM2 with 32 x 256 calibration tokens), and
record or compare the SHA-256 of every saved weight tensor.

    python bench/golden.py --write bench/results/golden_hashes.json   # before a change
    python bench/golden.py --check bench/results/golden_hashes.json   # after it: every hash must match

Hashes are of the tensors (name, dtype, shape, bytes), not of the files, so a change of a file's metadata
header does not count; they hold for one machine, torch build and thread count (float sums differ elsewhere).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SECATEURS_SHARED", ROOT.parent / "shared")).resolve()
SMOLLM2 = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
C4 = SHARED / "data" / "c4" / "c4-train.00000-of-01024.head1000.jsonl"

SETTINGS = {"TINY": "--calib builtin --nsamples 8 --seqlen 32", "SMOL": f"--calib {C4} --nsamples 32 --seqlen 256"}

# name -> (model, the arguments after it; TINY and SMOL stand for the calibration settings above)
CASES: dict[str, tuple[str, str]] = {
    "magnitude-50": ("llama", "--method magnitude --sparsity 0.5"),
    "magnitude-2:4": ("llama", "--method magnitude --pattern 2:4"),
    "wanda-50": ("llama", "--method wanda --sparsity 0.5 TINY"),
    "wanda-2:4": ("llama", "--method wanda --pattern 2:4 TINY"),
    "wanda-4:8": ("llama", "--method wanda --pattern 4:8 TINY"),
    "wanda-variant": ("llama", "--method wanda --sparsity 0.5 --variant TINY"),
    "wanda-true-sequential": ("llama", "--method wanda --sparsity 0.5 --true-sequential TINY"),
    "wanda-batch-2": ("llama", "--method wanda --sparsity 0.6 --batch-size 2 TINY"),
    "ria-50": ("llama", "--method ria --sparsity 0.5 TINY"),
    "ria-2:4-alpha": ("llama", "--method ria --pattern 2:4 --ria-alpha 0.7 TINY"),
    "sparsegpt-50": ("llama", "--method sparsegpt --sparsity 0.5 TINY"),
    "sparsegpt-2:4": ("llama", "--method sparsegpt --pattern 2:4 TINY"),
    "sparsegpt-4:8-two-pass": ("llama", "--method sparsegpt --pattern 4:8 --no-true-sequential TINY"),
    "sparsegpt-60-block32": ("llama", "--method sparsegpt --sparsity 0.6 --blocksize 32 --dampening 0.05 TINY"),
    "sparsegpt-hessians-on-cpu": ("llama", "--method sparsegpt --sparsity 0.5 --hessians-on-cpu TINY"),
    "wanda-obs-seq": ("llama", "--method wanda --sparsity 0.5 --update obs-seq TINY"),
    "magnitude-obs-iter": ("llama", "--method magnitude --pattern 2:4 --update obs-iter TINY"),
    "wanda-owl-70": ("llama", "--method wanda --sparsity 0.7 --allocation owl TINY"),
    "sparsegpt-owl-60": ("llama", "--method sparsegpt --sparsity 0.6 --allocation owl --owl-m 3 --owl-lambda 0.1 TINY"),
    "wanda-schedule": ("llama", "--method wanda --allocation schedule --schedule 0.3:0.7 TINY"),
    "wanda-rules-file": ("llama", "--method wanda --sparsity 0.5 --allocation @RULES TINY"),
    "wanda-2:4-owl-mixed": ("llama", "--method wanda --pattern 2:4 --allocation owl --nm-allocation mixed TINY"),
    "wanda-dsnot": ("llama", "--method wanda --sparsity 0.6 --refine dsnot TINY"),
    "ria-dsnot-2:4-all": (
        "llama",
        "--method ria --pattern 2:4 --refine dsnot --refine-skip none --refine-threshold 0.01 TINY",
    ),
    "sparsegpt-ebft": ("llama", "--method sparsegpt --sparsity 0.5 --ebft-epochs 2 TINY"),
    "wanda-ebft-model": (
        "llama",
        "--method wanda --pattern 2:4 --ebft-epochs 2 --ebft-target model --ebft-lr 3e-4 TINY",
    ),
    "magnitude-ebft": ("llama", "--method magnitude --sparsity 0.5 --ebft-epochs 1 TINY"),
    "wanda-distill": ("llama", "--method wanda --sparsity 0.5 --distill-epochs 1 TINY"),
    "sparsegpt-ebft-distill": (
        "llama",
        "--method sparsegpt --sparsity 0.5 --ebft-epochs 1 --distill-epochs 1 --distill-lr 3e-4 TINY",
    ),
    "width-mlp": ("llama", "--method width --ratio 0.25 --multiple 8 TINY"),
    "width-mlp-wanda-plain": ("llama", "--method width --ratio 0.5 --multiple 8 --score wanda --no-reconstruct TINY"),
    "width-mlp-obs": ("llama", "--method width --ratio 0.25 --multiple 8 --score obs TINY"),
    "width-heads": ("llama", "--method width --target heads --ratio 0.5 TINY"),
    "width-heads-kv-groups-obs": (
        "llama",
        "--method width --target heads --ratio 0.5 --head-grouping kv-groups --score obs TINY",
    ),
    "width-mlp-ebft-distill": (
        "llama",
        "--method width --ratio 0.25 --multiple 8 --ebft-epochs 1 --ebft-target model --distill-epochs 1 TINY",
    ),
    "depth-perplexity": ("llama", "--method depth --remove 1 TINY"),
    "depth-search-windows-distill": ("llama", "--method depth --remove 2 --search-windows 2 --distill-epochs 1 TINY"),
    "depth-block-influence": ("llama", "--method depth --ratio 0.25 --score block-influence TINY"),
    "wanda-2:4-packed": ("llama", "--method wanda --pattern 2:4 --format packed TINY"),
    "wanda-50-packed": ("llama", "--method wanda --sparsity 0.5 --format packed TINY"),
    "wanda-offload-disk": ("llama", "--method wanda --sparsity 0.5 --offload disk TINY"),
    "sparsegpt-offload-disk": ("llama", "--method sparsegpt --pattern 2:4 --offload disk TINY"),
    "magnitude-offload-disk": ("llama", "--method magnitude --sparsity 0.5 --offload disk"),
    "bf16-sparsegpt": ("llama", "--method sparsegpt --sparsity 0.5 --dtype bfloat16 TINY"),
    "mixtral-wanda": ("mixtral", "--method wanda --sparsity 0.5 TINY"),
    "mixtral-sparsegpt": ("mixtral", "--method sparsegpt --sparsity 0.5 TINY"),
    "gpt2-sparsegpt-2:4": ("gpt2", "--method sparsegpt --pattern 2:4 TINY"),
    "gpt2-width-mlp": ("gpt2", "--method width --ratio 0.25 --multiple 8 TINY"),
    "smollm2-wanda-50": ("smollm2", "--method wanda --sparsity 0.5 SMOL"),
    "smollm2-sparsegpt-2:4": ("smollm2", "--method sparsegpt --pattern 2:4 SMOL"),
}


def build_tiny_models(folder: Path) -> dict[str, Path]:
    """Tiny random checkpoints (seeded) sharing one byte-level BPE tokenizer trained on the builtin text."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from secateurs.data import builtin_text

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<pad>", "<s>", "</s>"]
    )
    tokenizer.train_from_iterator([builtin_text()[:200_000]], trainer)
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    common = dict(vocab_size=len(fast), pad_token_id=0, bos_token_id=1, eos_token_id=2)
    configs = {
        "llama": T.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            **common,
        ),
        "mixtral": T.MixtralConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            max_position_embeddings=256,
            **common,
        ),
        "gpt2": T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common),
    }
    paths = {}
    for name, config in configs.items():
        path = folder / name
        torch.manual_seed(0)
        T.AutoModelForCausalLM.from_config(config).save_pretrained(path)
        fast.save_pretrained(path)
        paths[name] = path
    rules = folder / "rules.yaml"
    rules.write_text('"*.down_proj": 0.3\n"*.layers.0.*": 0.4\n"*.q_proj": 0.7\n')
    paths["@RULES"] = rules
    paths["smollm2"] = SMOLLM2
    return paths


def tensor_digest(folder: Path) -> str:
    """SHA-256 over every tensor of every safetensors file of ``folder``, by name."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                tensors[name] = handle.get_tensor(name)
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_case(name: str, paths: dict[str, Path], work: Path) -> str:
    model, text = CASES[name]
    arguments = [str(paths[a]) if a in paths else a for word in text.split() for a in SETTINGS.get(word, word).split()]
    out = work / name.replace(":", "-")
    command = [sys.executable, "-m", "secateurs", "prune", str(paths[model]), *arguments, "--out", str(out)]
    command += ["--device", "cpu", "--threads", "2", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return tensor_digest(out)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True)
        return head + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, help="record the hashes in this JSON file")
    group.add_argument("--check", type=Path, help="compare with the hashes in this JSON file")
    parser.add_argument("--only", nargs="+", default=None, help="these cases only")
    args = parser.parse_args()
    names = args.only or list(CASES)
    if not SMOLLM2.exists():
        names = [n for n in names if CASES[n][0] != "smollm2"]
        print(f"{SMOLLM2} is absent: the SmolLM2 cases are skipped", file=sys.stderr)
    expected = json.loads(args.check.read_text())["hashes"] if args.check else {}
    hashes, failed = {}, []
    with tempfile.TemporaryDirectory() as temporary:
        paths = build_tiny_models(Path(temporary) / "models")
        for name in names:
            began = time.perf_counter()
            hashes[name] = run_case(name, paths, Path(temporary))
            verdict = ""
            if args.check:
                verdict = "same" if expected.get(name) == hashes[name] else f"DIFFERS (was {expected.get(name)})"
                if verdict != "same":
                    failed.append(name)
            print(f"{name:32s} {hashes[name][:16]}  {time.perf_counter() - began:6.1f} s  {verdict}", flush=True)
    if args.write:
        document = {
            "commit": _commit(),
            "host": {"cpu": _cpu(), "platform": platform.platform(), "cpus": os.cpu_count()},
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hashes": hashes,
        }
        from importlib import metadata

        document["versions"] = {p: metadata.version(p) for p in ("torch", "transformers", "safetensors")}
        document["host"]["threads"] = 2
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {len(hashes)} hashes to {args.write}")
    if failed:
        print(f"{len(failed)} of {len(names)} differ: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
