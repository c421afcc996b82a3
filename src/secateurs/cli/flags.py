"""Every flag of every subcommand, in one table: the flag, the field it sets (``recipe.method.blocksize``,
``job.out``...) and what it means. Defaults come from the fields' dataclasses (and show in ``--help``); nothing
here repeats one."""

from __future__ import annotations

from ..allocation.schedule import parse_schedule
from ..engine import DEFAULT_BATCH_SIZE
from ..io.gguf_export import OUTTYPES as GGUF_TYPES
from ..models.load import DTYPES
from ..recipe import DEFAULT_SPARSITY
from ..recipe.presets import preset_names
from .parser import Flag, group

DTYPE_CHOICES = tuple(DTYPES)
MODEL_HELP = "a Hugging Face model folder, a hub id, or a .gguf file"
DATASETS = "wikitext2, c4, ptb, builtin or a text file"


def _schedule(text: str) -> dict[str, float]:
    first, last = parse_schedule(text)
    return {"first": first, "last": last}


TRUST_PICKLE = Flag(
    "--trust-pickle", "job.trust_pickle", "allow pickle (.bin) checkpoints (unpickling runs code)", kind="switch"
)

COMMON = (
    Flag("--device", "job.device", "cpu, cuda, cuda:N or auto"),
    Flag("--dtype", "job.dtype", "the dtype the model is loaded and pruned in", choices=DTYPE_CHOICES),
    Flag("--threads", "cli.threads", "CPU threads for torch (default: torch's)", kind=int),
    TRUST_PICKLE,
    Flag("--quiet", "job.progress", "no progress bars", kind="flip"),
    Flag("--json", "cli.json", "print one machine-readable JSON line instead of the summary", kind="switch"),
)

CALIBRATION = (
    Flag(
        "--calib", "recipe.calibration.source", "calibration text: c4, wikitext2, ptb, builtin, or a .txt/.jsonl file"
    ),
    Flag("--nsamples", "recipe.calibration.nsamples", "calibration windows", kind=int),
    Flag("--seqlen", "recipe.calibration.seqlen", "tokens per calibration window", kind=int),
    Flag("--seed", "recipe.calibration.seed", "seed of the window sampling", kind=int),
)

EVALUATION = (
    Flag("--eval", "job.evaluation.dataset", f"perplexity before and after on {DATASETS}", metavar="DATASET"),
    Flag("--eval-seqlen", "job.evaluation.seqlen", "tokens per evaluation window", kind=int),
    Flag("--eval-windows", "job.evaluation.windows", "evaluate the first N windows only (default all)", kind=int),
)

SPARSE = (
    Flag(
        "--sparsity",
        "recipe.sparsity",
        "fraction of weights removed per layer",
        kind=float,
        shown=f"{DEFAULT_SPARSITY:g}, or the pattern's",
    ),
    Flag("--pattern", "recipe.pattern", "unstructured or N:M, e.g. 2:4"),
    Flag("--ignore", "recipe.ignore", "layer-name globs left dense, e.g. '*.down_proj'", kind="list", metavar="GLOB"),
    Flag(
        "--true-sequential",
        "recipe.true_sequential",
        "one pass per block, each Linear pruned before later ones see its output (default: the method's; on for "
        "sparsegpt)",
        kind="bool",
    ),
    Flag(
        "--update",
        "recipe.update",
        "add SparseGPT's OBS weight update to a score's mask: the mask fixed first "
        "(obs-seq) or re-chosen every --blocksize columns (obs-iter); the Wanda paper's Section 5 ablations",
        choices=("obs-seq", "obs-iter"),
    ),
    Flag("--blocksize", ("recipe.method.blocksize", "recipe.update.blocksize"), "SparseGPT's column block", kind=int),
    Flag(
        "--dampening",
        ("recipe.method.dampening", "recipe.update.dampening"),
        "lambda, a fraction of mean(diag H) (SparseGPT; the width re-fit's ridge)",
        kind=float,
    ),
    Flag(
        "--fit",
        "recipe.method.fit",
        "what sparsegpt/alps fit each layer to: its own output on the pruned model's inputs (self), or the dense "
        "model's output of that layer on the same tokens (dense; a dense stream walks beside the pruned one)",
        choices=("self", "dense"),
    ),
    Flag(
        "--fit-mix",
        "recipe.method.mix",
        "with --fit dense: the share of the way from the layer's own output to the dense one (default 0.25)",
        kind=float,
    ),
    Flag("--variant", "recipe.method.variant", "Wanda's per-row cumulative threshold variant", kind="switch"),
    Flag("--ria-alpha", "recipe.method.alpha", "RIA's activation exponent", kind=float),
)

