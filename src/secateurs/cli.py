"""The ``secateurs`` command: parses arguments and calls ``secateurs.api``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .cli_parser import build_parser
from .errors import OutputError, SecateursError


def _train(args: argparse.Namespace) -> None:
    from .recover import run_training

    options = {
        "finetune": {"lora_rank": getattr(args, "lora_rank", 8), "lora_alpha": getattr(args, "lora_alpha", None)},
        "train-prune": {
            key: getattr(args, key, None) for key in ("schedule", "method", "final_sparsity", "rounds", "prune_every")
        },
    }[args.command]
    report = run_training(
        args.command,
        args.model,
        args.out,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch_size,
        seqlen=args.seqlen,
        lr=args.lr,
        seed=args.seed,
        eval_dataset=args.eval,
        eval_seqlen=args.eval_seqlen,
        eval_windows=args.eval_windows,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet,
        **options,
    )
    keys = ("sparsity", "perplexity_before", "perplexity_after", "peak_rss_mib")
    summary = {key: report[key] for key in keys if report.get(key) is not None}
    print(json.dumps({"out": str(args.out), "final_loss": report["losses"][-1], **summary}))


def _recipe(args: argparse.Namespace) -> object:
    from .errors import RecipeError
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
            ebft_epochs=args.ebft_epochs,
            ebft_lr=args.ebft_lr,
            ebft_target=args.ebft_target,
            distill_epochs=args.distill_epochs,
            distill_lr=args.distill_lr,
            search_windows=args.search_windows,
        )
    given = [flag for dest, flag, default in args.structured_only if getattr(args, dest) != default]
    if given:
        raise RecipeError(f"{', '.join(given)} go with --method width or depth, not {args.method}: drop them")
    return Recipe(
        args.method,
        args.sparsity,
        args.pattern,
        args.ignore,
        args.true_sequential,
        update=args.update,
        blocksize=args.blocksize,
        dampening=args.dampening,
        allocation=args.allocation,
        schedule=args.schedule,
        owl_m=args.owl_m,
        owl_lambda=args.owl_lambda,
        nm_allocation=args.nm_allocation,
        variant=args.variant,
        ria_alpha=args.ria_alpha,
        refine=args.refine,
        refine_skip=args.refine_skip,
        refine_threshold=args.refine_threshold,
        ebft_epochs=args.ebft_epochs,
        ebft_lr=args.ebft_lr,
        ebft_target=args.ebft_target,
        distill_epochs=args.distill_epochs,
        distill_lr=args.distill_lr,
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
        checkpoint_format=args.format,
        resume=args.resume,
        offload=args.offload,
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
    from .api import run_evaluation
    from .report import write_json_atomic
    from .report_md import evaluation_table

    ppl = args.ppl if args.ppl is not None else ([] if args.tasks else ["wikitext2"])
    out = _check_results_file(args.out) if args.out else None
    result = run_evaluation(
        args.model,
        ppl=ppl,
        tasks=args.tasks,
        seqlen=args.seqlen,
        max_windows=args.max_windows,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        trust_pickle=args.trust_pickle,
        progress=not args.quiet,
    )
    summary: dict = {"model": args.model}
    if len(ppl) == 1:  # the shape `secateurs eval --ppl SET` has always printed
        summary.update(dataset=ppl[0], seqlen=args.seqlen, windows=args.max_windows)
        summary["perplexity"] = round(result["perplexities"][ppl[0]], 4)
    summary.update({key: value for key, value in result.items() if key != "model"})
    print(evaluation_table(result), file=sys.stderr)
    if out is not None:
        write_json_atomic(out, summary)
    print(json.dumps(summary))


def _check_results_file(path: str) -> Path:
    out = Path(path).expanduser()
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder: give a file name such as results.json")
    if not out.parent.is_dir():
        raise OutputError(f"the folder {out.parent} does not exist: create it first, or choose another --out")
    return out


def _sweep(args: argparse.Namespace) -> None:
    from .sweep import SWEEP_JSON, SWEEP_MARKDOWN, run_sweep

    state = run_sweep(
        args.model,
        args.out,
        args.methods,
        args.sparsities,
        args.patterns,
        eval_dataset=args.eval,
        eval_seqlen=args.eval_seqlen,
        eval_windows=args.eval_windows,
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        ignore=args.ignore,
        true_sequential=args.true_sequential,
        blocksize=args.blocksize,
        dampening=args.dampening,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        progress=not args.quiet,
    )
    print((Path(args.out) / SWEEP_MARKDOWN).read_text(), file=sys.stderr)
    summary = {
        "out": str(Path(args.out) / SWEEP_JSON),
        "dense_perplexity": state["dense"]["perplexity"],
        "points": [{k: p[k] for k in ("method", "pattern", "sparsity", "perplexity")} for p in state["points"]],
    }
    print(json.dumps(summary))


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
        interleave=not args.one_at_a_time,
    )
    result = run_speed(args.models, args.device, args.dtype, settings, out=args.out)
    print(markdown(result))
    print(json.dumps({"out": str(args.out), "models": len(result["models"])}))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from .distributed import launch, without_workers

        return launch(args.workers, without_workers(argv))
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        commands = {
            "finetune": _train,
            "train-prune": _train,
            "prune": _prune,
            "eval": _evaluate,
            "sweep": _sweep,
            "pack": _pack,
            "unpack": _unpack,
            "bench": _bench,
        }
        commands[args.command](args)
    except SecateursError as error:
        print(f"secateurs: error: {error}{_resumable(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "sweep":
            print(
                "secateurs: interrupted; the finished points are in sweep.json: rerun the same command to resume",
                file=sys.stderr,
            )
        else:
            print(f"secateurs: interrupted; no output was written{_resumable(args)}", file=sys.stderr)
        return 130
    return 0


def _resumable(args: argparse.Namespace) -> str:
    """What an interrupted or failed prune or training left to resume from, if anything."""
    if args.command in ("finetune", "train-prune"):
        from .recover import training_folder

        state = training_folder(Path(args.out).expanduser().resolve()) / "train-state.json"
        if not state.is_file():
            return ""
        step = json.loads(state.read_text())["step"]
        return f" (a checkpoint at step {step} is saved: run the same command with --resume to go on from there)"
    if args.command != "prune":
        return ""
    from .checkpoint import state_folder

    state = state_folder(Path(args.out).expanduser().resolve()) / "state.json"
    if not state.is_file():
        return ""
    blocks = json.loads(state.read_text()).get("blocks_done", 0)
    if not blocks:
        return ""
    return f" ({blocks} pruned blocks are saved: run the same command with --resume to go on from there)"


if __name__ == "__main__":
    sys.exit(main())
