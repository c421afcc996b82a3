"""bench/gpu.sh (protocol GPU): its CPU dry run goes through every part and writes complete, checked results; without
CUDA and without --dry-run it refuses with exit status 2 and says how to run it anyway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402


def _run(*arguments: str) -> subprocess.CompletedProcess:
    # the interpreter running the tests, whatever python is first on PATH; two threads, as the CI machine has
    environment = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="2")
    return subprocess.run(
        ["bash", str(SCRIPT), *arguments], capture_output=True, text=True, env=environment, timeout=300
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    return _run("--dry-run", "--out", str(out)), out


def test_dry_run_writes_every_part_checked(dry_run):
    done, out = dry_run
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["complete"] and results["dry_run"] and results["checks_passed"]
    assert results["part_errors"] == []
    protocol = gpu.DRY_RUN
    linear = results["parts"]["linear"]["rows"]
    cases = {(tuple(row["shape"]), row["dtype"], row["tokens"], row["variant"]) for row in linear}
    assert cases == {
        (shape, dtype, tokens, variant)
        for shape in protocol.shapes
        for dtype in ("float16", "bfloat16")
        for tokens in protocol.tokens
        for variant in ("dense", "2:4", "unstructured 50%")
    }
    assert all(row["min_ms"] <= row["median_ms"] <= row["max_ms"] for row in linear)
    assert {row["kernel"] for row in linear if row["variant"] == "2:4"} == {gpu.STAND_IN}
    assert {row["sparsity"] for row in linear if row["variant"] != "dense"} == {0.5}
    model = results["parts"]["model"]["rows"]
    measurements = [f"prefill {length}" for length in protocol.prefill_lengths] + [f"decode {protocol.new_tokens}"]
    assert [(row["variant"], row["measurement"]) for row in model] == [
        (variant, measurement) for variant in ("dense", "2:4") for measurement in measurements
    ]
    assert all(row["tokens_per_s"] > 0 and "speedup_vs_dense" in row for row in model if row["variant"] == "2:4")
    prune = results["parts"]["prune"]["rows"]
    assert [row["method"] for row in prune] == ["wanda", "sparsegpt"]
    assert all(row["sparsity"] == pytest.approx(0.5) and row["wall_seconds"] > 0 for row in prune)
    assert all(row["nsamples"] == protocol.nsamples and row["seqlen"] == protocol.seqlen for row in prune)


def test_dry_run_checks_and_provenance(dry_run):
    _, out = dry_run
    results = json.loads(out.read_text())
    checks = results["checks"]
    # the backend's probe, one per linear shape, dtype and token count, and the model's logits
    assert len(checks) == 1 + len(gpu.DRY_RUN.shapes) * 2 * len(gpu.DRY_RUN.tokens) + 1
    assert all(check["passed"] for check in checks)
    assert all(check["max_abs_error"] is not None for check in checks[1:])
    assert results["protocol"] == "GPU" and results["run_id"]
    for key in ("command", "start_time", "end_time", "git", "host", "versions", "machine", "settings"):
        assert results[key], key
    assert "--dry-run" in results["command"]
    assert set(results["git"]) == {"commit", "clean"}
    assert {"cpu", "kernel", "cuda_runtime"} <= set(results["host"])
    assert {"torch", "transformers", "secateurs", "python"} <= set(results["versions"])
    rows = [row for part in results["parts"].values() for row in part["rows"]]
    assert all(row["protocol"] == "GPU" and row["run_id"] == results["run_id"] for row in rows)
    table = out.with_suffix(".md").read_text()
    assert results["run_id"] in table and "(c) Prune wall time" in table
    assert not list(out.parent.glob("*.tmp")) and not list(out.parent.glob(".*partial*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the run would start")
def test_without_cuda_it_needs_dry_run(tmp_path):
    done = _run("--out", str(tmp_path / "gpu.json"))
    assert done.returncode == 2
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1
    assert "compute capability >= 8.0" in message and "--dry-run" in message
    assert not (tmp_path / "gpu.json").exists()


def test_explicit_padding_slices_back():
    """An older torch refuses x with fewer rows than the kernel's multiple: the bench pads and slices (checked
    here with a dense weight, whose product must not change)."""
    backend = gpu.Backend("cuSPARSELt", sparse=True, explicit_padding=True)
    x, weight = torch.randn(3, 16), torch.randn(8, 16)
    torch.testing.assert_close(backend.linear(x, weight), x @ weight.T)
    assert backend.min_rows(torch.float16) == 8
    facts = gpu.variant_facts("2:4", 3, torch.float16, _run_stub(backend))
    assert facts["padded_rows"] == 8 and "padded from 3 to 8" in facts["note"]


def _run_stub(backend: gpu.Backend) -> gpu.Run:
    device = torch.device("cpu")
    return gpu.Run(gpu.DRY_RUN, device, gpu.Clock(device), backend, {"protocol": "GPU", "run_id": "test"})