ALLOCATION = (
    Flag(
        "--allocation",
        "recipe.allocation",
        "uniform, owl (outlier-weighted, Yin et al.), schedule (see "
        "--schedule), or a YAML/JSON file of layer-name globs and sparsities",
        shown="uniform",
    ),
    Flag(
        "--schedule",
        "recipe.allocation",
        "with --allocation schedule: a linear ramp from the first block's sparsity to the last's",
        metavar="FIRST:LAST",
        convert=_schedule,
        fields=("first", "last"),
    ),
    Flag("--owl-m", "recipe.allocation.m", "OWL's outlier threshold M", kind=float),
    Flag("--owl-lambda", "recipe.allocation.lam", "OWL's span of block sparsities, target +- lambda", kind=float),
    Flag(
        "--nm-allocation",
        "recipe.allocation.nm",
        "with an N:M pattern: keep it in every layer (skip the allocation) or choose N per layer (mixed)",
        choices=("skip", "mixed"),
    ),
    Flag("--refine", "recipe.refine", "training-free mask refinement (DSnoT)", choices=("dsnot",)),
    Flag("--refine-skip", "recipe.refine.skip", "layers DSnoT leaves as they are", kind="list", metavar="GLOB"),
    Flag("--refine-threshold", "recipe.refine.threshold", "DSnoT stops below this expected error", kind=float),
)

TUNING = (
    Flag(
        "--ebft-epochs",
        "recipe.ebft.epochs",
        "epochs of Adam over the calibration batches per block, each pruned "
        "block's kept weights fitted to the dense output (4 to 8 is a good start)",
        kind=int,
        off=0,
        shown="0, off",
    ),
    Flag("--ebft-lr", "recipe.ebft.lr", "EBFT's Adam learning rate", kind=float),
    Flag(
        "--ebft-target",
        "recipe.ebft.target",
        "fit each tuned block to the dense block's output on the same "
        "inputs (block) or to the dense model's activation after the block (model)",
        choices=("block", "model"),
    ),
    Flag(
        "--ebft-precision",
        "recipe.ebft.precision",
        "EBFT's forward and backward products: float32, bfloat16 (weights and Adam stay float32), or auto "
        "(bfloat16 where the GPU or CPU has bfloat16 units: AVX512-BF16, AMX)",
        choices=("float32", "bfloat16", "auto"),
    ),
    Flag(
        "--distill-epochs",
        "recipe.distill.epochs",
        "epochs of Adam over the calibration windows after the walk, "
        "the whole pruned model fitted to the dense model's next-token distributions (1 is a good start; keeps a "
        "dense copy of the model)",
        kind=int,
        off=0,
        shown="0, off",
    ),
    Flag("--distill-lr", "recipe.distill.lr", "the distillation's Adam learning rate", kind=float),
)

STRUCTURED = (
    Flag("--target", "recipe.method.target", "width: what to remove", choices=("mlp", "heads")),
    Flag("--ratio", "recipe.method.ratio", "fraction of channels, heads or layers removed", kind=float),
    Flag("--remove", "recipe.method.remove", "depth: number of decoder layers removed", kind=int),
    Flag(
        "--search-windows",
        "recipe.method.search_windows",
        "depth: score the candidates on the first N "
        "calibration windows only (default all); a distillation after it uses them all",
        kind=int,
        metavar="N",
    ),
    Flag("--multiple", "recipe.method.multiple", "width mlp: kept channels rounded to a multiple of this", kind=int),
    Flag(
        "--no-reconstruct",
        "recipe.method.reconstruct",
        "width: plain removal, no least-squares re-fit of the next projection",
        kind="flip",
    ),
    Flag(
        "--score",
        "recipe.method.score",
        "width: fluctuation (FLAP), wanda or obs; depth: perplexity or block-influence",
        shown="fluctuation or perplexity",
    ),
    Flag(
        "--head-grouping",
        "recipe.method.head_grouping",
        "width heads: the same number of query heads removed in every KV group, or whole KV groups",
        choices=("queries", "kv-groups"),
    ),
)

