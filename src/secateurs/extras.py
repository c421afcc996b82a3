"""Optional dependencies: the core install prunes and evaluates Hugging Face folders; GGUF files, hub data sets,
zero-shot tasks, plots, LoRA and llama.cpp each need an extra. A feature whose extra is missing stops with one line that
says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

# module -> (extra, what needs it)
EXTRAS = {
    "gguf": ("gguf", "reading or writing a GGUF file"),
    "accelerate": ("gguf", "reading a GGUF file"),  # transformers' GGUF loader needs it
    "datasets": ("datasets", "named data sets from the Hugging Face Hub (c4, wikitext2, ptb)"),
    "lm_eval": ("eval", "zero-shot tasks"),
    "matplotlib": ("plots", "plots"),
    "peft": ("train", "LoRA fine-tuning"),
    "llama_cpp": ("llama", "checking a GGUF file in llama.cpp"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or stop with the ``pip install "secateurs[extra]"`` line that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = module.split(".")[0]
        extra, feature = EXTRAS[package]
        raise MissingExtraError(
            f'{feature} needs {package} ({error}): install it with pip install "secateurs[{extra}]"'
        ) from error


def available(module: str) -> bool:
    """Whether ``module`` can be imported (for features that are skipped, not refused, without it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
