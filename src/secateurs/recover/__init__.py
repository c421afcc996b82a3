"""Recovery and training-time pruning: LoRA fine-tuning that keeps a pruned model's zeros, gradual magnitude,
movement and iterative pruning. Each command loads a model, trains on windows of a corpus (checkpoints every
K steps beside the output, ``--resume``), measures perplexity before and after, and writes the model with a
report and the loss curve."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import data as data_module
from ..errors import RecipeError
from ..evaluate import perplexity
from ..export import check_output_folder, save_checkpoint
from ..models import check_token_ids, find_blocks, find_targets, load_model, resolve_device
from ..models.discover import Target
from ..report import machine, peak_rss_mib, versions
from ..report_md import new_figure
from .rules import GradualMagnitude, HoldMasks, Iterative, Movement
from .schedule import default_schedule
from .train import NoRule, TrainSettings, train

LOSS_PLOT = "loss_curve.png"


def _targets(model: nn.Module, two_dimensional_only: bool = False) -> list[Target]:
    name, blocks = find_blocks(model)
    targets = [t for i, block in enumerate(blocks) for t in find_targets(block, f"{name}.{i}")]
    return [t for t in targets if t.expert is None] if two_dimensional_only else targets


def training_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.training"


def plot_losses(losses: list[float], path: Path, milestones: list[dict[str, float]] | None = None) -> Path:
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    axes.plot(range(1, len(losses) + 1), losses, linewidth=1, label="loss")
    window = max(1, len(losses) // 20)
    if len(losses) > window:
        smooth = [sum(losses[i - window : i]) / window for i in range(window, len(losses) + 1)]
        axes.plot(range(window, len(losses) + 1), smooth, linewidth=2, label=f"mean of {window}")
    for milestone in milestones or []:
        axes.axvline(milestone["step"] + 1, color="grey", linewidth=0.5)
    axes.set_xlabel("step")
    axes.set_ylabel("next-token loss")
    axes.set_title("Training loss" + (" (grey: mask updates)" if milestones else ""))
    axes.legend(fontsize="small")
    figure.savefig(path)
    return path


def add_lora(model: nn.Module, targets: list[Target], rank: int, alpha: float | None) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft) on every pruned Linear of the blocks."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise RecipeError("LoRA fine-tuning needs peft: pip install 'secateurs[recover]'") from error
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha or 2 * rank,
        lora_dropout=0.0,
        target_modules=sorted({t.name for t in targets}),
        fan_in_fan_out=any(t.transposed for t in targets),  # GPT-2's Conv1D stores [in, out]
    )
    return get_peft_model(model, config)


def merge_lora(peft_model: nn.Module, masks: HoldMasks) -> nn.Module:
    """W + s B A, then the pruning mask: every pruned weight exactly zero, N:M groups intact."""
    model = peft_model.merge_and_unload()
    masks.targets = _targets(model, two_dimensional_only=True)
    masks.apply()
    return model


def _windows(source: str, tokenizer: Any, count: int, seqlen: int, seed: int) -> torch.Tensor:
    return data_module.calibration_windows(data_module.load_corpus(source), tokenizer, count, seqlen, seed)


def _evaluate(
    model: nn.Module, ids: torch.Tensor | None, seqlen: int, windows: int | None, device: torch.device
) -> float | None:
    if ids is None:
        return None
    model.to(device)
    return perplexity(model, ids, seqlen, windows, 1, device, progress=False)


def run_training(
    kind: str,
    model_source: str,
    out: str | Path,
    *,
    data: str = "c4",
    steps: int = 300,
    batch_size: int = 4,
    seqlen: int = 256,
    lr: float = 1e-4,
    seed: int = 0,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    schedule: str = "gradual",
    method: str = "magnitude",
    final_sparsity: float = 0.5,
    rounds: int = 3,
    prune_every: int | None = None,
    eval_dataset: str | None = None,
    eval_seqlen: int = 2048,
    eval_windows: int | None = None,
    checkpoint_every: int = 50,
    device: str = "auto",
    dtype: str = "float32",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``kind`` ``finetune``: LoRA recovery of a pruned model. ``train-prune``: prune while training, by the
    ``schedule`` (gradual: ``method`` magnitude or movement on the cubic schedule; iterative: ``rounds``
    one-shot prunings by ``method``)."""
    _check(kind, steps, batch_size, lr, final_sparsity, rounds, schedule, method, lora_rank)
    out_path = check_output_folder(out, overwrite, source=model_source)
    torch_device = resolve_device(device)
    folder = training_folder(out_path)
    if resume and not (folder / "train-state.json").is_file():
        from ..errors import ResumeError

        raise ResumeError(f"nothing to resume for {out_path} (no {folder.name}): run without --resume")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    model, tokenizer = load_model(model_source, dtype)
    windows = _windows(data, tokenizer, steps * batch_size, seqlen, seed)
    eval_ids = data_module.evaluation_ids(eval_dataset, tokenizer, eval_seqlen) if eval_dataset else None
    for ids in (windows, eval_ids):
        if ids is not None:
            check_token_ids(model, ids)  # before any training time is spent
    timings["load"] = time.perf_counter() - start
    report: dict[str, Any] = {"kind": kind, "model": str(model_source)}
    start = time.perf_counter()
    report["perplexity_before"] = _evaluate(model, eval_ids, eval_seqlen, eval_windows, torch_device)
    timings["eval_before"] = time.perf_counter() - start
    model.to(torch_device)
    settings = TrainSettings(steps=steps, batch_size=batch_size, lr=lr, checkpoint_every=checkpoint_every)

    start = time.perf_counter()
    if kind == "finetune":
        targets = _targets(model, two_dimensional_only=True)
        masks = HoldMasks(targets)
        report["sparsity_before"] = masks.sparsity()
        peft_model = add_lora(model, targets, lora_rank, lora_alpha)
        trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
        losses = train(peft_model, trainable, windows, settings, NoRule(), folder, resume, torch_device, progress)
        model = merge_lora(peft_model, masks)
        rule: HoldMasks = masks
        lora_parameters = sum(p.numel() for p in trainable.values())
        report.update(lora={"rank": lora_rank, "alpha": lora_alpha or 2 * lora_rank, "parameters": lora_parameters})
    else:
        rule = _pruning_rule(model, schedule, method, final_sparsity, rounds, steps, prune_every, windows, torch_device)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        trainable = dict(model.named_parameters())
        losses = train(model, trainable, windows, settings, rule, folder, resume, torch_device, progress)
        if hasattr(rule, "final_update"):
            rule.final_update(steps)
        rule.apply()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        report["milestones"] = rule.history
    timings["train"] = time.perf_counter() - start
    report["sparsity"] = rule.sparsity()

    start = time.perf_counter()
    report["perplexity_after"] = _evaluate(model, eval_ids, eval_seqlen, eval_windows, torch_device)
    timings["eval_after"] = time.perf_counter() - start
    model.to("cpu")
    report.update(
        recipe={"schedule": schedule, "method": method, "final_sparsity": final_sparsity, "rounds": rounds}
        if kind == "train-prune"
        else {"method": "lora"},
        training={"data": data, "steps": steps, "batch_size": batch_size, "seqlen": seqlen, "lr": lr, "seed": seed},
        evaluation={"dataset": eval_dataset, "seqlen": eval_seqlen, "windows": eval_windows} if eval_dataset else None,
        losses=losses,
        seconds={k: round(v, 3) for k, v in timings.items()},
        peak_rss_mib=peak_rss_mib(),
        versions=versions(),
        machine=machine(),
    )
    report["layers"] = [
        {"name": t.name, "shape": list(t.weight().shape), "sparsity": float((t.weight() == 0).float().mean())}
        for t in _targets(model)
    ]

    def loss_curve(partial: Path) -> None:
        plot_losses(losses, partial / LOSS_PLOT, report.get("milestones"))
        with open(partial / "report.md", "a") as markdown:
            markdown.write(f"\n## Training\n\n![training loss]({LOSS_PLOT})\n")

    save_checkpoint(model, tokenizer, out_path, report, overwrite, extra=loss_curve)
    shutil.rmtree(folder, ignore_errors=True)
    return report


