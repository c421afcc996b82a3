"""Calibration and evaluation text -> token windows.

Sampling follows the Wanda and SparseGPT reference code (docs/benchmarks.md, protocol Q-CPU): with
``random.Random(seed)``, a document corpus (C4, .jsonl) draws a random document, skips it unless it has
more than ``seqlen`` tokens, and takes ``seqlen`` tokens from a random offset; a running text (WikiText-2,
PTB, .txt, builtin) is tokenized once and windows are taken from random offsets.
"""

from __future__ import annotations

import ast
import functools
import json
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from .checks import check_whole
from .errors import CalibrationError, RecipeError

NAMED_SETS = ("c4", "wikitext2", "ptb", "builtin")


@dataclass
class Corpus:
    """Either separate documents (sampled one at a time) or one running text."""

    name: str
    documents: list[str] | None = None
    text: str | None = None


@dataclass(frozen=True)
class Calibration:
    """What the walk calibrates on: ``nsamples`` windows of ``seqlen`` tokens from ``source`` (a named set, a
    ``.txt``/``.jsonl`` file, or ``builtin``), drawn with ``random.Random(seed)``."""

    source: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        check_whole(self.nsamples, "nsamples", 1, "128")
        check_whole(self.seqlen, "seqlen", 2, "2048")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RecipeError(f"{{seed}} {self.seed!r} is not a whole number: give one, e.g. 0")
        object.__setattr__(self, "source", str(self.source))

    def windows(self, corpus: Corpus, tokenizer: object) -> torch.Tensor:
        return calibration_windows(corpus, tokenizer, self.nsamples, self.seqlen, self.seed)

    def sample(self, corpus: Corpus, tokenizer: object) -> tuple[torch.Tensor, list[int] | None]:
        return calibration_sample(corpus, tokenizer, self.nsamples, self.seqlen, self.seed)


def _from_hub(name: str, *args: str, **kwargs: str):  # noqa: ANN202
    from .extras import require

    load_dataset = require("datasets").load_dataset
    try:
        return load_dataset(*args, **kwargs)
    except Exception as error:  # datasets raises many kinds when offline or the set moved
        raise CalibrationError(
            f"could not load {name!r} from the Hugging Face Hub ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}): without network, give a local file "
            "(.txt or .jsonl with a 'text' field) or use 'builtin'"
        ) from error


def wikitext_rows_text(raw: str) -> str:
    """WikiText-2 raw file -> the text the papers evaluate: its lines are the Hugging Face rows (a line that
    is exactly ' \\n' becomes ''), joined with blank lines."""
    rows = ["" if line == " \n" else line for line in raw.splitlines(keepends=True)]
    return "\n\n".join(rows)


