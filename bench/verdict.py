"""Verdicts that respect the noise: a target's ratio is taken in every round of one run (both sides measured in
that round), and the verdict says whether all rounds agree.

- "met": the ratio is within the limit in every round;
- "not met": it is over the limit in every round;
- "inconclusive": the rounds' spread crosses the limit, so the host's noise decides, not the tools.

A deterministic figure (perplexity of the same weights) has one value, so one ratio decides it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``row``'s ``figure`` divided by ``other``'s ``other_figure`` must be at most ``limit``. ``passes``: the
    other side is a one-pass floor, multiplied by the walk's passes per block (read from ``row``)."""

    label: str
    row: str
    figure: str
    other: str
    limit: float
    other_figure: str | None = None
    passes: bool = False


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a figure over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def verdict(ratios: list[float], limit: float) -> str:
    if max(ratios) <= limit:
        return "met"
    if min(ratios) > limit:
        return "not met"
    return "inconclusive"


def _by_round(rows: list[dict], name: str) -> dict[int, dict]:
    return {row["round"]: row for row in rows if row["name"] == name}


def _other_value(target: Target, row: dict, other: dict) -> float | None:
    value = other.get(target.other_figure or target.figure)
    if value is None or not target.passes:
        return value
    walk = row.get("walk") or {}
    if walk.get("batch_size") != other.get("batch_size"):
        return None  # a floor at another batch size is not the same measurement
    return value * walk.get("passes_per_block", 1)


def ratios(target: Target, rows: list[dict], quality: dict[str, dict]) -> list[float]:
    """The target's ratio in each round where both sides were measured (one ratio for a quality figure)."""
    if target.figure in ("ppl",):
        ours, theirs = quality.get(target.row, {}).get("ppl"), quality.get(target.other, {}).get("ppl")
        return [ours / theirs] if ours is not None and theirs else []
    mine, others = _by_round(rows, target.row), _by_round(rows, target.other)
    found = []
    for number in sorted(mine.keys() & others.keys()):
        value, base = mine[number].get(target.figure), _other_value(target, mine[number], others[number])
        if value is not None and base:
            found.append(value / base)
    return found


def judge(targets: list[Target], rows: list[dict], quality: dict[str, dict]) -> list[dict]:
    """One verdict per target whose two sides this run measured."""
    if len({row["run_id"] for row in rows}) > 1:
        raise ValueError("these rows come from several runs: a verdict compares rows of one run only")
    judged = []
    for target in targets:
        found = ratios(target, rows, quality)
        if not found:
            continue
        judged.append(
            {
                "label": target.label,
                "row": target.row,
                "other": target.other,
                "figure": target.figure,
                "limit": target.limit,
                "ratio": spread(found),
                "verdict": verdict(found, target.limit),
            }
        )
    return judged
