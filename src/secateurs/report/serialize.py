"""Dataclasses <-> JSON values, and their JSON Schema, from the classes' type hints: one place that knows how a
field of each type is written, read back and described."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

_PRIMITIVES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def to_json_value(value: Any) -> Any:
    """A dataclass as a dict of its init fields, less the optional ones left at None; lists, dicts, values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json_value(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.init and not (f.default is None and getattr(value, f.name) is None)
        }
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    return value


def _optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arguments) == 1 and len(typing.get_args(hint)) == 2:
            return arguments[0], True
    return hint, False


def from_json_value(hint: Any, value: Any) -> Any:
    """``value`` (parsed JSON) read as the type ``hint``: dataclasses by field, lists and dicts item by item."""
    hint, optional = _optional(hint)
    if value is None and optional:
        return None
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        known = {f.name for f in dataclasses.fields(hint) if f.init}
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{hint.__name__} has no field {sorted(unknown)[0]!r}")
        return hint(**{name: from_json_value(hints[name], item) for name, item in value.items()})
    if origin is list:
        (item,) = typing.get_args(hint)
        return [from_json_value(item, element) for element in value]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {key: from_json_value(item, element) for key, element in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def json_schema(cls: type) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of the dataclass ``cls``; the dataclasses it holds go in ``$defs``."""
    definitions: dict[str, Any] = {}
    _described(cls, definitions)
    root = definitions.pop(cls.__name__)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **root, "$defs": definitions}


def _schema(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    hint, optional = _optional(hint)
    described = _described(hint, definitions)
    return {"anyOf": [described, {"type": "null"}]} if optional else described


def _described(hint: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if hint.__name__ not in definitions:
            definitions[hint.__name__] = {}  # a placeholder first: a class may refer to itself
            definitions[hint.__name__] = _object(hint, definitions)
        return {"$ref": f"#/$defs/{hint.__name__}"}
    if origin is list:
        return {"type": "array", "items": _schema(typing.get_args(hint)[0], definitions)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(typing.get_args(hint)[1], definitions)}
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    return {}  # Any


def _object(cls: type, definitions: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    missing = dataclasses.MISSING
    described: dict[str, Any] = {"type": "object"}
    if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}("):  # dataclass writes a signature otherwise
        described["description"] = " ".join(cls.__doc__.split())
    described["properties"] = {f.name: _schema(hints[f.name], definitions) for f in fields}
    described["required"] = [f.name for f in fields if f.default is missing and f.default_factory is missing]
    described["additionalProperties"] = False
    return described
