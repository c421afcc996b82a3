"""The ``secateurs`` command's arguments: one subcommand per job, each flag with its default and meaning."""

from __future__ import annotations

import argparse


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickle (.bin) checkpoints")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_training(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="c4", help="c4, wikitext2, ptb, builtin, or a .txt/.jsonl file")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4, help="windows per step")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per window")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (warm-up, cosine decay)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=50, help="steps between resumable checkpoints")
    parser.add_argument("--resume", action="store_true", help="go on from the last checkpoint of the same command")
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--eval", default=None, metavar="DATASET", help="perplexity before/after")
    parser.add_argument("--eval-seqlen", type=int, default=2048)
    parser.add_argument("--eval-windows", type=int, default=None)
    _add_common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secateurs", description="Prune large language models one-shot.")
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a model and save it")
    prune.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    prune.add_argument(
        "--method",
        default="wanda",
        help="magnitude, wanda, ria or sparsegpt (sparse weights), or width or depth (a smaller dense model); "
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
        "--workers",
        type=int,
        default=1,
        help="processes sharing the calibration (torch.distributed: gloo on CPU, NCCL with one GPU each); "
        "the same as torchrun --nproc-per-node N -m secateurs prune ...",
    )
    prune.add_argument(
        "--offload",
        default="auto",
        choices=["none", "disk", "auto"],
        help="disk: read each block from the source's safetensors shards in turn, for models larger than memory "
        "(auto: when the model is larger than free memory; default auto)",
    )
    prune.add_argument(
        "--resume",
        action="store_true",
        help="go on from the last finished block of an interrupted run of the same command (state kept beside --out)",
    )
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
    layerwise = prune.add_argument_group("layer-wise allocation and method variants")
    layerwise.add_argument(
        "--allocation",
        default="uniform",
        help="uniform, owl (outlier-weighted, Yin et al.), schedule (see --schedule), or a YAML/JSON file of "
        "layer-name globs and sparsities (default: uniform)",
    )
    layerwise.add_argument("--schedule", default=None, metavar="FIRST:LAST", help="linear ramp over the blocks")
    layerwise.add_argument("--owl-m", type=float, default=5.0, help="OWL outlier threshold M (default 5)")
    layerwise.add_argument("--owl-lambda", type=float, default=0.08, help="OWL sparsity span lambda (default 0.08)")
    layerwise.add_argument(
        "--nm-allocation",
        default="skip",
        choices=["skip", "mixed"],
        help="with an N:M pattern: keep it in every layer (skip the allocation) or choose N per layer (mixed)",
    )
    layerwise.add_argument("--variant", action="store_true", help="Wanda's per-row cumulative threshold variant")
    layerwise.add_argument("--ria-alpha", type=float, default=0.5, help="RIA's activation exponent (default 0.5)")
    layerwise.add_argument("--refine", default=None, choices=["dsnot"], help="training-free mask refinement")
    layerwise.add_argument(
        "--refine-skip",
        nargs="+",
        default=["*mlp*"],
        metavar="GLOB",
        help="layers DSnoT leaves as they are (default: '*mlp*', as the paper's code)",
    )
    layerwise.add_argument(
        "--refine-threshold", type=float, default=0.1, help="DSnoT stops below this expected error (default 0.1)"
    )
    tuning = prune.add_argument_group("block-wise tuning after pruning (EBFT, Guo et al. 2024)")
    tuning.add_argument(
        "--ebft-epochs",
        type=int,
        default=0,
        help="epochs of Adam over the calibration batches per block: the pruned block's kept weights are fitted "
        "to the dense block's output (0: off, the default; 4 to 8 is a good start)",
    )
    tuning.add_argument("--ebft-lr", type=float, default=1e-3, help="EBFT's Adam learning rate (default 1e-3)")
    tuning.add_argument(
        "--ebft-target",
        default="block",
        choices=["block", "model"],
        help="what each tuned block's output is fitted to: the dense block's output on the same inputs (block, "
        "EBFT's, the default), or the dense model's activation after the block (model: a dense stream walks "
        "beside the pruned one, so each block also corrects the error of the blocks before it)",
    )
    distillation = prune.add_argument_group("distillation after pruning (KL to the dense model's predictions)")
    distillation.add_argument(
        "--distill-epochs",
        type=int,
        default=0,
        help="epochs of Adam over the calibration windows after the walk: the whole pruned model's kept weights are "
        "fitted to the dense model's next-token distributions (0: off, the default; 1 is a good start). With "
        "--method width or depth, every weight of the smaller model's blocks is. Keeps a dense copy of the model "
        "beside the pruned one",
    )
    distillation.add_argument(
        "--distill-lr", type=float, default=1e-4, help="the distillation's Adam learning rate (default 1e-4)"
    )
    structured = prune.add_argument_group("structured pruning (--method width or depth)")
    structured.add_argument("--target", default="mlp", choices=["mlp", "heads"], help="width: what to remove")
    structured.add_argument("--ratio", type=float, default=None, help="fraction of channels, heads or layers removed")
    structured.add_argument("--remove", type=int, default=None, help="depth: number of decoder layers removed")
    structured.add_argument(
        "--search-windows",
        type=int,
        default=None,
        metavar="N",
        help="depth: score the candidates on the first N calibration windows only (default all; the perplexity "
        "search runs the model's tail once per candidate and window); a distillation after it uses them all",
    )
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
    # what a sparse method would ignore: the CLI refuses these flags with one (secateurs.cli)
    prune.set_defaults(
        structured_only=tuple((a.dest, a.option_strings[0], a.default) for a in structured._group_actions)
    )

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

    evaluate = commands.add_parser("eval", help="measure a model's perplexity and zero-shot accuracy")
    evaluate.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    evaluate.add_argument(
        "--ppl",
        type=_comma_list,
        default=None,
        help="comma list of wikitext2, c4, ptb or text files (default: wikitext2 when no --tasks)",
    )
    evaluate.add_argument(
        "--tasks",
        type=_comma_list,
        default=[],
        help="comma list of lm-eval task names (boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,"
        "openbookqa) or task YAML files; needs pip install 'secateurs[eval]'",
    )
    evaluate.add_argument("--limit", type=_limit, default=None, help="first N documents per task (testing only)")
    evaluate.add_argument("--seqlen", type=int, default=2048, help="perplexity window (default 2048)")
    evaluate.add_argument("--max-windows", type=int, default=None, help="perplexity on the first N windows only")
    evaluate.add_argument("--batch-size", type=int, default=1, help="windows or task requests per forward")
    evaluate.add_argument("--out", default=None, metavar="FILE.json", help="also write the results to this file")
    _add_common(evaluate)

    sweep = commands.add_parser("sweep", help="prune at a grid of methods, patterns and sparsities; plot quality")
    sweep.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    sweep.add_argument("--methods", type=_comma_list, default=["magnitude", "wanda", "sparsegpt"])
    sweep.add_argument(
        "--sparsities", type=_comma_floats, default=[0.3, 0.4, 0.5, 0.6, 0.7], help="for unstructured points"
    )
    sweep.add_argument(
        "--patterns", type=_comma_list, default=["unstructured", "2:4"], help="an N:M pattern implies its sparsity"
    )
    sweep.add_argument("--eval", default="wikitext2", metavar="DATASET", help="wikitext2, c4, ptb or a file")
    sweep.add_argument("--eval-seqlen", type=int, default=2048)
    sweep.add_argument("--eval-windows", type=int, default=None, help="evaluate the first N windows only")
    sweep.add_argument("--calib", default="c4", help="c4, wikitext2, ptb, builtin, or a .txt/.jsonl file")
    sweep.add_argument("--nsamples", type=int, default=128)
    sweep.add_argument("--seqlen", type=int, default=2048)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--ignore", nargs="+", action="extend", default=[], metavar="GLOB")
    sweep.add_argument("--true-sequential", action=argparse.BooleanOptionalAction, default=None)
    sweep.add_argument("--blocksize", type=int, default=128)
    sweep.add_argument("--dampening", type=float, default=0.01)
    sweep.add_argument("--batch-size", type=int, default=None, help="calibration windows per forward")
    sweep.add_argument("--out", required=True, help="folder for sweep.json, sweep.md and sweep.png")
    sweep.add_argument(
        "--overwrite", action="store_true", help="start over when --out holds a sweep made with other settings"
    )
    _add_common(sweep)

    finetune = commands.add_parser("finetune", help="LoRA fine-tuning of a pruned model that keeps its zeros")
    finetune.add_argument("model", help="a pruned model folder (or any model)")
    finetune.add_argument("--lora-rank", type=int, default=8)
    finetune.add_argument("--lora-alpha", type=float, default=None, help="default: twice the rank")
    _add_training(finetune)

    train_prune = commands.add_parser("train-prune", help="prune while training: gradual, movement or iterative")
    train_prune.add_argument("model", help="a Hugging Face model folder, a hub id, or a .gguf file")
    train_prune.add_argument("--schedule", default="gradual", choices=["gradual", "iterative"])
    train_prune.add_argument(
        "--method",
        default="magnitude",
        help="gradual: magnitude or movement; iterative: the one-shot method of each round (magnitude, wanda, ria, "
        "sparsegpt); default magnitude",
    )
    train_prune.add_argument("--final-sparsity", type=float, default=0.5)
    train_prune.add_argument("--rounds", type=int, default=3, help="iterative: prune-and-fine-tune rounds")
    train_prune.add_argument("--prune-every", type=int, default=None, help="gradual: steps between mask updates")
    _add_training(train_prune)

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
    bench.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="load, time and free each model in turn (less memory; by default all stay loaded and are timed in "
        "rounds, so that the host's drift does not favour one model)",
    )
    bench.add_argument("--micro-tokens", type=int, default=4096, help="rows of the Linear microbenchmark")
    bench.add_argument("--no-micro", action="store_true", help="skip the Linear microbenchmark")
    bench.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    for command in (pack, unpack, bench):
        command.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _comma_floats(text: str) -> list[float]:
    try:
        return [float(item) for item in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of numbers, e.g. 0.3,0.5,0.7") from None


def _limit(text: str) -> int | float:
    """lm-eval's limit: a count of documents, or a fraction of them when below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value >= 1 and value.is_integer() else value
