"""Crash and resume: a run killed (SIGKILL) after any block goes on with --resume and gives bit-identical
weights; the same command twice gives bit-identical weights; a killed run leaves no output folder."""

import json
import os
import random
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from conftest import interrupt_after_block
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from secateurs import Report
from secateurs.cli import main
from secateurs.engine.resume import state_folder

FAST = ["--calib", "builtin", "--nsamples", "8", "--seqlen", "32", "--quiet", "--device", "cpu"]
LAYERS = 6


@pytest.fixture(scope="module")
def deep_folder(tiny_folder, tmp_path_factory):
    """The tiny tokenizer with a six-block Llama: crash points in the middle of the walk."""
    folder = tmp_path_factory.mktemp("deep")
    for file in tiny_folder.iterdir():
        if "token" in file.name or file.name == "special_tokens_map.json":
            (folder / file.name).write_bytes(file.read_bytes())
    config = LlamaConfig.from_pretrained(tiny_folder)
    config.num_hidden_layers = LAYERS
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _weights(out):
    tensors = {}
    for file in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _run(folder, out, *args, kill_after=None):
    env = dict(os.environ, SECATEURS_KILL_AFTER_BLOCK=str(kill_after)) if kill_after is not None else None
    command = [sys.executable, "-m", "secateurs", "prune", str(folder), "--out", str(out), *FAST, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env)


RECIPES = {
    "wanda-two-pass": ["--method", "wanda"],
    "sparsegpt-one-pass": ["--method", "sparsegpt", "--pattern", "2:4"],
    "wanda-owl-lockstep": ["--method", "wanda", "--allocation", "owl", "--true-sequential", "--batch-size", "2"],
    "sparsegpt-ebft": ["--method", "sparsegpt", "--ebft-epochs", "2"],
    # the dense stream is saved beside the pruned one and restored with it
    "wanda-ebft-model": ["--method", "wanda", "--ebft-epochs", "2", "--ebft-target", "model"],
    # the teacher is the source model as loaded, whatever blocks the walk restores; the distillation restarts
    "sparsegpt-distill": ["--method", "sparsegpt", "--distill-epochs", "1"],
}


