"""Every bad input a user can give ``secateurs prune``: a one-line error that names the fix, nothing written,
nothing changed. Interruptions in every stage leave no output. (Marked ``bad_input`` / ``crash_point``: the
session's summary counts them.)"""

import errno
import importlib
import os
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTConfig, ViTModel

import secateurs.data
import secateurs.pipeline.sparse
from secateurs.cli import main

# ``secateurs.pipeline.prune`` is the function; the module holds the steps of a prune
PRUNE_STEPS = importlib.import_module("secateurs.pipeline.prune")

FAST = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]
# A fix is named when, after a colon or inside a parenthesis, the message tells what to do: a verb as a whole word
# ("because" holds no "use"), or a command-line option to give ("--out"; the option the user gave, echoed at the
# start, is the problem, not its fix).
FIX = re.compile(
    r"(: |\()(?:[^:]*?\b)?(?i:give|choose|use|check|convert|lower|raise|run|free|create|drop|pass|add|remove|install"
    r"|set|rename|delete|load|name|write|put|download|upgrade|pick|try)\b"
    r"|(: |\()[^:]*?(?<![\w-])--[a-z]"
)


def _names_a_fix(err):
    """Whether a one-line error tells the user what to do, not only what went wrong."""
    return FIX.search(err.removeprefix("secateurs: error: ")) is not None


def _snapshot(folder):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _fails(capsys, argv, match):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("secateurs: error: ") and "\n" not in err and "Traceback" not in err
    assert match in err, err
    assert _names_a_fix(err), f"the error names no fix: {err}"
    return err


def _copy(folder, to):
    to.mkdir()
    for file in folder.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    return to


@pytest.fixture
def model_copy(tiny_folder, tmp_path):
    return _copy(tiny_folder, tmp_path / "model")


def _nothing_written(tmp_path, out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


pytestmark = pytest.mark.bad_input


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
        (["--method", "width", "--ratio", "1.5"], "outside [0, 1)"),
        (["--method", "depth", "--remove", "2"], "leaves none"),
        (["--update", "obs-seq", "--method", "sparsegpt"], "drop --update"),
        (["--allocation", "schedule"], "--schedule"),
        (["--method", "depth", "--remove", "1", "--ebft-epochs", "2"], "--ebft-epochs"),
        (["--distill-epochs", "1", "--offload", "disk"], "--distill-epochs"),
        (["--method", "depth", "--remove", "1", "--search-windows", "0"], "--search-windows"),
        (["--method", "wanda", "--remove", "1", "--search-windows", "4"], "--remove, --search-windows go with"),
        (["--method", "magnitude", "--no-reconstruct"], "--no-reconstruct goes with --method width"),
    ],
)
def test_bad_recipe(model_copy, tmp_path, capsys, args, match):
    before = _snapshot(model_copy)
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(model_copy), "--out", str(out), *FAST, *args], match)
    _nothing_written(tmp_path, out)
    assert _snapshot(model_copy) == before


def test_sparsity_that_is_not_a_number(model_copy, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse: one line on stderr, exit 2
        main(["prune", str(model_copy), "--out", str(tmp_path / "o"), *FAST, "--sparsity", "half"])
    assert exit_info.value.code == 2
    assert "invalid float value: 'half'" in capsys.readouterr().err


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x00\x01\x02" * 100, "binary"), (b"short text", "holds")])
def test_bad_calibration_file(model_copy, tmp_path, capsys, content, match):
    calibration = tmp_path / "calib.txt"
    calibration.write_bytes(content)
    out = tmp_path / "out"
    args = ["prune", str(model_copy), "--out", str(out), *FAST, "--calib", str(calibration)]
    _fails(capsys, args, match)
    _nothing_written(tmp_path, out)


def test_missing_or_empty_model_path(tmp_path, capsys):
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(tmp_path / "missing"), "--out", str(out), *FAST], "does not exist")
    _fails(capsys, ["prune", "", "--out", str(out), *FAST], "give")
    (tmp_path / "empty").mkdir()
    _fails(capsys, ["prune", str(tmp_path / "empty"), "--out", str(out), *FAST], "no config.json")
    _fails(capsys, ["prune", str(tmp_path / "missing.gguf"), "--out", str(out), *FAST], "does not exist")
    _nothing_written(tmp_path, out)


def test_folder_without_weights(model_copy, tmp_path, capsys):
    for file in model_copy.glob("*.safetensors"):
        file.unlink()
    _fails(capsys, ["prune", str(model_copy), "--out", str(tmp_path / "out"), *FAST], "no weight files")


def test_corrupted_safetensors(model_copy, tmp_path, capsys):
    weights = next(model_copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = _snapshot(model_copy)
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(model_copy), "--out", str(out), *FAST], "could not load")
    _nothing_written(tmp_path, out)
    assert _snapshot(model_copy) == before


