"""Export a model folder to another format (GGUF for llama.cpp), and check the result with its own runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..checks import check_choice
from ..errors import ModelLoadError
from ..extras import available
from ..io import load
from ..io.gguf_export import OUTTYPES, check_gguf_output, write_gguf
from ..io.llama_cpp import llama_cpp_check
from ..io.packed import source_report
from ..report import GgufRecord, LlamaCppRecord

TARGETS = ("gguf",)


@dataclass(kw_only=True)
class ExportJob:
    """Write the model folder ``model`` (HF or packed, pruned or not) to ``out`` as ``to`` (``gguf``), matrices in
    ``outtype`` (f32, f16, bf16, q8_0). ``check``: load the file in llama.cpp and compare its greedy continuations
    with the folder's model (when the ``[llama]`` extra is installed)."""

    model: str | Path
    out: str | Path
    to: str = "gguf"
    outtype: str = "f32"
    check: bool = True
    overwrite: bool = False
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        check_choice(self.to, "to", TARGETS)
        check_choice(self.outtype, "outtype", OUTTYPES)


def source_gguf(model_source: str | None) -> Path | None:
    """The GGUF file a model was read from, when it still exists: its tokenizer and metadata carry over."""
    if model_source and model_source.lower().endswith(".gguf") and Path(model_source).expanduser().is_file():
        return Path(model_source).expanduser()
    return None


def export_gguf(
    model: nn.Module, tokenizer: Any, out: Path, outtype: str, source: str | None, check: bool
) -> GgufRecord:
    """Write ``model`` as GGUF and (``check`` and llama-cpp-python installed) check it in llama.cpp."""
    written = write_gguf(model, tokenizer, out, outtype=outtype, source_gguf=source_gguf(source))
    record = GgufRecord(**written)
    if check and available("llama_cpp") and tokenizer is not None:
        result = llama_cpp_check(out, model, tokenizer)
        record.llama_cpp = LlamaCppRecord(
            version=result["llama_cpp_python"],
            new_tokens=result["new_tokens"],
            prompts=len(result["prompts"]),
            matches=result["matches"],
            tokenizer_matches=result["tokenizer_matches"],
            differing=[
                f"{p['prompt']!r}: from token {p['first_difference']}, logit gap {p['logit_gap']:.2g}"
                for p in result["prompts"]
                if not p["same"]
            ],
        )
    return record


def run_export(job: ExportJob) -> GgufRecord:
    folder = Path(job.model).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{job.model} is not a folder: give a model folder (secateurs prune --out, or an HF one)")
    out = check_gguf_output(job.out, job.overwrite)
    model, tokenizer = load(folder, "float32", trust_pickle=job.trust_pickle)
    report = source_report(folder)
    return export_gguf(model, tokenizer, out, job.outtype, report.model if report else None, job.check)