PRUNE = (
    Flag("model", "job.model", MODEL_HELP),
    Flag(
        "--recipe",
        "cli.recipe",
        "a YAML/JSON recipe file (or a secateurs.json) to start from; flags given override its settings",
        metavar="FILE",
    ),
    Flag(
        "--preset",
        "cli.preset",
        "a recipe for a time budget: fast (Wanda), balanced (<= 2x SparseGPT's time), best (<= 4x); flags given "
        "override its settings",
        choices=tuple(preset_names()),
    ),
    Flag(
        "--method",
        "recipe.method",
        "magnitude, wanda, ria, sparsegpt or alps (sparse weights), or width or depth (a smaller dense model)",
    ),
    *SPARSE,
    *group("layer-wise allocation and mask refinement", ALLOCATION),
    *group("tuning after pruning: EBFT (per block) and distillation (whole model)", TUNING),
    *group("structured pruning (--method width or depth)", STRUCTURED),
    *group("calibration", CALIBRATION),
    Flag("--out", "job.out", "output folder (must not exist, or be empty)", required=True),
    Flag("--overwrite", "job.overwrite", "replace a non-empty --out", kind="switch"),
    Flag(
        "--workers",
        "cli.workers",
        "processes sharing the calibration (torch.distributed: gloo on CPU, NCCL with "
        "one GPU each); the same as torchrun --nproc-per-node N -m secateurs prune ...",
        kind=int,
    ),
    Flag(
        "--offload",
        "job.offload",
        "disk: read each block from the source's safetensors shards in turn, for "
        "models larger than memory; auto: when the model is larger than free memory",
        choices=("none", "disk", "auto"),
    ),
    Flag(
        "--resume",
        "job.resume",
        "go on from the last finished block of an interrupted run of the same command",
        kind="switch",
    ),
    Flag(
        "--hessians-on-cpu",
        "job.hessians_on_cpu",
        "keep the block's Hessians in CPU memory; only the one being solved goes to the device",
        kind="switch",
    ),
    Flag("--batch-size", "job.batch_size", "calibration windows per forward", kind=int, shown=str(DEFAULT_BATCH_SIZE)),
    *group("evaluation", EVALUATION),
    Flag(
        "--format",
        "job.format",
        "hf: what from_pretrained reads; packed: pruned weights compressed (bitmask or N:M), read by secateurs.load",
        choices=("hf", "packed"),
    ),
    Flag(
        "--gguf",
        "job.gguf",
        "also write the pruned model as this GGUF file, for llama.cpp (checked in llama.cpp when secateurs[llama] "
        "is installed)",
        metavar="OUT.gguf",
    ),
    Flag("--gguf-outtype", "job.gguf_outtype", "the GGUF file's matrix type", choices=GGUF_TYPES),
    Flag("--no-gguf-check", "job.gguf_check", "do not check the GGUF file in llama.cpp", kind="flip"),
    *COMMON,
)

EVAL = (
    Flag("model", "job.model", MODEL_HELP + ", or a packed folder"),
    Flag(
        "--ppl",
        "job.ppl",
        f"comma list of {DATASETS}s (default: wikitext2 when no --tasks)",
        kind="commas",
        shown="wikitext2",
    ),
    Flag(
        "--tasks",
        "job.tasks",
        "comma list of lm-eval task names (boolq,rte,hellaswag,winogrande,arc_easy,"
        "arc_challenge,openbookqa) or task YAML files; needs the [eval] extra",
        kind="commas",
    ),
    Flag("--limit", "job.limit", "first N documents per task, a fraction when below 1 (testing only)", kind="limit"),
    Flag("--seqlen", "job.seqlen", "perplexity window", kind=int),
    Flag("--max-windows", "job.max_windows", "perplexity on the first N windows only", kind=int),
    Flag("--batch-size", "job.batch_size", "windows or task requests per forward", kind=int),
    Flag("--out", "cli.out", "also write the results to this JSON file", metavar="FILE.json"),
    *COMMON,
)

