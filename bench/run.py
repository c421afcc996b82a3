"""One command, one run, one table: every configuration asked for, with the peer runs and floors its targets
compare it with, measured on this host in rounds, the tools interleaved so a drifting host moves them alike.

    python bench/run.py q-cpu --only wanda-50 sparsegpt-50      # + llmcompressor's, + the floor, 3 rounds
    python bench/run.py q-cpu --list                            # the configurations and their targets

Each run writes its own file, bench/results/runs/<run id>.json, rewritten after every row (a run cut short
keeps what it measured and says it is incomplete). Every row records its round, start and end time and the
versions of the tool that produced it; the file records the host, the commit (and whether the tree was clean)
and the exact command. Quality (perplexity) is measured in the first round; later rounds check that the same
weights came out. Verdicts (bench/verdict.py) compare rows of this run only.

    python bench/run.py --rejudge bench/results/runs/<run id>.json

derives the quality, the spreads and the verdicts again from that file's rows (after a fix to this script or
to the verdict rules; the measured figures are not touched, and the file says when and by which commit it
was re-judged).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, git_state, utc_now  # noqa: E402
from verdict import QUALITY, judge, spread  # noqa: E402

RUNS = ROOT / "bench" / "results" / "runs"


def host() -> dict:
    from secateurs.report import machine

    return {**machine(), "kernel": platform.release(), "node": platform.node()}


def provenance(protocol: str, run_id: str) -> dict:
    """What a reader needs to re-check the run: where, from which commit, by which command."""
    return {
        "protocol": protocol,
        "run_id": run_id,
        "host": host(),
        **git_state(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "start": utc_now(),
        "end": None,
        "complete": False,
    }


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(temporary, path)


def _rotated(names: list[str], round_number: int) -> list[str]:
    """Each round starts one configuration later, so no tool always runs first (or always after the same one)."""
    shift = round_number % len(names)
    return names[shift:] + names[:shift]


def _measure_round(protocol, results: dict, number: int, path: Path) -> None:  # noqa: ANN001
    once = getattr(protocol, "once", ())  # rows whose targets read only their (deterministic) quality
    for name in _rotated(results["names"], number):
        if number > 0 and name in once:
            continue
        print(f"[run {results['run_id']}] round {number + 1}/{results['rounds']}: {name} ...", file=sys.stderr)
        start = utc_now()
        # quality in the first round, unless the protocol measures it after the rounds (``quality``)
        evaluate = name not in results["quality"] and not hasattr(protocol, "quality")
        figures = protocol.measure(name, evaluate=evaluate)
        _quality(results, name, figures)
        row = {"run_id": results["run_id"], "name": name, "round": number, "start": start, "end": utc_now(), **figures}
        results["rows"].append(row)
        _write(path, results)


def _measure_quality(protocol, results: dict, path: Path) -> None:  # noqa: ANN001
    """Quality after the timed rounds (a protocol whose evaluation is long keeps it out of the rounds, so each
    round's timings are minutes apart, not an evaluation apart); the same weights as the rounds timed."""
    for name in results["names"]:
        print(f"[run {results['run_id']}] quality: {name} ...", file=sys.stderr)
        measured = protocol.quality(name)
        known = results["quality"].setdefault(name, {})
        if known.get("weights_sha256") not in (None, measured.get("weights_sha256")):
            sys.exit(f"{name}: the weights evaluated are not the ones timed: run again")
        known.update(measured)
        _write(path, results)


def _quality(results: dict, name: str, figures: dict) -> None:
    """A configuration's first perplexity is its quality (the steps print it as ``ppl``, beside the SHA-256 of
    the weights); the rounds after it, run without evaluation, must write the same weights."""
    known = results["quality"].get(name)
    if known is None and (figures.get("ppl") is not None or figures.get("weights_sha256") is not None):
        results["quality"][name] = {key: figures.get(key) for key in (*QUALITY, "weights_sha256") if key in figures}
    elif known is not None and "weights_sha256" in figures:
        figures["same_weights"] = figures["weights_sha256"] == known.get("weights_sha256")


def _judged(results: dict, targets: list) -> dict:  # noqa: ANN001
    results.update(summary=summary(results))
    results["verdicts"] = judge(targets, results["rows"], results["quality"])
    return results


def rejudge(path: Path) -> dict:
    """The quality, spreads and verdicts of a complete run's file derived again from its rows."""
    from protocols import PROTOCOLS

    results = json.loads(path.read_text())
    if not results.get("complete"):
        sys.exit(f"{path} is not a complete run: measure it again")
    results["quality"] = {}
    for row in sorted(results["rows"], key=lambda row: row["round"]):
        _quality(results, row["name"], row)
    results["rejudged"] = {"at": utc_now(), **git_state()}
    _write(path, _judged(results, PROTOCOLS[results["protocol"]]().targets))  # a protocol may set its own
    return results


TIMED = ("prune_s", "peak_rss_mib", "one_pass_s")  # protocol Q-CPU's (a protocol names its own in ``figures``)


def summary(results: dict) -> dict:
    """Per configuration: each measured figure's median, min and max over the rounds."""
    figures = results.get("figures", TIMED)
    out: dict[str, dict] = {}
    for row in results["rows"]:
        entry = out.setdefault(row["name"], {"tool": row.get("tool"), "versions": row.get("versions", {})})
        for figure in figures:
            if row.get(figure) is not None:
                entry.setdefault(figure, []).append(row[figure])
    for entry in out.values():
        for figure in figures:
            if figure in entry:
                entry[figure] = spread(entry[figure])
    return out


def main() -> None:
    from protocols import PROTOCOLS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("protocol", nargs="?", choices=sorted(PROTOCOLS))
    parser.add_argument("--rejudge", type=Path, metavar="RUN.json", help="derive a run's verdicts again, run nothing")
    parser.add_argument("--only", nargs="+", help="configurations (their peers and floors are added)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every configuration (default 3, at least 3)")
    parser.add_argument("--list", action="store_true", help="print the configurations and targets, run nothing")
    parser.add_argument("--out", type=Path, help="the results file (default bench/results/runs/<run id>.json)")
    args = parser.parse_args()
    if args.rejudge:
        _print_verdicts(rejudge(args.rejudge), args.rejudge)
        return
    if args.protocol is None:
        parser.error("give a protocol (or --rejudge RUN.json)")
    protocol = PROTOCOLS[args.protocol]()
    if args.list:
        for target in protocol.targets:
            print(f"{target.row:40s} {target.figure:20s} / {target.other:32s} {target.limit_text()}")
        return
    if args.rounds < 3:
        sys.exit("--rounds: timings need at least 3 rounds (a median with its spread)")
    names = protocol.selection(args.only)
    protocol.prepare()
    run_id = f"{args.protocol}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    path = args.out or RUNS / f"{run_id}.json"
    results = {**provenance(args.protocol, run_id), **protocol.facts, "rounds": args.rounds, "names": names}
    results["figures"] = list(getattr(protocol, "figures", TIMED))
    if getattr(protocol, "trained", None):
        results["trained"] = [list(pair) for pair in protocol.trained if set(pair) <= set(names)]
    results.update(rows=[], quality={})
    for number in range(args.rounds):
        _measure_round(protocol, results, number, path)
    if hasattr(protocol, "quality"):
        _measure_quality(protocol, results, path)
    results.update(end=utc_now(), complete=True)
    _write(path, _judged(results, protocol.targets))
    _print_verdicts(results, path)


def _print_verdicts(results: dict, path: Path) -> None:
    for line in results["verdicts"]:
        ratio, limit = line["ratio"], line.get("limit_text", f"<= {line['limit']}")
        print(
            f"{line['label']}: {ratio['median']:.3f} [{ratio['min']:.3f}, {ratio['max']:.3f}] "
            f"against {limit}: {line['verdict']}"
        )
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