def _pruning_rule(
    model: nn.Module,
    schedule: str,
    method: str,
    final: float,
    rounds: int,
    steps: int,
    every: int | None,
    windows: torch.Tensor,
    device: torch.device,
) -> HoldMasks:
    targets = _targets(model)
    if schedule == "gradual":
        cubic = default_schedule(final, steps, every)
        return Movement(targets, cubic) if method == "movement" else GradualMagnitude(targets, cubic)
    from ..api import prune
    from ..recipe import Recipe

    calibration = windows[: min(len(windows), 64)]

    def one_shot(sparsity: float) -> None:
        model.eval()
        prune(model, Recipe(method, sparsity=sparsity), calibration, device=device, progress=False)
        model.to(device).train()

    return Iterative(targets, rounds, steps, final, one_shot)


def _check(
    kind: str, steps: int, batch_size: int, lr: float, final: float, rounds: int, schedule: str, method: str, rank: int
) -> None:
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--lora-rank", rank), ("--rounds", rounds)):
        if not isinstance(value, int) or value < 1:
            raise RecipeError(f"{name} {value!r} must be a whole number >= 1")
    if not lr > 0:
        raise RecipeError(f"--lr {lr} must be positive, e.g. 1e-4")
    if kind == "train-prune":
        if not 0 < final < 1:
            raise RecipeError(f"--final-sparsity {final} is outside (0, 1): give e.g. 0.5")
        if schedule not in ("gradual", "iterative"):
            raise RecipeError(f"--schedule {schedule!r}: choose gradual or iterative")
        allowed = ("magnitude", "movement") if schedule == "gradual" else ("magnitude", "wanda", "ria", "sparsegpt")
        if method not in allowed:
            raise RecipeError(
                f"--method {method!r} does not go with --schedule {schedule}: choose {', '.join(allowed)}"
            )
