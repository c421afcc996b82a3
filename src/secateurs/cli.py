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
    prune.add_argument(
        "--method",
        default="wanda",
        help="magnitude, wanda or sparsegpt (sparse weights), or width or depth (a smaller dense model); "
        "default: wanda",
    )
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
    structured = prune.add_argument_group("structured pruning (--method width or depth)")
    structured.add_argument("--target", default="mlp", choices=["mlp", "heads"], help="width: what to remove")
    structured.add_argument("--ratio", type=float, default=None, help="fraction of channels, heads or layers removed")
    structured.add_argument("--remove", type=int, default=None, help="depth: number of decoder layers removed")
    structured.add_argument(
        "--multiple", type=int, default=64, help="width mlp: kept channels rounded to a multiple of this (default 64)"
    )
    structured.add_argument(
        "--no-reconstruct",
        dest="reconstruct",
        action="store_false",
        help="width: plain removal, no least-squares re-fit of the next projection",
    )
    structured.add_argument(
        "--score",
        default=None,
        help="width: fluctuation (FLAP, default) or wanda; depth: perplexity (default) or block-influence",
    )
    structured.add_argument(
        "--head-grouping",
        default="queries",
        choices=["queries", "kv-groups"],
        help="width heads: the same number of query heads removed in every KV group, or whole KV groups",
    )
    structured.add_argument("--allocation", default="uniform", help="width: uniform (the same size in every layer)")
    prune.add_argument(
        "--eval", default=None, metavar="DATASET", help="perplexity before/after: wikitext2, c4, ptb or a file"
    )
    prune.add_argument("--eval-seqlen", type=int, default=2048)
    prune.add_argument("--eval-windows", type=int, default=None, help="evaluate the first N windows only")
    _add_common(prune)

    evaluate = commands.add_parser("eval", help="measure a model's perplexity")
    evaluate.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    evaluate.add_argument("--ppl", default="wikitext2", help="wikitext2, c4, ptb or a text file")
    evaluate.add_argument("--seqlen", type=int, default=2048)
    evaluate.add_argument("--max-windows", type=int, default=None)
    evaluate.add_argument("--batch-size", type=int, default=1)
    _add_common(evaluate)
    return parser


def _recipe(args: argparse.Namespace) -> object:
    from .recipe import STRUCTURED_METHODS, Recipe, StructuredRecipe

    if args.method in STRUCTURED_METHODS:
        return StructuredRecipe(
            args.method,
            target=args.target,
            ratio=args.ratio,
            remove=args.remove,
            multiple=args.multiple,
            reconstruct=args.reconstruct,
            score=args.score,
            head_grouping=args.head_grouping,
            allocation=args.allocation,
            dampening=args.dampening,
        )
    return Recipe(
        args.method,
        args.sparsity,
        args.pattern,
        args.ignore,
        args.true_sequential,
        update=args.update,
        blocksize=args.blocksize,
        dampening=args.dampening,
    )


def _prune(args: argparse.Namespace) -> None:
    from .api import run_prune

    report = run_prune(
        args.model,
        _recipe(args),
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
    )
    keys = (
        "sparsity",
        "parameters_removed",
        "removed_layers",
        "prune_seconds",
        "perplexity_before",
        "perplexity_after",
        "peak_rss_mib",
    )
    summary = {key: report[key] for key in keys if report.get(key) is not None}
    print(json.dumps({"out": str(args.out), **summary}))


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        {"prune": _prune, "eval": _evaluate}[args.command](args)
    except SecateursError as error:
        print(f"secateurs: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("secateurs: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