@pytest.mark.crash_point
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_kill_at_a_random_block_then_resume_is_bit_identical(deep_folder, tmp_path, name):
    args = RECIPES[name]
    reference = tmp_path / "reference"
    assert _run(deep_folder, reference, *args).returncode == 0

    block = random.Random(name).randrange(LAYERS - 1)
    out = tmp_path / "out"
    killed = _run(deep_folder, out, *args, kill_after=block)
    assert killed.returncode == -9
    assert not out.exists() and not list(tmp_path.glob(".out.partial*"))  # no output, not even a partial one
    saved = json.loads((state_folder(out) / "state.json").read_text())
    assert saved["blocks_done"] == block + 1

    resumed = _run(deep_folder, out, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not state_folder(out).exists()  # cleaned once the output is complete
    expected, got = _weights(reference), _weights(out)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    report = Report.read(out / "secateurs.json")
    assert len(report.layers) == len(Report.read(reference / "secateurs.json").layers)
    if "--ebft-epochs" in args:  # the blocks tuned before the kill are in the report too
        assert [record.block for record in report.walk.ebft.blocks] == list(range(LAYERS))


@pytest.mark.crash_point
def test_the_same_command_twice_gives_the_same_weights(deep_folder, tmp_path):
    for out in (tmp_path / "a", tmp_path / "b"):
        assert _run(deep_folder, out, "--method", "sparsegpt").returncode == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.bad_input
def test_resume_refuses_what_it_cannot_continue(deep_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prune", str(deep_folder), "--out", str(out), *FAST, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert _run(deep_folder, out, "--method", "wanda", kill_after=2).returncode == -9
    # another recipe than the interrupted one
    assert main(["prune", str(deep_folder), "--out", str(out), *FAST, "--sparsity", "0.6", "--resume"]) == 2
    assert "another model, recipe" in capsys.readouterr().err
    # a damaged state file
    block = state_folder(out) / "block-00001.safetensors"
    block.write_bytes(block.read_bytes()[:-8] + b"\0" * 8)
    assert main(["prune", str(deep_folder), "--out", str(out), *FAST, "--method", "wanda", "--resume"]) == 2
    assert "damaged" in capsys.readouterr().err
    # starting over without --resume works, and removes the old state
    assert main(["prune", str(deep_folder), "--out", str(out), *FAST, "--method", "wanda"]) == 0
    assert not state_folder(out).exists()


def test_an_interrupted_run_says_how_to_resume(deep_folder, tmp_path, capsys, monkeypatch):
    interrupt_after_block(monkeypatch, 2)
    out = tmp_path / "out"
    assert main(["prune", str(deep_folder), "--out", str(out), *FAST]) == 130
    assert "3 pruned blocks are saved: run the same command with --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["prune", str(deep_folder), "--out", str(out), *FAST, "--resume"]) == 0


def test_resume_keeps_the_interrupted_walk(deep_folder, tmp_path, capsys, monkeypatch):
    """A run that fell back to the staged walk (activations did not fit) resumes staged, whatever memory says now."""
    import secateurs.engine.strategies

    args = ["--method", "wanda", "--true-sequential", "--batch-size", "2", *FAST]
    # where the walk's strategy choice looks it up (secateurs.engine.memory.one_pass_fits)
    monkeypatch.setattr(secateurs.engine.strategies, "one_pass_fits", lambda *a: False)
    reference = tmp_path / "reference"
    assert main(["prune", str(deep_folder), "--out", str(reference), *args]) == 0
    assert Report.read(reference / "secateurs.json").walk.mode == "staged"
    out = tmp_path / "out"
    interrupt_after_block(monkeypatch, 2)
    assert main(["prune", str(deep_folder), "--out", str(out), *args]) == 130
    monkeypatch.undo()  # memory "fits" again: a new run would take the one-pass walk
    assert main(["prune", str(deep_folder), "--out", str(out), *args, "--resume"]) == 0
    assert Report.read(out / "secateurs.json").walk.mode == "staged"
    expected, got = _weights(reference), _weights(out)
    assert all(torch.equal(expected[key], got[key]) for key in expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_streamed_inputs_file_is_a_safetensors_file(tmp_path, dtype):
    """The state's calibration inputs are written tensor by tensor; safetensors itself reads them back."""
    from safetensors import safe_open

    from secateurs.engine.resume import save_tensors_streaming

    generator = torch.Generator().manual_seed(0)
    tensors = {f"batch.{j:05d}": (torch.randn(j + 1, 3, 5, generator=generator) * 100).to(dtype) for j in range(3)}
    tensors["batch.00003"] = tensors["batch.00001"][:, 1:]  # not contiguous
    save_tensors_streaming(tensors, tmp_path / "inputs.safetensors")
    loaded = load_file(str(tmp_path / "inputs.safetensors"))
    assert list(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == dtype and torch.equal(loaded[name], tensor)
    with safe_open(str(tmp_path / "inputs.safetensors"), framework="pt") as handle:
        assert handle.get_slice("batch.00002").get_shape() == [3, 3, 5]


@pytest.mark.bad_input
def test_resume_refuses_a_source_model_changed_since_the_interruption(deep_folder, tmp_path, capsys, monkeypatch):
    """The state holds blocks pruned from the old weights: resuming on new weights would mix two models. The
    run is refused with a message that says why and what to do, and nothing is written or lost."""
    import shutil

    from safetensors.torch import save_file

    source = tmp_path / "source"
    shutil.copytree(deep_folder, source)
    out = tmp_path / "out"
    args = ["prune", str(source), "--out", str(out), "--method", "wanda", *FAST]
    interrupt_after_block(monkeypatch, 2)
    assert main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    state = state_folder(out)
    saved = {file.name: file.read_bytes() for file in state.iterdir()}
    assert json.loads(saved["state.json"])["blocks_done"] == 3

    # one tensor of a block the interrupted run already pruned changes; the file keeps its size
    weights = load_file(str(source / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    weights[name] = weights[name].flip(0).contiguous()
    save_file(weights, str(source / "model.safetensors"), metadata={"format": "pt"})

    assert main([*args, "--resume"]) == 2
    error = capsys.readouterr().err
    assert "comes from another model" in error and "run without --resume to start over" in error
    assert error.startswith("secateurs: error: ") and error.count("\n") == 1  # one clear line
    assert not out.exists()  # nothing written from a mix of the two
    assert {file.name: file.read_bytes() for file in state.iterdir()} == saved  # the old state is untouched

    # starting over prunes the new weights: the same result as a fresh run on them
    assert main(args) == 0
    reference = tmp_path / "reference"
    assert main(["prune", str(source), "--out", str(reference), "--method", "wanda", *FAST]) == 0
    expected, got = _weights(reference), _weights(out)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    # Wanda compares within rows and block 0's inputs did not change: the new q_proj is the old one, rows flipped
    old = safetensors.torch.load(saved["block-00000.safetensors"])  # as pruned from the old weights
    assert not torch.equal(old[name], got[name]) and torch.equal(old[name].flip(0), got[name])
