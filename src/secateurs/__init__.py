"""secateurs: prune large language models one-shot (magnitude, Wanda; unstructured and N:M)."""

from .api import evaluate, prune, run_evaluation, run_prune
from .data import calibration_windows, evaluation_ids, load_corpus
from .errors import SecateursError
from .export import load, pack, save_packed, unpack
from .models import load_model
from .recipe import Recipe
from .sweep import run_sweep

__all__ = [
    "Recipe",
    "SecateursError",
    "calibration_windows",
    "evaluate",
    "evaluation_ids",
    "load",
    "load_corpus",
    "load_model",
    "pack",
    "prune",
    "run_evaluation",
    "run_prune",
    "run_sweep",
    "save_packed",
    "unpack",
]
__version__ = "0.1.0"
