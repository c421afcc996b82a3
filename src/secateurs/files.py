"""Settings files a user writes: YAML or JSON mappings (recipes, allocation rules), read with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import RecipeError


def read_mapping(path: str | Path, what: str, example: str) -> dict[str, Any]:
    """The non-empty mapping the YAML (or ``.json``) file ``path`` holds; ``what`` the file is and an ``example``
    of its content go in the errors."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as error:
        raise RecipeError(f"cannot read the {what} {path}: {error.strerror}: check the path") from error
    try:
        if path.suffix == ".json":
            mapping = json.loads(text)
        else:
            import yaml

            mapping = yaml.safe_load(text)
    except Exception as error:  # yaml and json raise their own kinds
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise RecipeError(f"{path} is not valid {kind} ({error}): fix the {what}") from error
    if not isinstance(mapping, dict) or not mapping:
        raise RecipeError(f"the {what} {path} must be a mapping, e.g. {example}")
    return mapping
