"""Tuning after pruning: EBFT (each pruned block fitted to the dense block's or model's output, a hook of the
walk) and distillation (the whole pruned model fitted to the dense model's predictions, after the walk)."""

from .adam import MaskedAdam, TuneSettings, kept_masks
from .distill import Distill, distill
from .ebft import Ebft, EbftTuner, tune_block

__all__ = ["Distill", "Ebft", "EbftTuner", "MaskedAdam", "TuneSettings", "distill", "kept_masks", "tune_block"]
