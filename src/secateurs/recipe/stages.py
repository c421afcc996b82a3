"""Stages of a recipe: each is None (off) or a small frozen dataclass of its own settings. A stage may be given as
the dataclass itself, its name (``"owl"``), or a dict of its name and settings (``{"name": "owl", "lam": 0.1}``;
a stage with one kind, such as ``ebft``, needs no name); ``stage_dict`` writes it back as such a dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..errors import RecipeError
from ..report.serialize import to_json_value

# a stage's name -> its class (None: the stage is off), or a RecipeError
Resolve = Callable[[str], type | None]


def single(cls: type) -> Resolve:
    """The resolver of a stage with one kind: any name (or none) is that class."""
    return lambda name: cls


def build_stage(key: str, value: Any, resolve: Resolve, kinds: tuple[type, ...]) -> Any:
    """The stage ``key`` of a recipe from ``value`` (see the module docstring); ``kinds``: the classes it may be.
    Errors name the stage's fields as ``{key.field}``."""
    if value is None or isinstance(value, kinds):
        return value
    if isinstance(value, str):
        name, settings = value, {}
    elif isinstance(value, dict):
        settings = dict(value)
        name = settings.pop("name", None)
    else:
        raise RecipeError(f"{{{key}}} {value!r} is not a name or a mapping of settings: give e.g. a name")
    cls = resolve(name if name is not None else "")
    if cls is None:
        return None
    if getattr(cls, "path_named", False) and name not in (None, cls.name) and "path" not in settings:
        settings["path"] = name  # a file given by its path
    return _construct(key, cls, settings)


def _construct(key: str, cls: type, settings: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise RecipeError(f"{{{key}.{unknown[0]}}} is not a setting of {_label(cls)} (its settings: {known})")
    missing = [
        name
        for name, f in fields.items()
        if name not in settings and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{_label(cls)} needs {{{key}.{missing[0]}}}: give it")
    try:
        return cls(**settings)
    except RecipeError as error:
        raise error.within(key) from None


def _label(cls: type) -> str:
    name = getattr(cls, "name", None)
    return f"{name!r}" if isinstance(name, str) else cls.__name__


def stage_dict(value: Any) -> Any:
    """A stage as a recipe file holds it: None, or a dict of its name (when its class has one) and settings."""
    if value is None or not dataclasses.is_dataclass(value):
        return to_json_value(value)
    settings = {f.name: to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    name = getattr(type(value), "name", None)
    return {"name": name, **settings} if isinstance(name, str) else settings
