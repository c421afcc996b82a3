"""secateurs: prune large language models one-shot (magnitude, Wanda, RIA, SparseGPT; unstructured and N:M;
width and depth), evaluate them, and save them as smaller checkpoints.

    import secateurs
    model, tokenizer = secateurs.load("path/to/model")
    recipe = secateurs.load_recipe({"method": "wanda", "sparsity": 0.5})
    report = secateurs.prune(model, recipe, calibration_token_ids)
    secateurs.save(model, tokenizer, "pruned", report)
"""

from .allocation import Owl, RulesFile, Schedule
from .data import Calibration, calibration_sample, calibration_windows, evaluation_ids, load_corpus
from .errors import SecateursError
from .evaluate import Evaluation
from .io import load, pack, save, unpack
from .methods import DSnoT, Magnitude, Method, ObsIter, ObsSeq, Ria, ScoreMethod, SparseGPT, Wanda, register_method
from .pipeline import EvalJob, PruneJob, evaluate, prune, run_evaluation, run_prune
from .recipe import SparseRecipe, StructuredRecipe, load_recipe
from .report import Report
from .structured import Depth, Width
from .sweep import SweepJob, run_sweep
from .tuning import Distill, Ebft

__all__ = [
    "Calibration",
    "DSnoT",
    "Depth",
    "Distill",
    "Ebft",
    "EvalJob",
    "Evaluation",
    "Magnitude",
    "Method",
    "ObsIter",
    "ObsSeq",
    "Owl",
    "PruneJob",
    "Report",
    "Ria",
    "RulesFile",
    "Schedule",
    "ScoreMethod",
    "SecateursError",
    "SparseGPT",
    "SparseRecipe",
    "StructuredRecipe",
    "SweepJob",
    "Wanda",
    "Width",
    "calibration_sample",
    "calibration_windows",
    "evaluate",
    "evaluation_ids",
    "load",
    "load_corpus",
    "load_recipe",
    "pack",
    "prune",
    "register_method",
    "run_evaluation",
    "run_prune",
    "run_sweep",
    "save",
    "unpack",
]
__version__ = "0.1.0"
