#!/usr/bin/env python
"""Peer benchmark: prune a causal LM with llmcompressor (Wanda or SparseGPT).

Run with the python of the isolated environment made by ``bench/peer_env.sh``
(llmcompressor pins its own transformers, so it does not share secateurs'
environment)::

    PY=$(bash bench/peer_env.sh)
    $PY bench/peer_llmcompressor.py --model DIR --calib-tokens calib.safetensors \
        --method wanda --sparsity 0.5 --pattern 2:4 --out OUT --json result.json

Calibration uses exactly the token windows stored in ``--calib-tokens``
(one int64 tensor ``input_ids`` of shape [nsamples, seqlen]): they are fed one
window per batch, in file order, with no re-tokenisation, shuffling or
truncation.  The pruned model is written as ordinary dense safetensors that
``AutoModelForCausalLM.from_pretrained`` loads without llmcompressor.

Only stdlib, torch, transformers, safetensors and llmcompressor are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

PATTERNS = {"unstructured": "0:0", "2:4": "2:4", "4:8": "4:8"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="HF float32 safetensors folder with tokenizer")
    p.add_argument(
        "--calib-tokens", required=True, help=".safetensors file holding int64 'input_ids' [nsamples, seqlen]"
    )
    p.add_argument("--method", required=True, choices=["wanda", "sparsegpt"])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default="unstructured", choices=sorted(PATTERNS))
    p.add_argument("--out", required=True, help="folder for the pruned model and tokenizer")
    p.add_argument("--json", required=True, help="file for the measurements")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", default=None, choices=["owl"], help="llmcompressor's sparsity_profile (OWL allocation)")
    args = p.parse_args(argv)
    if not 0.0 < args.sparsity < 1.0:
        p.error("--sparsity must be in (0, 1)")
    if args.pattern != "unstructured":
        n, m = (int(x) for x in args.pattern.split(":"))
        if abs(args.sparsity - n / m) > 1e-9:
            p.error(f"--pattern {args.pattern} implies sparsity {n / m}, got --sparsity {args.sparsity}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def _offline_env(threads: int) -> None:
    # Must happen before torch / transformers / huggingface_hub are imported.
    for key in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
        "DISABLE_TELEMETRY",
    ):
        os.environ[key] = "1"
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = str(threads)


def _decoder_layer_classes(model) -> list[str]:
    """Class names of the repeated decoder blocks (what the sequential pipeline splits on)."""
    present = {type(m).__name__ for m in model.modules()}
    names = [n for n in (getattr(model, "_no_split_modules", None) or []) if n in present]
    if not names:
        raise SystemExit("cannot find the decoder-layer class (model._no_split_modules)")
    return sorted(set(names))


def _pruned_linears(model, layer_classes: list[str]):
    """(name, Linear) for every Linear inside a decoder layer, i.e. what gets pruned."""
    import torch

    out = []
    for lname, layer in model.named_modules():
        if type(layer).__name__ in layer_classes:
            for sname, sub in layer.named_modules():
                if isinstance(sub, torch.nn.Linear) and not sname.endswith("lm_head"):
                    out.append((f"{lname}.{sname}", sub))
    return out


def _sparsity_report(mods, pattern: str) -> dict:

    zeros = total = 0
    per = {}
    nm_ok = None
    if pattern != "unstructured":
        n, m = (int(x) for x in pattern.split(":"))
        nm_ok = True
    for name, mod in mods:
        w = mod.weight.detach()
        z = int((w == 0).sum())
        zeros += z
        total += w.numel()
        per[name] = z / w.numel()
        if nm_ok is not None:
            rows, cols = w.shape
            if cols % m:
                nm_ok = False
            else:
                groups = (w == 0).reshape(rows, cols // m, m).sum(-1)
                nm_ok = nm_ok and bool((groups >= n).all())
    vals = list(per.values())
    return {
        "achieved_sparsity": zeros / total if total else None,
        "zeros": zeros,
        "numel": total,
        "n_pruned_linears": len(mods),
        "min_module_sparsity": min(vals) if vals else None,
        "max_module_sparsity": max(vals) if vals else None,
        "nm_pattern_satisfied": nm_ok,
        "per_module_sparsity": per,
    }


OWL_WORKAROUND = (
    "llmcompressor 0.14's sparsity_profile='owl' cannot run: its OWL pass calls the basic pipeline from "
    "on_initialize, which raises 'Cannot invoke event before initializing', and the per-layer dict it "
    "returns would reach every module whole (on_calibration_start only indexes lists). So its own "
    "_infer_owl_layer_sparsity (its activation norms and outlier mapping) runs here first, with plain "
    "forward passes in place of the pipeline's events, and its result goes to the modifier as a list, "
    "one sparsity per decoder layer in target order; owl_s is that pass's time, included in prune_s."
)


def _owl_sparsities(modifier_class, common: dict, model, loader) -> list:
    """Per-decoder-layer sparsities from llmcompressor's own OWL code (see OWL_WORKAROUND)."""
    import torch
    from compressed_tensors.utils import match_named_modules
    from llmcompressor.pipelines import basic
    from llmcompressor.utils import calibration_forward_context

    def forward_only(model, dataloader):
        with torch.no_grad(), calibration_forward_context(model):
            for batch in dataloader:
                model(**batch)

    # llmcompressor 0.14 asks for M and lambda with the profile: the OWL paper's (and secateurs') M 5, lambda 0.08
    probe = modifier_class(**common, sparsity_profile="owl", owl_m=5, owl_lmbda=0.08)
    layers = dict(match_named_modules(model, common["targets"]))
    saved = basic.run_calibration
    basic.run_calibration = forward_only
    try:
        by_layer = probe._infer_owl_layer_sparsity(model, layers, loader)
    finally:
        basic.run_calibration = saved
    return [float(by_layer[name]) for name in layers]


