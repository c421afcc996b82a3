"""Protocol S (../shared/PROTOCOL.md) on SmolLM2-135M: packed file sizes, then inference speed and memory on
the CPU, each model as a ratio to the dense one measured in the same process.

    python bench/speed_s.py                   # writes bench/results/speed_s.json, .md and .png
    python bench/speed_s.py --dtype float16   # 16-bit files in float16 instead of bfloat16

Steps: the GGUF is dequantized to float32; Wanda prunes it (50 % unstructured, 2:4) on a small C4
calibration set (speed does not depend on the calibration's quality); each model is cast to 16 bits and
saved twice, as an HF folder and packed (bench/work/speed_s/). File sizes: the pruned Linear weights' bytes
packed against dense (target <= 0.57x; 0.5625 is the ideal with 16-bit values) and the whole file's shrink.
Speed: a fresh process runs protocol S on dense (HF folder), Wanda 50 % and Wanda 2:4 (packed folders, decoded
at load), with the Linear microbenchmark.

Check the script on a tiny model (minutes, not the protocol's figures):
    python bench/speed_s.py --model TINY_HF_FOLDER --calib builtin --nsamples 4 --seqlen 64 --tiny \\
        --work /tmp/speed_s --results /tmp/speed_s.json
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
SHARED = Path(os.environ.get("SECATEURS_SHARED", ROOT.parent / "shared")).resolve()
GGUF = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
C4 = SHARED / "data" / "c4" / "c4-train.00000-of-01024.head1000.jsonl"
WORK = ROOT / "bench" / "work" / "speed_s"
RESULTS = ROOT / "bench" / "results" / "speed_s.json"
THREADS = 2
NSAMPLES, SEQLEN = 32, 512
PRUNED_TARGET = 0.57  # packed / dense bytes of the pruned Linear weights (issue 7)
# name -> Wanda pattern (None: the dense model)
CONFIGURATIONS = {"dense": None, "wanda-50": "unstructured", "wanda-2:4": "2:4"}


def _folder(work: Path, name: str, kind: str) -> Path:
    return work / f"{name.replace(':', '-')}-{kind}"


def build(args: argparse.Namespace) -> dict:
    """Prune, cast to 16 bits, save HF and packed folders; return each one's file sizes."""
    import torch

    from secateurs import Recipe, calibration_windows, load_corpus, load_model, prune, save_packed
    from secateurs.export import packed_sizes, save_checkpoint

    torch.set_num_threads(THREADS)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    calibration = None
    sizes: dict[str, dict] = {}
    for name, pattern in CONFIGURATIONS.items():
        model, tokenizer = load_model(args.model, "float32")
        report: dict = {"recipe": None}
        if pattern is not None:
            if calibration is None:
                calibration = calibration_windows(load_corpus(args.calib), tokenizer, args.nsamples, args.seqlen, 0)
            start = time.perf_counter()
            report = prune(model, Recipe("wanda", pattern=pattern), calibration, device="cpu", progress=False)
            print(f"[speed_s] {name}: pruned in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        model.to(getattr(torch, args.dtype))
        hf, packed = _folder(work, name, "hf"), _folder(work, name, "packed")
        save_checkpoint(model, tokenizer, hf, report, overwrite=True)
        save_packed(model, tokenizer, packed, report, overwrite=True)
        measured = packed_sizes(packed)
        hf_file = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
        saving = measured["packed_dense"] - measured["packed"]
        sizes[name] = {
            "hf_folder": str(hf),
            "packed_folder": str(packed),
            "sparsity": report.get("sparsity", 0.0),
            "hf_file_bytes": hf_file,
            "packed_file_bytes": measured["file"],
            "pruned_linear_dense_bytes": measured["packed_dense"],
            "pruned_linear_packed_bytes": measured["packed"],
            "pruned_linear_ratio": measured["packed"] / measured["packed_dense"] if measured["packed_dense"] else None,
            "other_tensor_bytes": measured["dense"],
            "file_ratio": measured["file"] / hf_file,
            # the whole file shrinks by the pruned weights' saving, less the difference of the headers
            "file_shrink_minus_linear_saving_bytes": hf_file - measured["file"] - saving,
        }
        del model
    return sizes


def speed(args: argparse.Namespace) -> dict:
    """Protocol S on the dense HF folder and the pruned packed folders, in this one process."""
    import torch

    from secateurs.evaluate.speed import SpeedSettings, run_speed

    torch.set_num_threads(THREADS)
    settings = SpeedSettings()
    if args.tiny:
        settings = SpeedSettings(
            prefill_batch=2, prefill_seqlen=32, prompt_tokens=16, new_tokens=8, repeats=2, micro_tokens=64
        )
    work = Path(args.work)
    models = [_folder(work, name, "hf" if pattern is None else "packed") for name, pattern in CONFIGURATIONS.items()]
    return run_speed(models, "cpu", None, settings)


def _child(args: argparse.Namespace, step: str) -> dict:
    """Run a step in a fresh process, so that its memory figures are its own; it prints one JSON line last."""
    command = [sys.executable, __file__, "--step", step, "--model", str(args.model), "--calib", str(args.calib)]
    command += ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--dtype", args.dtype]
    command += ["--work", str(args.work)] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def size_table(sizes: dict) -> str:
    lines = [
        "| model | sparsity | HF file MiB | packed file MiB | packed / HF | pruned Linear packed / dense | "
        f"target <= {PRUNED_TARGET} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in sizes.items():
        ratio = row["pruned_linear_ratio"]
        verdict = "-" if ratio is None or row["sparsity"] == 0 else ("met" if ratio <= PRUNED_TARGET else "missed")
        lines.append(
            f"| {name} | {row['sparsity']:.2f} | {row['hf_file_bytes'] / 2**20:.1f} | "
            f"{row['packed_file_bytes'] / 2**20:.1f} | {row['file_ratio']:.3f} | "
            f"{'-' if ratio is None else f'{ratio:.4f}'} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(GGUF), help="the model (default: SmolLM2's GGUF in ../shared)")
    parser.add_argument("--calib", default=str(C4), help="calibration text (default: the C4 slice in ../shared)")
    parser.add_argument("--nsamples", type=int, default=NSAMPLES)
    parser.add_argument("--seqlen", type=int, default=SEQLEN)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="of the saved files")
    parser.add_argument("--work", default=str(WORK), help="folder for the saved checkpoints")
    parser.add_argument("--results", default=str(RESULTS), help="the JSON written (.md and .png beside it)")
    parser.add_argument("--tiny", action="store_true", help="tiny speed settings, to check the script")
    parser.add_argument("--step", choices=["build", "speed"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(build(args) if args.step == "build" else speed(args)))
        return
    if args.model == str(GGUF) and not GGUF.exists():
        sys.exit(f"{GGUF} not found: set SECATEURS_SHARED to the folder holding models/ and data/")

    from secateurs.evaluate.speed import markdown, plot
    from secateurs.report import machine, versions

    sizes = _child(args, "build")
    measured = _child(args, "speed")
    pruned = [row for row in sizes.values() if row["sparsity"]]
    result = {
        "protocol": "S",
        "model": Path(args.model).name,
        "dtype": args.dtype,
        "calibration": f"{Path(args.calib).name}, Wanda, {args.nsamples} x {args.seqlen}, seed 0",
        "threads": THREADS,
        "tiny_settings": args.tiny,
        "files": sizes,
        "targets": {
            "pruned_linear_ratio_max": PRUNED_TARGET,
            "pruned_linear_ratio_met": all(row["pruned_linear_ratio"] <= PRUNED_TARGET for row in pruned),
        },
        "speed": measured,
        "versions": versions(),
        "machine": machine(),
    }
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    temporary = results.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(temporary, results)
    results.with_suffix(".md").write_text(
        f"File sizes ({args.dtype}; `{results.name}`):\n\n{size_table(sizes)}\n{markdown(measured)}"
    )
    plot(measured, results.with_suffix(".png"))
    print(results.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
