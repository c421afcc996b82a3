"""The jobs a user runs, as named steps over the library: prune (in memory, or the whole job from a model's
source to a saved folder), evaluate, and the processes of a distributed run."""

from .evaluate import EvalJob, EvalResult, evaluate, run_evaluation
from .options import RunOptions
from .prune import PruneJob, prune, run_prune

__all__ = ["EvalJob", "EvalResult", "PruneJob", "RunOptions", "evaluate", "prune", "run_evaluation", "run_prune"]