SWEEP = (
    Flag("model", "job.model", MODEL_HELP),
    Flag("--methods", "job.methods", "comma list of sparse methods", kind="commas"),
    Flag("--sparsities", "job.sparsities", "comma list of unstructured sparsities", kind="floats"),
    Flag("--patterns", "job.patterns", "comma list of patterns; an N:M pattern implies its sparsity", kind="commas"),
    Flag("--eval", "job.evaluation.dataset", f"evaluation text: {DATASETS}", metavar="DATASET"),
    Flag("--eval-seqlen", "job.evaluation.seqlen", "tokens per evaluation window", kind=int),
    Flag("--eval-windows", "job.evaluation.windows", "evaluate the first N windows only", kind=int),
    Flag("--calib", "job.calibration.source", "calibration text: c4, wikitext2, ptb, builtin, or a .txt/.jsonl file"),
    Flag("--nsamples", "job.calibration.nsamples", "calibration windows", kind=int),
    Flag("--seqlen", "job.calibration.seqlen", "tokens per calibration window", kind=int),
    Flag("--seed", "job.calibration.seed", "seed of the window sampling", kind=int),
    Flag("--ignore", "job.ignore", "layer-name globs left dense", kind="list", metavar="GLOB"),
    Flag("--true-sequential", "job.true_sequential", "as prune's (default: each method's)", kind="bool"),
    Flag("--blocksize", "job.blocksize", "SparseGPT's column block", kind=int),
    Flag("--dampening", "job.dampening", "SparseGPT's lambda", kind=float),
    Flag("--batch-size", "job.batch_size", "calibration windows per forward", kind=int, shown=str(DEFAULT_BATCH_SIZE)),
    Flag("--out", "job.out", "folder for sweep.json, sweep.md and sweep.png", required=True),
    Flag("--overwrite", "job.overwrite", "start over when --out holds a sweep made with other settings", kind="switch"),
    *COMMON,
)

TRAINING = (
    Flag("--data", "job.training.data", "training text: c4, wikitext2, ptb, builtin, or a .txt/.jsonl file"),
    Flag("--steps", "job.training.steps", "optimizer steps", kind=int),
    Flag("--batch-size", "job.training.batch_size", "windows per step", kind=int),
    Flag("--seqlen", "job.training.seqlen", "tokens per window", kind=int),
    Flag("--lr", "job.training.lr", "peak learning rate (warm-up, cosine decay)", kind=float),
    Flag("--seed", "job.training.seed", "seed of the window sampling", kind=int),
    Flag("--checkpoint-every", "job.training.checkpoint_every", "steps between resumable checkpoints", kind=int),
    Flag("--resume", "job.resume", "go on from the last checkpoint of the same command", kind="switch"),
    Flag("--out", "job.out", "output folder (must not exist, or be empty)", required=True),
    Flag("--overwrite", "job.overwrite", "replace a non-empty --out", kind="switch"),
    *EVALUATION,
    *COMMON,
)

FINETUNE = (
    Flag("model", "job.model", "a pruned model folder (or any model)"),
    Flag("--lora-rank", "job.lora.rank", "LoRA rank", kind=int),
    Flag("--lora-alpha", "job.lora.alpha", "LoRA alpha", kind=float, shown="twice the rank"),
    *TRAINING,
)

TRAIN_PRUNE = (
    Flag("model", "job.model", MODEL_HELP),
    Flag(
        "--schedule",
        "job.pruning.schedule",
        "gradual (cubic schedule) or iterative (prune and fine-tune rounds)",
        choices=("gradual", "iterative"),
    ),
    Flag(
        "--method",
        "job.pruning.method",
        "gradual: magnitude or movement; iterative: the one-shot method of each "
        "round (magnitude, wanda, ria, sparsegpt)",
    ),
    Flag("--final-sparsity", "job.pruning.final_sparsity", "sparsity at the end", kind=float),
    Flag("--rounds", "job.pruning.rounds", "iterative: prune-and-fine-tune rounds", kind=int),
    Flag(
        "--prune-every",
        "job.pruning.prune_every",
        "gradual: steps between mask updates",
        kind=int,
        shown="about 20 updates",
    ),
    *TRAINING,
)

QUIET = (
    Flag("--quiet", "cli.quiet", "no progress bars", kind="switch"),
    Flag("--json", "cli.json", "print one machine-readable JSON line instead of the summary", kind="switch"),
)

