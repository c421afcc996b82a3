"""The report's schema: the shipped JSON Schema is the one the classes give, and a report survives its JSON."""

import json

import jsonschema
import pytest

from secateurs.report import (
    SCHEMA_FILE,
    CutLayer,
    EbftRecord,
    LayerRecord,
    Report,
    Size,
    StructuredRecord,
    TunedBlock,
    WalkRecord,
    report_schema,
)


def test_the_shipped_schema_is_the_classes_schema():
    # after changing report/schema.py: python -c "from secateurs.report.schema import write_schema; write_schema()"
    assert json.loads(SCHEMA_FILE.read_text()) == report_schema()


def test_a_report_round_trips_through_json_and_follows_the_schema():
    report = Report(
        recipe={"method": {"name": "sparsegpt", "blocksize": 128, "dampening": 0.01}, "pattern": "2:4"},
        sparsity=0.5,
        walk=WalkRecord(
            "one-pass", 4, 1.0, {"solve": 1.5}, [], EbftRecord(2, 1e-3, "model", [TunedBlock(0, 0.2, 0.1, True, [0.3])])
        ),
        layers=[LayerRecord("model.layers.0.mlp.up_proj", [64, 32], 0.5, dampening=0.1, note="raised")],
        structured=StructuredRecord(Size(10, 40), Size(8, 32), 0.2, layers=[CutLayer("m.o_proj", 0.1, heads=[4, 2])]),
    )
    document = json.loads(report.to_json())
    jsonschema.validate(document, report_schema())
    assert Report.from_json(document) == report
    assert "dead_inputs" not in document["layers"][0]  # optional fields left at None are not written


@pytest.mark.parametrize("change", [{"surprise": 1}, {"schema_version": 99}])
def test_a_report_with_an_unknown_field_or_a_newer_version_is_refused(change):
    document = {**Report().to_dict(), **change}
    with pytest.raises(ValueError):
        Report.from_json(document)
    if "surprise" in change:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(document, report_schema())