@functools.lru_cache(maxsize=2)
def builtin_text(split: str = "train") -> str:
    """Documentation that ships with every Python, so the demo and tests need no network.

    ``train`` (calibration): the standard library's docstrings; any other split (evaluation): the
    interpreter's help topics (``pydoc_data``), a different text.
    """
    if split != "train":
        import pydoc_data.topics

        return "\n\n".join(pydoc_data.topics.topics.values())
    parts = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if {"test", "tests", "site-packages", "idlelib"} & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                docstring = ast.get_docstring(node)
                if docstring and len(docstring) > 200:
                    parts.append(docstring)
    return "\n\n".join(parts)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CalibrationError(f"cannot read {path}: {error.strerror}: check the path") from error
    if b"\x00" in data[:4096]:
        raise CalibrationError(f"{path} looks binary: give a UTF-8 text file (.txt) or JSON lines (.jsonl)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CalibrationError(f"{path} is not UTF-8 text: convert it, or give another file") from None


def _read_jsonl(path: Path) -> list[str]:
    documents = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CalibrationError(
                f"{path} line {number} is not JSON: give one JSON object per line with a 'text' field"
            ) from None
        text = record.get("text") if isinstance(record, dict) else record if isinstance(record, str) else None
        if not isinstance(text, str):
            raise CalibrationError(f"{path} line {number} has no 'text' field: each line needs one")
        documents.append(text)
    return documents


def load_corpus(source: str | Path, split: str = "train") -> Corpus:
    """A named set (``c4``, ``wikitext2``, ``ptb``, ``builtin``) or a local ``.txt`` / ``.jsonl`` file."""
    name = str(source)
    if name == "builtin":
        return Corpus(name, text=builtin_text(split))
    if name == "c4":
        files = {
            "train": "en/c4-train.00000-of-01024.json.gz",
            "validation": "en/c4-validation.00000-of-00008.json.gz",
        }
        data = _from_hub(name, "allenai/c4", data_files={split: files[split]}, split=split)
        return Corpus(name, documents=list(data["text"]))
    if name == "wikitext2":
        data = _from_hub(name, "Salesforce/wikitext", "wikitext-2-raw-v1", split=split)
        return Corpus(name, text="\n\n".join(data["text"]))
    if name == "ptb":
        data = _from_hub(name, "ptb-text-only/ptb_text_only", "penn_treebank", split=split)
        return Corpus(name, text=" ".join(data["sentence"]))
    path = Path(name).expanduser()
    if not path.exists():
        raise CalibrationError(
            f"{name} is neither a file nor a named set: give a .txt or .jsonl file, or one of {', '.join(NAMED_SETS)}"
        )
    if path.suffix in (".jsonl", ".json"):
        documents = _read_jsonl(path)
        if not any(d.strip() for d in documents):
            raise CalibrationError(f"{path} holds no text: give a file with some documents")
        return Corpus(path.name, documents=documents)
    text = _read_text(path)
    if not text.strip():
        raise CalibrationError(f"{path} is empty: give a file with text")
    if path.name.startswith("wiki.") and path.suffix == ".raw":
        text = wikitext_rows_text(text)
    return Corpus(path.name, text=text)


def _encode(tokenizer: object, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def calibration_windows(corpus: Corpus, tokenizer: object, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[nsamples, seqlen]`` token ids, sampled as the Wanda/SparseGPT reference code does."""
    return calibration_sample(corpus, tokenizer, nsamples, seqlen, seed)[0]


def calibration_sample(
    corpus: Corpus, tokenizer: object, nsamples: int, seqlen: int, seed: int = 0
) -> tuple[torch.Tensor, list[int] | None]:
    """``calibration_windows`` with, for a document corpus, the index of the document each window came from (so
    that an evaluation can leave them out: text the model was calibrated on says little about how it
    generalises); None for a running text."""
    if nsamples < 1 or seqlen < 2:
        raise CalibrationError(f"nsamples={nsamples}, seqlen={seqlen}: both must be positive (seqlen >= 2)")
    needed = nsamples * seqlen
    rng = random.Random(seed)
    if corpus.text is not None:
        ids = _encode(tokenizer, corpus.text)
        if len(ids) < needed or len(ids) <= seqlen + 1:
            raise CalibrationError(
                f"{corpus.name} holds {len(ids)} tokens, fewer than nsamples x seqlen = {needed}: "
                "give more text, or lower --nsamples or --seqlen"
            )
        windows = []
        for _ in range(nsamples):
            start = rng.randint(0, len(ids) - seqlen - 1)
            windows.append(ids[start : start + seqlen])
        return torch.tensor(windows, dtype=torch.long), None

    documents = corpus.documents or []
    if sum(len(d) for d in documents) < needed:  # a token spans at least one character
        raise CalibrationError(
            f"{corpus.name} holds {sum(len(d) for d in documents)} characters in {len(documents)} documents, "
            f"too little for nsamples x seqlen = {needed} tokens: give more text, or lower --nsamples or --seqlen"
        )
    lengths: dict[int, int] = {}
    windows, used = [], []
    while len(windows) < nsamples:
        index = rng.randint(0, len(documents) - 1)
        if lengths.get(index, seqlen + 1) <= seqlen:
            if len(lengths) == len(documents) and max(lengths.values()) <= seqlen:
                raise CalibrationError(
                    f"no document of {corpus.name} has more than seqlen={seqlen} tokens (the longest has "
                    f"{max(lengths.values())}): lower --seqlen or give longer documents"
                )
            continue
        ids = _encode(tokenizer, documents[index])
        lengths[index] = len(ids)
        if len(ids) <= seqlen:
            continue
        start = rng.randint(0, len(ids) - seqlen - 1)
        windows.append(ids[start : start + seqlen])
        used.append(index)
    return torch.tensor(windows, dtype=torch.long), used


EVALUATION_SPLITS = {"wikitext2": "test", "ptb": "test", "c4": "validation", "builtin": "test"}


def evaluation_ids(source: str | Path, tokenizer: object, seqlen: int) -> torch.Tensor:
    """``[1, tokens]``: the evaluation text tokenized once, as in the papers.

    C4 follows SparseGPT: the first 1,100 validation documents joined by spaces, cut to 256 windows.
    """
    name = str(source)
    corpus = load_corpus(name, split=EVALUATION_SPLITS.get(name, "train"))
    if corpus.documents is not None:
        documents = corpus.documents[:1100] if name == "c4" else corpus.documents
        ids = _encode(tokenizer, " ".join(documents))
        if name == "c4":
            ids = ids[: 256 * seqlen]
    else:
        ids = _encode(tokenizer, corpus.text or "")
    if len(ids) < seqlen:
        raise CalibrationError(
            f"{corpus.name} holds {len(ids)} tokens, less than one window of {seqlen}: lower --seqlen"
        )
    return torch.tensor([ids], dtype=torch.long)
