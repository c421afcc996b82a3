"""The command line end to end, and the bad inputs a user can give it."""

import json
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from secateurs.cli import main

FAST = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]


def test_prune_end_to_end(tiny_folder, tmp_path, capsys):
    out = tmp_path / "pruned"
    eval_text = tmp_path / "eval.txt"
    eval_text.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    code = main(
        [
            "prune",
            str(tiny_folder),
            "--method",
            "wanda",
            "--pattern",
            "2:4",
            "--out",
            str(out),
            "--eval",
            str(eval_text),
            "--eval-seqlen",
            "64",
            "--eval-windows",
            "3",
            *FAST,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sparsity"] == 0.5 and summary["perplexity_after"] > 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["recipe"]["pattern"] == "2:4" and report["recipe"]["method"] == "wanda"
    assert {"torch", "transformers", "secateurs"} <= set(report["versions"])
    assert {"load", "calibration_data", "eval_before", "prune", "eval_after", "save"} <= set(report["seconds"])
    assert report["peak_rss_mib"] > 0 and len(report["layers"]) == 14
    assert all(layer["sparsity"] == 0.5 for layer in report["layers"])
    assert report["perplexity_before"] > 0 and report["perplexity_after"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert int((model.model.layers[1].mlp.down_proj.weight == 0).sum()) == 32 * 64 // 2
    assert (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    code = main(["eval", str(out), "--ppl", str(eval_text), "--seqlen", "64", "--max-windows", "3", "--quiet"])
    assert code == 0
    evaluated = json.loads(capsys.readouterr().out.strip())
    assert evaluated["perplexity"] == pytest.approx(report["perplexity_after"], rel=1e-4)


def test_console_script_runs(tiny_folder, tmp_path):
    """The installed entry point (``python -m secateurs``, same main as the ``secateurs`` script)."""
    out = tmp_path / "m"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "secateurs",
            "prune",
            str(tiny_folder),
            "--method",
            "magnitude",
            "--sparsity",
            "0.3",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sparsity"] == pytest.approx(0.3, abs=0.01)


def test_overwrite_replaces_the_folder(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["prune", str(tiny_folder), "--out", str(out), "--overwrite", *FAST]) == 0
    assert not (out / "old.txt").exists() and (out / "secateurs.json").exists()
