"""From the flags a user gave to the settings they stand for: the recipe's stages (a flag that no chosen stage
has is refused, naming what it goes with) and a job's fields."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RecipeError
from ..methods import Wanda
from ..recipe import Recipe, load_recipe, read_recipe_file, recipe_class
from ..recipe.presets import read_preset
from .parser import Flag, stage_classes

Given = list[tuple[Flag, Any]]
CHOSEN = ("method", "update", "allocation", "refine")  # stages a flag chooses by name
# stage -> the flag that chooses or switches it on (what a flag of the stage "goes with")
AUTO = ("calibration",)  # stages a flag of theirs switches on
SWITCHES = {"update": "--update", "refine": "--refine dsnot", "ebft": "--ebft-epochs", "distill": "--distill-epochs"}


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _merge(spec: dict[str, Any], key: str, value: Any) -> None:
    """A flag's stage over a recipe file's: the same kind is updated, another kind replaces it."""
    old = spec.get(key)
    old = {"name": old} if isinstance(old, str) else old
    same = isinstance(old, dict) and isinstance(value, dict) and old.get("name", value.get("name")) == value.get("name")
    spec[key] = {**old, **value} if same else value


def _recipe_path(row: Flag) -> str:
    return row.paths[0].removeprefix("recipe.")


def _choose_stages(spec: dict[str, Any], given: Given) -> None:
    """The stages chosen by name (``--allocation owl``) or switched on and off (``--ebft-epochs``)."""
    for row, value in given:
        path = _recipe_path(row)
        if path in CHOSEN and row.convert is None:
            _merge(spec, path, None if value == "uniform" else {"name": value})
        elif row.off is not None:
            stage, field = path.split(".")
            _merge(spec, stage, None if value == row.off else {field: value})


def _is_choice(row: Flag) -> bool:
    return (_recipe_path(row) in CHOSEN and row.convert is None) or row.off is not None


def _apply(spec: dict[str, Any], recipe: type, row: Flag, value: Any) -> bool:
    """Put the value of ``row`` in the first of its fields that the chosen stages have; False when none has."""
    settings = row.convert(value) if row.convert else None
    for path in row.paths:
        stage, _, field = path.removeprefix("recipe.").partition(".")
        if not field and settings is None:
            if stage in _field_names(recipe):
                spec[stage] = value
                return True
            continue
        current = spec.get(stage, {} if stage in AUTO else None)
        if stage not in recipe.stages or current is None:
            continue
        current = {"name": current} if isinstance(current, str) else current
        cls = recipe.stages[stage][0](current.get("name") or "")
        wanted = settings or {field: value}
        if cls is not None and set(wanted) <= _field_names(cls):
            spec[stage] = {**current, **wanted}
            return True
    return False


def _where(row: Flag) -> str:
    """What a flag's stage goes with: ``--method sparsegpt``, ``--allocation owl``, ``--ebft-epochs``..."""
    found = []
    for path in row.paths:
        stage, _, field = path.removeprefix("recipe.").partition(".")
        field = field or (row.fields[0] if row.fields else "")
        if not field:
            found.append("a sparse --method")
        elif stage in ("method", "allocation"):
            names = [cls.name for cls in stage_classes(stage) if field in _field_names(cls)]
            found.append(f"--{stage} {' or '.join(names)}")
        else:
            found.append(SWITCHES.get(stage, f"--{stage}"))
    return " or ".join(found)


def _refusal(rows: list[Flag], method: Any) -> str:
    """One line for the flags no chosen stage has."""
    name = method.get("name") if isinstance(method, dict) else method
    wheres = {row.name: _where(row) for row in rows}
    chosen = f"not --method {name or 'wanda'}"
    if len(set(wheres.values())) == 1:
        flags, where = ", ".join(wheres), next(iter(wheres.values()))
        if len(wheres) == 1:
            return f"{flags} goes with {where}, {chosen}: drop it"
        return f"{flags} go with {where}, {chosen}: drop them"
    parts = ", ".join(f"{flag} goes with {where}" for flag, where in wheres.items())
    return f"{parts}; {chosen}: drop them, or choose what they go with"


def recipe_spec(given: Given, base: dict[str, Any]) -> dict[str, Any]:
    """The recipe's settings: ``base`` (a recipe file's, or empty) with the given ``recipe.*`` flags over it."""
    spec = dict(base)
    spec.setdefault("method", Wanda.name)
    given = [(row, value) for row, value in given if row.paths[0].startswith("recipe.")]
    _choose_stages(spec, given)
    recipe = recipe_class(spec.get("method", "wanda"))
    refused = [row for row, value in given if not _is_choice(row) and not _apply(spec, recipe, row, value)]
    if refused:
        raise RecipeError(_refusal(refused, spec.get("method")))
    return spec


def build_recipe(given: Given, recipe_file: str | None, preset: str | None = None) -> Recipe:
    """The recipe the flags (over ``recipe_file``, a YAML/JSON recipe or a ``secateurs.json``, or over a
    ``preset``) describe."""
    if recipe_file and preset:
        raise RecipeError("--recipe and --preset both give the recipe to start from: give one")
    base = read_preset(preset) if preset else read_recipe_file(recipe_file) if recipe_file else {}
    if "schema_version" in base and "recipe" in base:  # a report: the recipe that made it
        base = base["recipe"]
    return load_recipe(recipe_spec(given, base))


def fields_of(given: Given, root: str) -> dict[str, Any]:
    """The given ``root.*`` flags as nested fields: ``job.evaluation.seqlen`` -> ``{"evaluation": {"seqlen": ..}}``;
    lists become tuples."""
    fields: dict[str, Any] = {}
    for row, value in given:
        path = row.paths[0]
        if not path.startswith(f"{root}."):
            continue
        *stages, name = path.removeprefix(f"{root}.").split(".")
        target = fields
        for stage in stages:
            target = target.setdefault(stage, {})
        target[name] = tuple(value) if isinstance(value, list) else value
    return fields
