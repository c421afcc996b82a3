"""A pytest plugin (conftest loads it): every ``secateurs.json`` a test writes under its ``tmp_path`` is validated
against the JSON Schema shipped in the package, when the test ends."""

import json

import jsonschema
import pytest

from secateurs.report import SCHEMA_FILE

SCHEMA = json.loads(SCHEMA_FILE.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@pytest.fixture(autouse=True)
def _reports_follow_the_schema(request):
    # asked for before the test runs, so tmp_path is torn down after this check
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is None:
        return
    for path in folder.rglob("secateurs.json"):
        errors = sorted(VALIDATOR.iter_errors(json.loads(path.read_text())), key=lambda e: list(e.path))
        assert not errors, f"{path} does not follow the report schema: {errors[0].message} at {list(errors[0].path)}"


@pytest.fixture(autouse=True, scope="session")
def _every_report_follows_the_schema(tmp_path_factory):
    """The reports module- and session-scoped fixtures wrote, which no test's ``tmp_path`` holds."""
    yield
    for path in tmp_path_factory.getbasetemp().rglob("secateurs.json"):
        errors = list(VALIDATOR.iter_errors(json.loads(path.read_text())))
        assert not errors, f"{path} does not follow the report schema: {errors[0].message} at {list(errors[0].path)}"
