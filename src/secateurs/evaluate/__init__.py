"""Evaluation: perplexity (and, later, zero-shot tasks and speed)."""

from .perplexity import perplexity

__all__ = ["perplexity"]