PACK = (
    Flag("model", "job.model", "a Hugging Face model folder (a pruned one)"),
    Flag("out", "job.out", "output folder (must not exist, or be empty)"),
    Flag(
        "--pattern",
        "job.pattern",
        "N:M (e.g. 2:4) to store the pruned weights as N:M (each must be N:M), or unstructured for bitmasks",
        shown="the folder's secateurs.json recipe's, else unstructured",
    ),
    Flag(
        "--ignore",
        "job.ignore",
        "weights the pattern does not apply to",
        kind="list",
        metavar="GLOB",
        shown="the folder's recipe's",
    ),
    Flag("--overwrite", "job.overwrite", "replace a non-empty OUT", kind="switch"),
    *QUIET,
)

UNPACK = (
    Flag("model", "job.model", "a packed folder"),
    Flag("out", "job.out", "output folder (must not exist, or be empty)"),
    Flag("--dtype", "job.dtype", "the dtype written", choices=DTYPE_CHOICES, shown="as stored"),
    Flag("--overwrite", "job.overwrite", "replace a non-empty OUT", kind="switch"),
    *QUIET,
)

EXPORT = (
    Flag("model", "job.model", "a model folder (one secateurs wrote, packed or not, or a Hugging Face one)"),
    Flag("out", "job.out", "the file written (OUT.gguf)"),
    Flag("--to", "job.to", "the format written", choices=("gguf",)),
    Flag("--outtype", "job.outtype", "the matrices' type (norms stay f32)", choices=GGUF_TYPES),
    Flag(
        "--no-check",
        "job.check",
        "do not load the file in llama.cpp to compare its greedy continuations with the folder's model",
        kind="flip",
    ),
    Flag("--overwrite", "job.overwrite", "replace an existing OUT", kind="switch"),
    TRUST_PICKLE,
    *QUIET,
)

BENCH = (
    Flag("models", "job.models", "model folders (HF or packed), the dense one first", kind="many", metavar="MODEL"),
    Flag("--device", "job.device", "cpu, cuda, cuda:N or auto"),
    Flag("--dtype", "job.dtype", "the dtype the models run in", choices=DTYPE_CHOICES, shown="as stored"),
    Flag("--out", "job.out", "folder for speed.json, speed.md, speed.png"),
    Flag("--prefill-batch", "job.settings.prefill_batch", "prefill: windows per forward", kind=int),
    Flag("--prefill-seqlen", "job.settings.prefill_seqlen", "prefill: tokens per window", kind=int),
    Flag("--prompt-tokens", "job.settings.prompt_tokens", "decode: prompt tokens", kind=int),
    Flag("--new-tokens", "job.settings.new_tokens", "decode: tokens generated", kind=int),
    Flag("--repeats", "job.settings.repeats", "timed runs, after --warmup ones (the median is reported)", kind=int),
    Flag("--warmup", "job.settings.warmup", "untimed runs first", kind=int),
    Flag(
        "--one-at-a-time",
        "job.settings.interleave",
        "load, time and free each model in turn (less memory; by "
        "default all stay loaded and are timed in rounds, so the host's drift does not favour one)",
        kind="flip",
    ),
    Flag("--micro-tokens", "job.settings.micro_tokens", "rows of the Linear microbenchmark", kind=int),
    Flag("--no-micro", "job.settings.micro", "skip the Linear microbenchmark", kind="flip"),
    Flag("--threads", "cli.threads", "CPU threads for torch (default: torch's)", kind=int),
    *QUIET,
)

COMMANDS = {
    "prune": ("prune a model and save it", PRUNE),
    "eval": ("measure a model's perplexity and zero-shot accuracy", EVAL),
    "sweep": ("prune at a grid of methods, patterns and sparsities; plot quality", SWEEP),
    "finetune": ("LoRA fine-tuning of a pruned model that keeps its zeros", FINETUNE),
    "train-prune": ("prune while training: gradual, movement or iterative", TRAIN_PRUNE),
    "pack": ("store a pruned HF folder's pruned weights compressed", PACK),
    "unpack": ("write a packed checkpoint as an ordinary HF folder", UNPACK),
    "export": ("write a model folder as a GGUF file for llama.cpp", EXPORT),
    "bench": ("inference speed and memory, as ratios to the first model (protocol S)", BENCH),
}
