"""Pruning methods. A method knows nothing of models: it sees a ``[out_features, in_features]`` float32 weight
and, where it asks for them, the statistics of that layer's inputs.

Two kinds: a *score* (magnitude, Wanda, RIA) rates each weight and ``patterns`` turns the rates into a mask; a
*solver* (SparseGPT) chooses the mask and updates the remaining weights from the layer Hessian. Each is a frozen
dataclass of its own settings, registered by name (``register_method``); ``solve_layer`` composes a method with
the optional refinement (DSnoT) and OBS update of the recipe.
"""

from __future__ import annotations

from .alps import Alps
from .base import (
    CROSS,
    HESSIAN,
    METHODS,
    NORMS,
    LayerPlan,
    Method,
    ScoreMethod,
    Solution,
    method_class,
    register_method,
    score_mask,
)
from .dsnot import DSnoT
from .magnitude import Magnitude
from .ria import Ria
from .solve import solve_layer
from .sparsegpt import SparseGPT
from .update import UPDATES, ObsIter, ObsSeq, ObsUpdate
from .wanda import Wanda

__all__ = [
    "Alps",
    "CROSS",
    "HESSIAN",
    "METHODS",
    "NORMS",
    "UPDATES",
    "DSnoT",
    "LayerPlan",
    "Magnitude",
    "Method",
    "ObsIter",
    "ObsSeq",
    "ObsUpdate",
    "Ria",
    "ScoreMethod",
    "Solution",
    "SparseGPT",
    "Wanda",
    "method_class",
    "register_method",
    "score_mask",
    "solve_layer",
]
