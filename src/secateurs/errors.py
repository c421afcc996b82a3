"""Errors a user can cause. Each message says what to do about it."""

from __future__ import annotations

import re
from collections.abc import Callable

# A recipe field named in a message: ``{sparsity}``, ``{method.blocksize}``.
_FIELD = re.compile(r"\{([a-z_][a-z0-9_.]*)\}")


class SecateursError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class RecipeError(SecateursError, ValueError):
    """The requested method, sparsity or pattern is not valid.

    The message may name recipe fields as ``{path}`` (``{sparsity}``, ``{allocation.lam}``): the library shows the
    field's path, the command line the flag that sets it (``render``). ``within(stage)`` prefixes the paths of an
    error raised inside a stage's own configuration with the stage's name in the recipe."""

    def __init__(self, template: str) -> None:
        self.template = template
        super().__init__(self.render(lambda path: path))

    def render(self, name: Callable[[str], str]) -> str:
        return _FIELD.sub(lambda match: name(match.group(1)), self.template)

    def within(self, stage: str) -> RecipeError:
        error = RecipeError(_FIELD.sub(lambda match: "{" + f"{stage}.{match.group(1)}" + "}", self.template))
        error.__cause__ = self.__cause__
        return error


class ModelLoadError(SecateursError):
    """The model could not be found or read."""


class UnsupportedModelError(SecateursError):
    """The model is readable but secateurs cannot prune it (not a causal LM, no decoder blocks...)."""


class CalibrationError(SecateursError):
    """The calibration or evaluation text is missing, unreadable or too short."""


class NumericalError(SecateursError):
    """NaN or Inf in weights or statistics."""


class OutputError(SecateursError):
    """The output folder cannot be written."""


class DeviceError(SecateursError):
    """The requested device is not available."""


class MissingExtraError(SecateursError):
    """A feature needs an optional dependency that is not installed."""


class EvaluationError(SecateursError):
    """A zero-shot task cannot be found or loaded, or the evaluation extra is missing."""


class PackedFormatError(SecateursError):
    """A packed checkpoint does not match the description in its config.json (damaged, altered, truncated)."""


class PatternViolationError(SecateursError):
    """A weight is not N:M sparse where an N:M pattern is claimed."""


class SemiStructuredError(SecateursError):
    """2:4 sparse tensor-core kernels cannot be used here (no CUDA, GPU too old, dtype, weights not 2:4)."""


class ResumeError(SecateursError):
    """An interrupted run cannot be resumed: no saved state, or one from other settings, or damaged."""