def test_pickle_only_checkpoint_is_refused(model_copy, tmp_path, capsys):
    weights = next(model_copy.glob("*.safetensors"))
    torch.save(load_file(str(weights)), model_copy / "pytorch_model.bin")
    weights.unlink()
    _fails(capsys, ["prune", str(model_copy), "--out", str(tmp_path / "o"), *FAST], "--trust-pickle")
    assert main(["prune", str(model_copy), "--out", str(tmp_path / "o"), *FAST, "--trust-pickle"]) == 0


def test_tokenizer_larger_than_the_embedding(model_copy, tmp_path, capsys):
    """A tokenizer from another model: token ids beyond the embedding are a clear error, not an IndexError."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_copy)
    model.resize_token_embeddings(100)  # the saved tokenizer has about 512 tokens
    model.save_pretrained(model_copy)
    out = tmp_path / "out"
    err = _fails(capsys, ["prune", str(model_copy), "--out", str(out), *FAST], "outside the model's embedding")
    assert "100 rows" in err
    _nothing_written(tmp_path, out)
    # LoRA recovery checks its training windows before it spends any time on them
    train = ["finetune", str(model_copy), "--out", str(out), "--steps", "2", "--batch-size", "1", "--seqlen", "32"]
    err = _fails(capsys, [*train, "--data", "builtin", "--quiet", "--device", "cpu"], "outside the model's embedding")
    assert "100 rows" in err
    _nothing_written(tmp_path, out)


def test_not_a_causal_lm(tmp_path, capsys):
    folder = tmp_path / "vit"
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=16
    )
    ViTModel(config).save_pretrained(folder)
    _fails(capsys, ["prune", str(folder), "--out", str(tmp_path / "out"), *FAST], "not a causal language model")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_the_weights(model_copy, tmp_path, capsys, value):
    weights = next(model_copy.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(n for n in tensors if "layers.0.mlp.up_proj" in n)
    tensors[name][0, 0] = value
    save_file(tensors, str(weights), metadata={"format": "pt"})
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(model_copy), "--out", str(out), *FAST], "NaN or Inf")
    _nothing_written(tmp_path, out)


def test_bad_outputs(model_copy, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    _fails(capsys, ["prune", str(model_copy), "--out", str(busy), *FAST], "--overwrite")
    assert (busy / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _fails(capsys, ["prune", str(model_copy), "--out", str(a_file), *FAST], "is a file")
    before = _snapshot(model_copy)
    _fails(capsys, ["prune", str(model_copy), "--out", str(model_copy), *FAST], "input model's folder")
    assert _snapshot(model_copy) == before


def test_read_only_output_parent(model_copy, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: make the folder read-only as the check sees it
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    _fails(capsys, ["prune", str(model_copy), "--out", str(locked / "out"), *FAST], "cannot write")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda(model_copy, tmp_path, capsys):
    _fails(capsys, ["prune", str(model_copy), "--out", str(tmp_path / "o"), *FAST, "--device", "cuda"], "--device cpu")


def test_disk_full_while_writing(model_copy, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedModel

    def full(self, folder, *args, **kwargs):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(model_copy), "--out", str(out), *FAST], "No space left")
    _nothing_written(tmp_path, out)


def test_short_write_is_caught_before_the_rename(model_copy, tmp_path, capsys, monkeypatch):
    """A write that silently loses bytes (a dying disk) fails the read-back check: no output."""
    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def lossy(self, folder, *args, **kwargs):
        real(self, folder, *args, **kwargs)
        weights = next(folder.glob("*.safetensors"))
        tensors = load_file(str(weights))
        name = next(iter(tensors))
        tensors[name] = torch.zeros_like(tensors[name])
        save_file(tensors, str(weights), metadata={"format": "pt"})

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", lossy)
    out = tmp_path / "out"
    _fails(capsys, ["prune", str(model_copy), "--out", str(out), *FAST], "check the disk")
    _nothing_written(tmp_path, out)


STAGES = {
    "load": (PRUNE_STEPS, "load"),
    "calibration": (secateurs.data, "calibration_sample"),
    "evaluation": (PRUNE_STEPS, "perplexity"),
    "prune": (secateurs.pipeline.sparse, "walk"),
    "save": (PRUNE_STEPS, "save"),
}


@pytest.mark.crash_point
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_ctrl_c_in_every_stage_leaves_no_output(model_copy, tmp_path, capsys, monkeypatch, stage):
    module, attribute = STAGES[stage]

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, attribute, interrupt)
    out = tmp_path / "out"
    args = ["prune", str(model_copy), "--out", str(out), *FAST, "--eval", "builtin", "--eval-seqlen", "32"]
    before = _snapshot(model_copy)
    assert main(args + ["--eval-windows", "2"]) == 130
    assert "interrupted; no output was written" in capsys.readouterr().err
    _nothing_written(tmp_path, out)
    assert _snapshot(model_copy) == before
