"""What a command prints when it ends: a few lines a person reads, or with ``--json`` one JSON line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..report import REPORT_MARKDOWN, GgufRecord, Report
from ..report.serialize import to_json_value


def emit(as_json: bool, lines: list[str], document: dict[str, Any]) -> None:
    print(json.dumps(document) if as_json else "\n".join(lines))


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} MiB"


def _count(value: int) -> str:
    return f"{value / 1e6:.1f} M" if value >= 1e6 else f"{value:,}"


def prune_lines(report: Report, out: Path) -> list[str]:
    """The summary of a prune: what was done, sparsity or size, perplexity, time, memory, where the files are."""
    method = report.recipe.get("method") or {}
    name = method.get("name") if isinstance(method, dict) else method
    lines = [
        f"Pruned {report.model} with {name} in {report.prune_seconds:.1f} s (peak memory {_mib(report.peak_rss_mib)})."
    ]
    if report.structured is not None:
        change = report.structured
        lines.append(
            f"  parameters    {_count(change.before.parameters)} -> {_count(change.after.parameters)} "
            f"({change.parameters_removed:.1%} removed)"
        )
        if change.removed_layers:
            lines.append(f"  removed       layers {', '.join(str(i) for i in change.removed_layers)}")
    else:
        lines.append(
            f"  sparsity      {report.sparsity:.4f} achieved over {_count(report.pruned_parameters or 0)} weights "
            f"(target {report.target_sparsity:g}, {report.recipe.get('pattern')})"
        )
    if report.perplexity_after is not None:
        evaluation = report.evaluation
        windows = f"{evaluation.windows} windows" if evaluation.windows else "all windows"
        lines.append(
            f"  perplexity    {report.perplexity_before:.2f} -> {report.perplexity_after:.2f} "
            f"({evaluation.dataset}, {windows} of {evaluation.seqlen} tokens)"
        )
    size = f"{(report.weight_file_bytes or 0) / 1e6:,.1f} MB of weights, {report.checkpoint_format}"
    lines += [f"  model         {out}  ({size})", f"  report        {out / REPORT_MARKDOWN}"]
    if report.gguf is not None:
        lines += ["  " + line for line in gguf_lines(report.gguf)]
    return lines


def gguf_lines(record: GgufRecord) -> list[str]:
    """A GGUF file written, and llama.cpp's verdict on it."""
    lines = [f"GGUF {record.path}: {record.bytes / 1e6:,.1f} MB ({record.outtype}, tokenizer {record.tokenizer})"]
    check = record.llama_cpp
    if check is None:
        lines.append('  not checked in llama.cpp: install "secateurs[llama]" to check it')
    elif check.matches:
        runs = f"{check.prompts} prompts x {check.new_tokens} tokens"
        lines.append(f"  llama.cpp: the model's greedy continuations ({runs})")
    else:
        differ = f"{len(check.differing)} of {check.prompts}"
        lines.append(f"  llama.cpp: WARNING, greedy continuations differ for {differ} prompts:")
        lines += [f"    {line}" for line in check.differing]
    return lines


def record_document(record: Any) -> dict[str, Any]:
    return to_json_value(record)


def prune_document(report: Report, out: Path) -> dict[str, Any]:
    structured = report.structured
    summary = {
        "sparsity": report.sparsity,
        "parameters_removed": structured.parameters_removed if structured else None,
        "removed_layers": structured.removed_layers if structured else None,
        "prune_seconds": report.prune_seconds,
        "perplexity_before": report.perplexity_before,
        "perplexity_after": report.perplexity_after,
        "peak_rss_mib": report.peak_rss_mib,
    }
    return {"out": str(out), **{key: value for key, value in summary.items() if value is not None}}
