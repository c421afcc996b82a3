"""Verdicts that respect the noise: a target's ratio is taken in every round of one run (both sides measured in
that round), and the verdict says whether all rounds agree.

- "met": the ratio is within the limit in every round;
- "not met": it is outside the limit in every round;
- "inconclusive": the rounds' spread crosses the limit, so the host's noise decides, not the tools.

A limit bounds the ratio from above ("at most", times and memory), from below ("at least", speedups), or on
both sides of 1 ("within": |ratio - 1| <= limit, a size expected to follow a parameter count).

A deterministic figure (perplexity of the same weights) has one value, so one ratio decides it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

QUALITY = ("ppl", "ppl_c4")  # perplexities: WikiText-2, and C4 documents the calibration did not use


@dataclass(frozen=True)
class Target:
    """``row``'s ``figure`` divided by ``other``'s ``other_figure``, held to ``limit`` by ``bound``. ``passes``: the
    other side is a one-pass floor, multiplied by the walk's passes per block (read from ``row``). ``per``: a row
    figure the ratio is divided by (the ratio it should equal). ``ideal``: a row figure holding the ideal ratio;
    the ratio becomes the share of the ideal gain it reaches, (ratio - 1) / (ideal - 1)."""

    label: str
    row: str
    figure: str
    other: str
    limit: float
    other_figure: str | None = None
    passes: bool = False
    bound: str = "at most"
    per: str | None = None
    ideal: str | None = None

    def limit_text(self) -> str:
        return {"at most": f"<= {self.limit}", "at least": f">= {self.limit}"}.get(self.bound, f"1 ± {self.limit}")


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of a figure over the rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def verdict(ratios: list[float], limit: float, bound: str = "at most") -> str:
    holds = [_holds(ratio, limit, bound) for ratio in ratios]
    if all(holds):
        return "met"
    if not any(holds):
        return "not met"
    return "inconclusive"


def _holds(ratio: float, limit: float, bound: str) -> bool:
    if bound == "at most":
        return ratio <= limit
    if bound == "at least":
        return ratio >= limit
    if bound == "within":
        return abs(ratio - 1) <= limit
    raise ValueError(f"unknown bound {bound!r}: at most, at least or within")


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
    if target.figure in QUALITY:
        ours, theirs = quality.get(target.row, {}).get(target.figure), quality.get(target.other, {}).get(target.figure)
        return [ours / theirs] if ours is not None and theirs else []
    mine, others = _by_round(rows, target.row), _by_round(rows, target.other)
    found = []
    for number in sorted(mine.keys() & others.keys()):
        value, base = mine[number].get(target.figure), _other_value(target, mine[number], others[number])
        if value is not None and base:
            found.append(_relative(target, mine[number], value / base))
    return [ratio for ratio in found if ratio is not None]


def _relative(target: Target, row: dict, ratio: float) -> float | None:
    """The ratio against what it should be: divided by ``per``, or as a share of the ``ideal`` gain."""
    if target.per is not None:
        expected = row.get(target.per)
        ratio = ratio / expected if expected else None
    if target.ideal is not None and ratio is not None:
        ideal = row.get(target.ideal)
        ratio = (ratio - 1) / (ideal - 1) if ideal and ideal != 1 else None
    return ratio


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
                "bound": target.bound,
                "limit_text": target.limit_text(),
                "ratio": spread(found),
                "verdict": verdict(found, target.limit, target.bound),
            }
        )
    return judged
