"""The command line end to end, and the bad inputs a user can give it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, ViTConfig, ViTModel

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


def _fails(capsys, argv, match):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("secateurs: error: ") and "\n" not in err and "Traceback" not in err
    assert match in err, err
    return err


@pytest.fixture
def not_causal(tmp_path):
    folder = tmp_path / "vit"
    ViTModel(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=16,
        )
    ).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "args,match",
    [
        (["--sparsity", "1.0"], "outside [0, 1)"),
        (["--sparsity", "-0.2"], "outside [0, 1)"),
        (["--pattern", "4:2"], "0 < N < M"),
        (["--pattern", "0:4"], "0 < N < M"),
        (["--pattern", "a:b"], "not understood"),
        (["--pattern", "2:4", "--sparsity", "0.7"], "drop --sparsity"),
        (["--method", "pruneall"], "unknown method"),
        (["--calib", "no-such-file.txt"], "neither a file nor a named set"),
    ],
)
def test_bad_recipe_or_calibration(tiny_folder, tmp_path, capsys, args, match):
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(tiny_folder), "--out", str(out), *FAST, *args], match)
    assert not out.exists()


def test_bad_model_inputs(tmp_path, capsys, not_causal):
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(tmp_path / "missing"), "--out", str(out), *FAST], "does not exist")
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["prune", str(tmp_path / "empty"), "--out", str(out), *FAST], "no config.json")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text('{"model_type": "llama"}')
    _fails(capsys, ["prune", str(tmp_path / "noweights"), "--out", str(out), *FAST], "no weight files")
    _fails(capsys, ["prune", str(not_causal), "--out", str(out), *FAST], "not a causal language model")
    _fails(capsys, ["prune", str(tmp_path / "missing.gguf"), "--out", str(out), *FAST], "does not exist")
    assert not out.exists()


def test_pickle_only_checkpoint_is_refused(tmp_path, capsys, tiny_folder):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_folder / "config.json").read_text())
    torch.save({}, folder / "pytorch_model.bin")
    _fails(capsys, ["prune", str(folder), "--out", str(tmp_path / "o"), *FAST], "--trust-pickle")


def test_bad_outputs(tiny_folder, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    _fails(capsys, ["prune", str(tiny_folder), "--out", str(busy), *FAST], "--overwrite")
    assert (busy / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(capsys, ["prune", str(tiny_folder), "--out", str(a_file), *FAST], "is a file")
    _fails(capsys, ["prune", str(tiny_folder), "--out", str(tiny_folder), *FAST], "input model's folder")
    before = {p.name: p.stat().st_mtime_ns for p in tiny_folder.iterdir()}
    assert {p.name: p.stat().st_mtime_ns for p in tiny_folder.iterdir()} == before  # source untouched


def test_read_only_output_parent(tiny_folder, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: make the folder read-only as the check sees it
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    _fails(capsys, ["prune", str(tiny_folder), "--out", str(locked / "out"), *FAST], "cannot write")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(tiny_folder, tmp_path, capsys):
    _fails(capsys, ["prune", str(tiny_folder), "--out", str(tmp_path / "o"), *FAST, "--device", "cuda"], "--device cpu")


def test_overwrite_replaces_the_folder(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["prune", str(tiny_folder), "--out", str(out), "--overwrite", *FAST]) == 0
    assert not (out / "old.txt").exists() and (out / "secateurs.json").exists()


def test_interrupted_run_leaves_no_output(tiny_folder, tmp_path, capsys, monkeypatch):
    import secateurs.api

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(secateurs.api, "walk", interrupt)
    out = tmp_path / "out"
    assert main(["prune", str(tiny_folder), "--out", str(out), *FAST]) == 130
    assert not out.exists() and not list(tmp_path.glob(".out*"))
