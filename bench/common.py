"""What every bench script shares: its results file, written atomically with the machine and versions, and
its block of docs/benchmarks.md (or the README's summary), between two markers, rewritten from that file."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC = ROOT / "docs" / "benchmarks.md"


def utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_state() -> dict:
    """The commit and whether the tree differs from it (``--no-optional-locks``: a bench never writes the index;
    untracked files do not count)."""
    import subprocess

    def output(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit, status = output("rev-parse", "HEAD"), output("--no-optional-locks", "status", "--porcelain", "-uno")
    return {"commit": commit, "clean": None if status is None else status == ""}


def write_results(path: Path, results: dict, **facts: object) -> None:
    """``results`` plus ``facts`` (protocol, model...), the machine and the library versions, as JSON; a
    temporary file renamed over ``path``, so an interrupted bench never leaves half a file."""
    from secateurs.report import machine, versions

    results.update(facts, versions=versions(), machine=machine())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(temporary, path)


def read_results(path: Path, *, adding: bool) -> dict:
    """The results file at ``path`` (empty runs when there is none). ``adding``: new figures go in, so a file
    from another machine kind is an error (its times are not comparable with this machine's)."""
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    if adding:
        from secateurs.report import machine

        theirs, ours = results.get("machine", {}).get("cpu"), str(machine()["cpu"])
        if theirs not in (None, ours):
            sys.exit(f"{path} holds figures from {theirs}, not {ours}: name a file with --results")
    return results


def with_block(text: str, begin: str, end: str, body: str) -> str | None:
    """``text`` with ``body`` between the ``begin`` and ``end`` marker lines (the end marker is added the first
    time); None when ``text`` has no ``begin`` marker."""
    block = f"{begin}\n{body}\n{end}"
    if end in text:
        return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    if begin in text:
        return text.replace(begin, block)
    return None


def _linked_from(path: Path, body: str) -> str:
    """Links to bench/ written relative to the page: docs/ pages reach it through ``../``."""
    return body if path.parent == ROOT else body.replace("](bench/", "](../bench/")


def replace_readme_block(begin: str, end: str, body: str, path: Path = DOC) -> bool:
    """Put ``body`` between the markers in ``path`` (docs/benchmarks.md unless named); False when ``path`` has
    no ``begin`` marker."""
    text = with_block(path.read_text(), begin, end, _linked_from(path, body))
    if text is None:
        return False
    path.write_text(text)
    return True


def block_is_current(begin: str, end: str, body: str, path: Path = DOC) -> bool:
    """Whether ``path`` already holds ``body`` between the markers (what ``replace_readme_block`` would write)."""
    text = path.read_text()
    return with_block(text, begin, end, _linked_from(path, body)) == text


def version_notes(results: dict) -> list[str]:
    """README lines naming the rows run under other torch/transformers versions than the file's header (which
    ``write_results`` stamps with the last run's), grouped by version; rows that record no versions are left out."""
    header = (results["versions"].get("torch"), results["versions"].get("transformers"))
    other: dict[tuple, list[str]] = {}
    for name, run in results["runs"].items():
        stamp = (run.get("versions", {}).get("torch"), run.get("versions", {}).get("transformers"))
        if run.get("tool", "secateurs") == "secateurs" and "versions" in run and stamp != header:
            other.setdefault(stamp, []).append(name)
    return [
        f"Run with torch {torch_version}, transformers {transformers_version}: {', '.join(names)}."
        for (torch_version, transformers_version), names in other.items()
    ]
