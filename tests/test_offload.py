"""--offload disk: a model read block by block from its safetensors shards gives the same weights as in memory,
and the sharded output loads with from_pretrained."""

import json

import pytest
import torch
from conftest import interrupt_after_block
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from secateurs.cli import main

FAST = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]


def _weights(folder):
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.parametrize(
    "recipe",
    [
        ["--method", "wanda"],
        ["--method", "sparsegpt", "--pattern", "2:4"],
        ["--method", "magnitude", "--sparsity", "0.6"],
        ["--method", "wanda", "--allocation", "owl"],
    ],
)
def test_offloaded_equals_in_memory(tiny_folder, tmp_path, recipe):
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    assert main(["prune", str(tiny_folder), "--out", str(memory), *FAST, *recipe, "--offload", "none"]) == 0
    assert main(["prune", str(tiny_folder), "--out", str(disk), *FAST, *recipe, "--offload", "disk"]) == 0
    index = json.loads((disk / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3  # one shard per block, one for the rest
    a, b = _weights(memory), _weights(disk)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    report = json.loads((disk / "secateurs.json").read_text())
    assert report["offload"] == "disk" and report["sparsity"] > 0
    walked = report.get("walk", {}).get("seconds", {})  # magnitude solves every block without a walk
    assert {"load", "observe", "solve", "propagate", "write"} <= set(walked) or (recipe[1] == "magnitude")


def test_offloaded_model_with_tied_embeddings(tiny_folder, tmp_path):
    """Most small models tie lm_head to the embedding: the source has no lm_head tensor, the output loads tied."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tied = tmp_path / "tied"
    config = LlamaConfig.from_pretrained(tiny_folder, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tied)
    for file in tiny_folder.iterdir():
        if "token" in file.name:
            (tied / file.name).write_bytes(file.read_bytes())
    memory, disk = tmp_path / "memory", tmp_path / "disk"
    assert main(["prune", str(tied), "--out", str(memory), *FAST, "--offload", "none"]) == 0
    assert main(["prune", str(tied), "--out", str(disk), *FAST, "--offload", "disk"]) == 0
    a, b = _weights(memory), _weights(disk)
    assert all(torch.equal(a[key], b[key]) for key in a)
    reloaded = AutoModelForCausalLM.from_pretrained(disk)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight


def test_offloaded_bfloat16_output_is_in_the_run_dtype(tiny_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["prune", str(tiny_folder), "--out", str(out), *FAST, "--offload", "disk", "--dtype", "bfloat16"]) == 0
    for file in out.glob("*.safetensors"):
        assert all(t.dtype == torch.bfloat16 for t in load_file(str(file)).values())


@pytest.mark.bad_input
def test_what_offload_cannot_do(tiny_folder, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["prune", str(tiny_folder), "--out", out, *FAST, "--offload", "disk", "--eval", "builtin"]) == 2
    assert "secateurs eval" in capsys.readouterr().err
    args = ["prune", str(tiny_folder), "--out", out, *FAST, "--offload", "disk", "--method", "depth", "--remove", "1"]
    assert main(args) == 2
    assert "structured" in capsys.readouterr().err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for file in tiny_folder.iterdir():
        if file.suffix != ".safetensors":
            (pickled / file.name).write_bytes(file.read_bytes())
    torch.save(load_file(str(next(tiny_folder.glob("*.safetensors")))), pickled / "pytorch_model.bin")
    assert main(["prune", str(pickled), "--out", out, *FAST, "--offload", "disk", "--trust-pickle"]) == 2
    assert "convert it to safetensors" in capsys.readouterr().err


def test_offloaded_run_resumes(tiny_folder, tmp_path, capsys, monkeypatch):
    args = ["prune", str(tiny_folder), "--out", str(tmp_path / "out"), *FAST, "--offload", "disk"]
    interrupt_after_block(monkeypatch, 0)
    assert main(args) == 130
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert main(["prune", str(tiny_folder), "--out", str(tmp_path / "whole"), *FAST, "--offload", "none"]) == 0
    a, b = _weights(tmp_path / "out"), _weights(tmp_path / "whole")
    assert all(torch.equal(a[key], b[key]) for key in a)
