"""The ``secateurs`` command: one subcommand per job, its flags from the table in ``flags``; errors a user can
cause end it with one line naming the flag at fault and what to do."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import SecateursError
from . import bench, evaluate, pack, prune, sweep, train
from .build import fields_of
from .flags import COMMANDS
from .parser import CliOptions, Flag, add_flags, given, render

Runner = Callable[[argparse.Namespace, tuple[Flag, ...], CliOptions], None]
RUNNERS: dict[str, Runner] = {
    "prune": prune.run,
    "eval": evaluate.run,
    "sweep": sweep.run,
    "finetune": train.run,
    "train-prune": train.run,
    "pack": pack.run_pack_command,
    "unpack": pack.run_unpack_command,
    "export": pack.run_export_command,
    "bench": bench.run,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description="Prune large language models one-shot.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (summary, rows) in COMMANDS.items():
        add_flags(commands.add_parser(name, help=summary, description=summary), rows, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    rows = COMMANDS[args.command][1]
    cli = CliOptions(**fields_of(given(args, rows), "cli"))
    if cli.workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from ..pipeline.distributed import launch, without_workers

        return launch(cli.workers, without_workers(argv))
    if cli.threads:
        import torch

        torch.set_num_threads(cli.threads)
    if args.quiet is not None:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        RUNNERS[args.command](args, rows, cli)
    except SecateursError as error:
        print(f"secateurs: error: {render(error, rows)}{_resumable(args)}", file=sys.stderr)
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
    if args.command not in ("prune", "finetune", "train-prune"):
        return ""
    out = Path(args.out).expanduser().resolve()
    if args.command == "prune":
        from ..engine.resume import state_folder

        state = state_folder(out) / "state.json"
        blocks = json.loads(state.read_text()).get("blocks_done", 0) if state.is_file() else 0
        return (
            f" ({blocks} pruned blocks are saved: run the same command with --resume to go on from there)"
            if blocks
            else ""
        )
    from ..recover import training_folder

    state = training_folder(out) / "train-state.json"
    if not state.is_file():
        return ""
    step = json.loads(state.read_text())["step"]
    return f" (a checkpoint at step {step} is saved: run the same command with --resume to go on from there)"


__all__ = ["build_parser", "main"]
