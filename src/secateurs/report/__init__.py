"""The report of a run: typed records (``schema``), their JSON and JSON Schema, ``report.md`` with its plots,
and the facts every report holds (versions, machine, peak memory)."""

from .facts import machine, peak_cuda_mib, peak_rss_mib, versions
from .markdown import REPORT_MARKDOWN, markdown_table, write_markdown_report
from .schema import (
    SCHEMA_FILE,
    SCHEMA_VERSION,
    AllocationRecord,
    CutLayer,
    DepthCandidate,
    DistillRecord,
    EbftRecord,
    EvaluationRecord,
    LayerRecord,
    LoraRecord,
    Milestone,
    Report,
    Size,
    StructuredRecord,
    TrainingRecord,
    TunedBlock,
    WalkRecord,
    report_schema,
)

REPORT_NAME = "secateurs.json"

__all__ = [
    "REPORT_MARKDOWN",
    "REPORT_NAME",
    "SCHEMA_FILE",
    "SCHEMA_VERSION",
    "AllocationRecord",
    "CutLayer",
    "DepthCandidate",
    "DistillRecord",
    "EbftRecord",
    "EvaluationRecord",
    "LayerRecord",
    "LoraRecord",
    "Milestone",
    "Report",
    "Size",
    "StructuredRecord",
    "TrainingRecord",
    "TunedBlock",
    "WalkRecord",
    "machine",
    "markdown_table",
    "peak_cuda_mib",
    "peak_rss_mib",
    "report_schema",
    "versions",
    "write_markdown_report",
]
