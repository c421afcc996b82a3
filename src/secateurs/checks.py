"""The checks every configuration's fields share; each raises a RecipeError naming the field as ``{field}``."""

from __future__ import annotations

import math

from .errors import RecipeError


def is_number(value: object) -> bool:
    """An int or float that is finite (a bool is not a number here, though Python counts it as one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive(value: object, field: str, example: str) -> None:
    if not (is_number(value) and value > 0):
        raise RecipeError(f"{{{field}}} {value!r} is not a positive number: give one, e.g. {example}")


def check_whole(value: object, field: str, least: int, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise RecipeError(f"{{{field}}} {value!r} is not a whole number >= {least}: give one, e.g. {example}")


def check_fraction(value: object, field: str, example: str = "0.5") -> None:
    """A fraction in [0, 1), such as a sparsity."""
    if not is_number(value):
        raise RecipeError(f"{{{field}}} {value!r} is not a number: give a fraction such as {example}")
    if not 0 <= value < 1:
        raise RecipeError(f"{{{field}}} {value} is outside [0, 1): give the fraction to remove, e.g. {example}")


def check_choice(value: object, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecipeError(f"{{{field}}} {value!r} is not known: choose {' or '.join(choices)}")
