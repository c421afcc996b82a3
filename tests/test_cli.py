"""The command line end to end, and the bad inputs a user can give it."""

import importlib
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from secateurs.cli import main

FAST = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]
# ``secateurs.pipeline.prune`` is the function; the module holds the steps of a prune
PRUNE_STEPS = importlib.import_module("secateurs.pipeline.prune")


def _saved(folder):
    """Every tensor of a saved model, from all its safetensors files (one, or a shard per block)."""
    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


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
            "--json",
            *FAST,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sparsity"] == 0.5 and summary["perplexity_after"] > 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["recipe"]["pattern"] == "2:4" and report["recipe"]["method"]["name"] == "wanda"
    assert {"torch", "transformers", "secateurs"} <= set(report["versions"])
    assert {"load", "calibration_data", "eval_before", "prune", "eval_after", "save"} <= set(report["seconds"])
    assert report["peak_rss_mib"] > 0 and len(report["layers"]) == 14
    assert all(layer["sparsity"] == 0.5 for layer in report["layers"])
    assert report["perplexity_before"] > 0 and report["perplexity_after"] > 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert int((model.model.layers[1].mlp.down_proj.weight == 0).sum()) == 32 * 64 // 2
    assert (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    code = main(
        ["eval", str(out), "--ppl", str(eval_text), "--seqlen", "64", "--max-windows", "3", "--quiet", "--json"]
    )
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
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    # every Linear of the blocks loses exactly int(numel x 0.3) weights (rounded down: 307 of q's 1024), so the
    # achieved sparsity is a little under 0.3, and the summary gives it to 6 places
    layers = {name: weight for name, weight in _saved(out).items() if ".layers." in name and weight.dim() == 2}
    assert len(layers) == 14
    zeros = {name: int((weight == 0).sum()) for name, weight in layers.items()}
    assert zeros == {name: int(weight.numel() * 0.3) for name, weight in layers.items()}
    exact = sum(zeros.values()) / sum(weight.numel() for weight in layers.values())
    assert exact < 0.3
    assert json.loads(done.stdout)["sparsity"] == round(exact, 6)


def test_overwrite_replaces_the_folder(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["prune", str(tiny_folder), "--out", str(out), "--overwrite", *FAST]) == 0
    assert not (out / "old.txt").exists() and (out / "secateurs.json").exists()


@pytest.mark.parametrize("offload", [["--offload", "auto"], []], ids=["auto", "default"])
def test_offload_auto_streams_a_model_larger_than_memory(tiny_folder, tmp_path, monkeypatch, offload):
    """--offload auto (the default): when the model does not fit in free memory, its blocks are streamed from
    disk, and the pruned weights are the same as pruned in memory."""
    memory, streamed = tmp_path / "memory", tmp_path / "streamed"
    assert main(["prune", str(tiny_folder), "--out", str(memory), *FAST, "--offload", "none"]) == 0
    size = sum(file.stat().st_size for file in tiny_folder.glob("*.safetensors"))
    monkeypatch.setattr(PRUNE_STEPS, "available_memory", lambda *args: size // 2)  # half the model is free
    assert main(["prune", str(tiny_folder), "--out", str(streamed), *FAST, *offload]) == 0
    assert json.loads((streamed / "secateurs.json").read_text())["offload"] == "disk"
    a, b = _saved(memory), _saved(streamed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert json.loads((memory / "secateurs.json").read_text()).get("offload") is None


def test_offload_auto_says_why_it_cannot_evaluate_a_model_larger_than_memory(
    tiny_folder, tmp_path, monkeypatch, capsys
):
    """Under the default --offload auto a large model is streamed, which rules out --eval: the refusal says the
    model did not fit and how to force it into memory, and writes nothing."""
    size = sum(file.stat().st_size for file in tiny_folder.glob("*.safetensors"))
    monkeypatch.setattr(PRUNE_STEPS, "available_memory", lambda *args: size // 2)
    out = tmp_path / "out"
    assert main(["prune", str(tiny_folder), "--out", str(out), *FAST, "--eval", "wikitext2"]) == 2
    err = capsys.readouterr().err
    assert "larger than free memory" in err and "--offload none" in err and "--eval" in err
    assert not out.exists()


def test_offload_auto_keeps_a_small_model_in_memory(tiny_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["prune", str(tiny_folder), "--out", str(out), *FAST]) == 0
    assert json.loads((out / "secateurs.json").read_text()).get("offload") is None
    assert [file.name for file in out.glob("*.safetensors")] == ["model.safetensors"]  # not a shard per block


def test_a_preset_is_a_recipe_the_flags_go_over(tiny_folder, tmp_path):
    """With the documents the calibration windows came from in the report (a held-out evaluation leaves them out)."""
    documents = tmp_path / "docs.jsonl"
    lines = [{"text": "too short"}, *({"text": f"doc {i} " * 40} for i in range(5))]
    documents.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "fast"
    flags = ["--preset", "fast", "--sparsity", "0.6", "--out", str(out), *FAST, "--calib", str(documents)]
    assert main(["prune", str(tiny_folder), *flags]) == 0
    report = json.loads((out / "secateurs.json").read_text())
    assert report["recipe"]["method"]["name"] == "wanda" and report["recipe"]["sparsity"] == 0.6
    used = report["calibration_documents"]
    assert len(used) == 4 and set(used) <= {1, 2, 3, 4, 5}
    assert "documents used" in (out / "report.md").read_text()


def test_every_shipped_preset_is_a_valid_recipe():
    from secateurs import load_recipe
    from secateurs.recipe.presets import preset_names, read_preset

    assert {"fast", "balanced", "best"} <= set(preset_names())
    for name in preset_names():
        for pattern in ("unstructured", "2:4"):  # the user's pattern goes over every preset
            recipe = load_recipe({**read_preset(name), "pattern": pattern})
            assert (recipe.nm_pattern is not None) == (pattern == "2:4")


def test_a_preset_and_a_recipe_file_together_are_refused(tiny_folder, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: wanda\n")
    code = main(["prune", str(tiny_folder), "--preset", "fast", "--recipe", str(recipe), "--out", str(tmp_path / "o")])
    assert code != 0 and "give one" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
