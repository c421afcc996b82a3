"""The ``secateurs`` command: parses arguments and calls ``secateurs.api``."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .errors import SecateursError


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickle (.bin) checkpoints")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description="Prune large language models one-shot.")
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a model and save it")
    prune.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    prune.add_argument("--method", default="wanda", help="magnitude, wanda or sparsegpt (default: wanda)")
    prune.add_argument("--sparsity", type=float, default=None, help="fraction removed per layer (default 0.5)")
    prune.add_argument(
        "--pattern", default="unstructured", help="unstructured or N:M, e.g. 2:4 (default: unstructured)"
    )
    prune.add_argument("--calib", default="c4", help="c4, wikitext2, ptb, builtin, or a .txt/.jsonl file")
    prune.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    prune.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default 2048)")
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    prune.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    prune.add_argument(
        "--ignore",
        nargs="+",
        action="extend",
        default=[],
        metavar="GLOB",
        help="layer-name globs left dense, e.g. '*.down_proj'",
    )
    prune.add_argument(
        "--true-sequential",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one pass per block, each Linear pruned before later ones see its output "
        "(default: on for sparsegpt, off for the others)",
    )
    prune.add_argument(
        "--update",
        default=None,
        choices=["obs-seq", "obs-iter"],
        help="add SparseGPT's OBS weight update to a magnitude/wanda mask: the mask fixed first (obs-seq) "
        "or re-chosen every --blocksize columns (obs-iter); the Wanda paper's Section 5 ablations",
    )
    prune.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block (default 128)")
    prune.add_argument(
        "--dampening", type=float, default=0.01, help="SparseGPT lambda, a fraction of mean(diag H) (default 0.01)"
    )
    prune.add_argument(
        "--hessians-on-cpu",
        action="store_true",
        help="keep the block's Hessians in CPU memory; only the one being solved goes to the device",
    )
    prune.add_argument("--batch-size", type=int, default=None, help="calibration windows per forward")
    prune.add_argument(
        "--eval", default=None, metavar="DATASET", help="perplexity before/after: wikitext2, c4, ptb or a file"
    )
    prune.add_argument("--eval-seqlen", type=int, default=2048)
    prune.add_argument("--eval-windows", type=int, default=None, help="evaluate the first N windows only")
    prune.add_argument(
        "--format",
        default="hf",
        choices=["hf", "packed"],
        help="hf: what from_pretrained reads; packed: pruned weights compressed (bitmask or N:M), read by "
        "secateurs.load (default: hf)",
    )
    _add_common(prune)

    evaluate = commands.add_parser("eval", help="measure a model's perplexity")
    evaluate.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    evaluate.add_argument("--ppl", default="wikitext2", help="wikitext2, c4, ptb or a text file")
    evaluate.add_argument("--seqlen", type=int, default=2048)
    evaluate.add_argument("--max-windows", type=int, default=None)
    evaluate.add_argument("--batch-size", type=int, default=1)
    _add_common(evaluate)

    pack = commands.add_parser("pack", help="store a pruned HF folder's pruned weights compressed")
    pack.add_argument("model", help="a Hugging Face model folder (a pruned one)")
    pack.add_argument("out", help="output folder (must not exist, or be empty)")
    pack.add_argument(
        "--pattern",
        default=None,
        help="N:M (e.g. 2:4) to store the pruned weights as N:M (each must be N:M), or unstructured for bitmasks "
        "(default: the pattern in the folder's secateurs.json, else unstructured)",
    )
    pack.add_argument("--ignore", nargs="+", default=None, metavar="GLOB", help="weights the pattern does not apply to")
    pack.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")

    unpack = commands.add_parser("unpack", help="write a packed checkpoint as an ordinary HF folder")
    unpack.add_argument("model", help="a packed folder")
    unpack.add_argument("out", help="output folder (must not exist, or be empty)")
    unpack.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: stored")
    unpack.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")

    bench = commands.add_parser("bench", help="inference speed and memory, as ratios to the first model (protocol S)")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="model folders (HF or packed), the dense one first")
    bench.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    bench.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: stored")
    bench.add_argument("--out", default="secateurs-bench", help="folder for speed.json, speed.md, speed.png")
    bench.add_argument("--prefill-batch", type=int, default=8)
    bench.add_argument("--prefill-seqlen", type=int, default=512)
    bench.add_argument("--prompt-tokens", type=int, default=128)
    bench.add_argument("--new-tokens", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=5, help="timed runs, after --warmup ones (median reported)")
    bench.add_argument("--warmup", type=int, default=1)
    bench.add_argument("--micro-tokens", type=int, default=4096, help="rows of the Linear microbenchmark")
    bench.add_argument("--no-micro", action="store_true", help="skip the Linear microbenchmark")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    for command in (pack, unpack, bench):
        command.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _prune(args: argparse.Namespace) -> None:
    from .api import run_prune
    from .recipe import Recipe

    recipe = Recipe(
        args.method,
        args.sparsity,
        args.pattern,
        args.ignore,
        args.true_sequential,
        update=args.update,
        blocksize=args.blocksize,
        dampening=args.dampening,
    )
    report = run_prune(
        args.model,
        recipe,
        args.out,
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        eval_dataset=args.eval,
        eval_seqlen=args.eval_seqlen,
        eval_windows=args.eval_windows,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        hessians_on_cpu=args.hessians_on_cpu,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        progress=not args.quiet,
        checkpoint_format=args.format,
    )
    summary = {
        key: report.get(key)
        for key in ("sparsity", "prune_seconds", "perplexity_before", "perplexity_after", "peak_rss_mib")
    }
    print(json.dumps({"out": str(args.out), **{k: v for k, v in summary.items() if v is not None}}))


def _evaluate(args: argparse.Namespace) -> None:
    from .api import evaluate
    from .models import load_model

    model, tokenizer = load_model(args.model, args.dtype, trust_pickle=args.trust_pickle)
    value = evaluate(
        model, tokenizer, args.ppl, args.seqlen, args.max_windows, args.batch_size, args.device, progress=not args.quiet
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "dataset": args.ppl,
                "seqlen": args.seqlen,
                "windows": args.max_windows,
                "perplexity": round(value, 4),
            }
        )
    )


def _pack(args: argparse.Namespace) -> None:
    from .export import pack, packed_sizes

    out = pack(args.model, args.out, pattern=args.pattern, ignore=args.ignore, overwrite=args.overwrite)
    sizes = packed_sizes(out)
    ratio = sizes["packed"] / sizes["packed_dense"] if sizes["packed_dense"] else None
    print(json.dumps({"out": str(args.out), **sizes, "packed_over_dense": ratio and round(ratio, 4)}))


def _unpack(args: argparse.Namespace) -> None:
    from .export import unpack

    unpack(args.model, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out)}))


def _bench(args: argparse.Namespace) -> None:
    from .evaluate.speed import SpeedSettings, markdown, run_speed

    settings = SpeedSettings(
        prefill_batch=args.prefill_batch,
        prefill_seqlen=args.prefill_seqlen,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        micro_tokens=args.micro_tokens,
        micro=not args.no_micro,
    )
    result = run_speed(args.models, args.device, args.dtype, settings, out=args.out)
    print(markdown(result))
    print(json.dumps({"out": str(args.out), "models": len(result["models"])}))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        commands = {"prune": _prune, "eval": _evaluate, "pack": _pack, "unpack": _unpack, "bench": _bench}
        commands[args.command](args)
    except SecateursError as error:
        print(f"secateurs: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secateurs: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