class _Windows:
    """Map-style dataset: one calibration window per item, in file order."""

    def __init__(self, ids):
        import torch

        self.ids = ids
        self.mask = torch.ones_like(ids)

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i]}


def _collate(items):
    import torch

    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def main(argv=None) -> int:
    args = parse_args(argv)
    _offline_env(args.threads)

    import torch

    torch.set_num_threads(args.threads)

    import llmcompressor
    import safetensors
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader, SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = os.path.abspath(args.model)
    out_dir = os.path.abspath(args.out)

    # calibration windows, used verbatim
    calib = load_file(args.calib_tokens)
    if "input_ids" not in calib:
        raise SystemExit(f"{args.calib_tokens}: no 'input_ids' tensor")
    ids = calib["input_ids"]
    if ids.dtype != torch.int64 or ids.dim() != 2:
        raise SystemExit(f"input_ids must be int64 [nsamples, seqlen], got {ids.dtype} {tuple(ids.shape)}")
    ids = ids.contiguous()
    nsamples, seqlen = (int(x) for x in ids.shape)

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map=None, local_files_only=True)
    model.eval()
    load_s = time.perf_counter() - t0

    vocab = model.get_input_embeddings().weight.shape[0]
    if int(ids.min()) < 0 or int(ids.max()) >= vocab:
        raise SystemExit(f"token ids outside [0, {vocab})")

    layer_classes = _decoder_layer_classes(model)
    mods = _pruned_linears(model, layer_classes)
    dense_zero_frac = _sparsity_report(mods, "unstructured")["achieved_sparsity"]

    mask_structure = PATTERNS[args.pattern]
    common = dict(
        sparsity=args.sparsity,
        mask_structure=mask_structure,
        targets=layer_classes,  # prune the Linear layers inside each decoder block
        ignore=["re:.*lm_head"],
    )
    modifier_class = WandaPruningModifier if args.method == "wanda" else SparseGPTModifier
    # A DataLoader is handed to oneshot as is (llmcompressor skips its own dataset
    # processing then): batch size 1, sequential order, no truncation/padding.
    loader = DataLoader(_Windows(ids), batch_size=1, sampler=SequentialSampler(range(nsamples)), collate_fn=_collate)

    owl_s = None
    if args.profile is not None:
        t0 = time.perf_counter()
        common["sparsity"] = _owl_sparsities(modifier_class, common, model, loader)
        owl_s = time.perf_counter() - t0
    modifier = modifier_class(**common)  # library defaults (SparseGPT: block_size=128, dampening_frac=0.01)

    t0 = time.perf_counter()
    model = oneshot(
        model=model,
        tokenizer=tokenizer,
        recipe=[modifier],
        dataset=loader,
        num_calibration_samples=nsamples,
        max_seq_length=seqlen,
        shuffle_calibration_samples=False,
        batch_size=1,
        pipeline="sequential",
        sequential_targets=layer_classes,
        output_dir=None,  # saved below, uncompressed
    )
    prune_s = time.perf_counter() - t0 + (owl_s or 0.0)
    # read where secateurs reads its own: when pruning returns, before saving (saving may copy tensors)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    report = _sparsity_report(mods, args.pattern)

    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    # oneshot wrapped save_pretrained; save_compressed=False writes dense tensors.
    model.save_pretrained(out_dir, save_compressed=False, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stripped = _strip_compression_config(out_dir)
    save_s = time.perf_counter() - t0

    peak_rss_after_save_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    result = {
        "tool": "llmcompressor",
        "args": vars(args),
        "model": model_dir,
        "out": out_dir,
        "method": args.method,
        "pattern": args.pattern,
        "mask_structure": mask_structure,
        "target_sparsity": args.sparsity,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "threads": args.threads,
        "torch_num_threads": torch.get_num_threads(),
        "decoder_layer_classes": layer_classes,
        "modifier": {
            k: v for k, v in modifier.model_dump().items() if isinstance(v, (int, float, str, bool, list, type(None)))
        },
        "dense_zero_fraction": dense_zero_frac,
        "prune_s": prune_s,
        "load_s": load_s,
        "save_s": save_s,
        "peak_rss_mib": peak_rss_mib,
        "peak_rss_after_save_mib": peak_rss_after_save_mib,
        "stripped_quantization_config": stripped,
        "owl_s": owl_s,
        "owl_workaround": None if owl_s is None else OWL_WORKAROUND,
        **report,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "llmcompressor": llmcompressor.__version__,
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "method",
                    "pattern",
                    "achieved_sparsity",
                    "nm_pattern_satisfied",
                    "prune_s",
                    "peak_rss_mib",
                )
            }
        )
    )
    return 0


def _strip_compression_config(out_dir: str):
    """Drop compressed-tensors metadata so plain transformers (without compressed-tensors)
    loads the dense checkpoint; the weights themselves are already dense."""
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    qc = cfg.get("quantization_config")
    if qc is not None and qc.get("quant_method") == "compressed-tensors" and not qc.get("config_groups"):
        del cfg["quantization_config"]
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        return qc
    return None


if __name__ == "__main__":
    sys.exit(main())
