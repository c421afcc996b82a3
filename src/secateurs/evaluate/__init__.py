"""Evaluation: perplexity on windows of a text, and zero-shot tasks through lm-eval (the ``[eval]`` extra)."""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import check_whole
from .perplexity import perplexity


@dataclass(frozen=True)
class Evaluation:
    """Perplexity on ``dataset`` (wikitext2, c4, ptb, builtin or a text file) in windows of ``seqlen`` tokens, the
    first ``windows`` of them (None: all)."""

    dataset: str
    seqlen: int = 2048
    windows: int | None = None

    def __post_init__(self) -> None:
        check_whole(self.seqlen, "seqlen", 2, "2048")
        if self.windows is not None:
            check_whole(self.windows, "windows", 1, "32")


__all__ = ["Evaluation", "perplexity"]
