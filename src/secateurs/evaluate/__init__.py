"""Evaluation: perplexity and zero-shot tasks through lm-eval (and, later, speed)."""

from .perplexity import perplexity
from .zero_shot import PAPER_TASKS, load_tasks, zero_shot

__all__ = ["PAPER_TASKS", "load_tasks", "perplexity", "zero_shot"]
