"""Packed checkpoints: bit-exact round trips, the size arithmetic, damaged files refused, the
semi-structured path, and the protocol S bench on a tiny model."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_model
from transformers import AutoModelForCausalLM

import secateurs
from secateurs import PruneJob, Report, load_recipe, prune
from secateurs.cli import main
from secateurs.errors import PackedFormatError, PatternViolationError, SemiStructuredError
from secateurs.io.packed import (
    WEIGHTS_NAME,
    bitmask_bytes,
    decode_nm,
    encode_nm,
    index_bits,
    nm_bytes,
    pack_bits,
    pack_indices,
    packed_sizes,
    save_packed,
    unpack_bits,
    unpack_indices,
)
from secateurs.io.semi_structured import to_semi_structured
from secateurs.patterns import NMPattern, is_nm_sparse

FAST = ["--calib", "builtin", "--nsamples", "4", "--seqlen", "32", "--quiet", "--device", "cpu"]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor, so that comparisons are bit for bit (-0.0 differs from 0.0)."""
    return tensor.contiguous().view(-1).view(torch.uint8)


def assert_bit_identical(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert state_a[name].dtype == state_b[name].dtype, name
        assert state_a[name].shape == state_b[name].shape, name
        assert torch.equal(_bits(state_a[name]), _bits(state_b[name])), name


def _pruned(family: str, pattern: str, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Report]:
    model = tiny_model(family).to(dtype)
    report = prune(model, {"method": "magnitude", "pattern": pattern}, progress=False)
    return model, report


def _encodings(folder: Path) -> dict[str, dict]:
    return json.loads((folder / "config.json").read_text())["secateurs"]["tensors"]


# ------------------------------------------------------------------------------------ bits and codes


def test_bit_packing_is_little_endian_and_round_trips():
    assert pack_bits(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 1])).tolist() == [1, 1]
    assert pack_bits(torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])).tolist() == [128]
    # 2:4 indices 0, 1, 2, 3 -> bit pairs (low bit first) 00 10 01 11 -> bits 2, 5, 6, 7 set
    assert pack_indices(torch.tensor([0, 1, 2, 3]), 2).tolist() == [4 + 32 + 64 + 128]
    generator = torch.Generator().manual_seed(0)
    for count in (1, 7, 8, 9, 100):
        bits = torch.randint(0, 2, (count,), generator=generator, dtype=torch.uint8)
        unpacked, clean = unpack_bits(pack_bits(bits), count)
        assert torch.equal(unpacked, bits) and clean
    for width in (1, 2, 3, 4):
        indices = torch.randint(0, 2**width, (37,), generator=generator)
        unpacked, clean = unpack_indices(pack_indices(indices, width), 37, width)
        assert torch.equal(unpacked, indices) and clean
    assert [index_bits(m) for m in (2, 4, 8, 6, 16)] == [1, 2, 3, 3, 4]


def test_nm_encoding_by_hand():
    matrix = torch.tensor([[0.0, 5.0, 0.0, 7.0, 1.0, 0.0, 0.0, 0.0]])
    values, indices = encode_nm(matrix, NMPattern(2, 4))
    assert values.tolist() == [[5.0, 7.0, 1.0, 0.0]]  # the second group keeps its first zero
    assert unpack_indices(indices, 4, 2)[0].tolist() == [1, 3, 0, 1]
    assert torch.equal(decode_nm(values, indices, 1, 8, NMPattern(2, 4)), matrix)


def test_size_formulas_by_hand():
    assert bitmask_bytes(numel=64, kept=32, itemsize=2) == 8 + 64
    assert nm_bytes(64, NMPattern(2, 4), itemsize=2) == 32 * 2 + 32 * 2 // 8
    assert nm_bytes(64, NMPattern(4, 8), itemsize=2) == 32 * 2 + 32 * 3 // 8
    # 16-bit values: both codes cost 1.125 of the 2 dense bytes per weight at 50 %
    assert nm_bytes(4096, NMPattern(2, 4), 2) / (4096 * 2) == 0.5625
    assert bitmask_bytes(4096, 2048, 2) / (4096 * 2) == 0.5625


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "mixtral"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_round_trip_is_bit_identical(family, pattern, tmp_path):
    model, report = _pruned(family, pattern)
    out = save_packed(model, None, tmp_path / "packed", report, pattern=pattern)
    loaded, tokenizer = secateurs.load(out)
    assert tokenizer is None
    assert type(loaded) is type(model)
    assert_bit_identical(model, loaded)
    packed = {name: e for name, e in _encodings(out).items() if e["encoding"] != "dense"}
    assert len(packed) >= 4
    expected = "bitmask" if pattern == "unstructured" else "nm"
    assert {e["encoding"] for e in packed.values()} == {expected}
    if family == "gpt2":  # Conv1D weights are stored [in, out]: the groups run along their first axis
        assert all(e["transposed"] for e in packed.values())
    if family == "mixtral":  # fused experts [experts, out, in] are packed whole
        assert any(len(e["shape"]) == 3 for e in packed.values())
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_round_trip_bfloat16_with_negative_zeros(tmp_path):
    model, report = _pruned("llama", "2:4", torch.bfloat16)
    weight = model.model.layers[0].mlp.up_proj.weight.data
    kept = weight != 0
    first_kept = kept.float().argmax(dim=1)
    weight[torch.arange(weight.shape[0]), first_kept] = -0.0  # kept positions that hold -0.0
    weight[0, :4] = torch.tensor([-0.0, -0.0, 0.0, 0.0])  # a group whose only survivors are -0.0
    out = save_packed(model, None, tmp_path / "packed", report, pattern="2:4")
    loaded, _ = secateurs.load(out)
    assert_bit_identical(model, loaded)
    assert loaded.dtype == torch.bfloat16
    assert secateurs.load(out, dtype="float32")[0].dtype == torch.float32


def test_dense_weights_stay_as_they_are(tmp_path):
    model = tiny_model("llama")
    out = save_packed(model, None, tmp_path / "dense", None)
    assert {e["encoding"] for e in _encodings(out).values()} == {"dense"}
    assert_bit_identical(model, secateurs.load(out)[0])


def test_ignored_layers_are_not_held_to_the_pattern(tmp_path):
    model = tiny_model("llama")
    recipe = load_recipe({"method": "magnitude", "pattern": "2:4", "ignore": ["*.down_proj"]})
    report = prune(model, recipe, progress=False)
    out = save_packed(model, None, tmp_path / "packed", report, pattern=recipe.pattern, ignore=recipe.ignore)
    encodings = _encodings(out)
    assert encodings["model.layers.0.mlp.down_proj.weight"]["encoding"] == "dense"
    assert encodings["model.layers.0.mlp.up_proj.weight"]["encoding"] == "nm"
    assert_bit_identical(model, secateurs.load(out)[0])


# ------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_file_size_arithmetic(pattern, tmp_path):
    model, report = _pruned("llama", pattern, torch.bfloat16)
    out = save_packed(model, None, tmp_path / "packed", report, pattern=pattern)
    nm = None if pattern == "unstructured" else NMPattern(*map(int, pattern.split(":")))
    expected_packed = expected_dense = 0
    for entry in _encodings(out).values():
        if entry["encoding"] == "dense":
            continue
        numel = torch.Size(entry["shape"]).numel()
        expected_dense += numel * 2
        expected_packed += bitmask_bytes(numel, numel // 2, 2) if nm is None else nm_bytes(numel, nm, 2)
    sizes = packed_sizes(out)
    assert sizes["packed"] == expected_packed and sizes["packed_dense"] == expected_dense
    ratio = sizes["packed"] / sizes["packed_dense"]
    assert ratio == (0.5625 if pattern != "4:8" else (0.5 + 3 / 16 / 2))
    # The file: 8-byte header length, the JSON header, then exactly the tensors' bytes.
    file = out / WEIGHTS_NAME
    header = struct.unpack("<Q", file.read_bytes()[:8])[0]
    tensors = load_file(str(file))
    assert file.stat().st_size == 8 + header + sum(t.numel() * t.element_size() for t in tensors.values())
    assert sizes["packed"] + sizes["dense"] == sum(t.numel() * t.element_size() for t in tensors.values())
    # The whole file shrinks by the pruned weights' saving (embeddings and norms as they were).
    dense_folder = tmp_path / "hf"
    model.save_pretrained(dense_folder)
    dense_file = (dense_folder / "model.safetensors").stat().st_size
    saving = sizes["packed_dense"] - sizes["packed"]
    assert abs(dense_file - file.stat().st_size - saving) < 8192  # headers differ by a few KiB at most


# --------------------------------------------------------------------------------- damaged and wrong


@pytest.fixture
def packed_24(tmp_path) -> Path:
    model, report = _pruned("llama", "2:4")
    return save_packed(model, None, tmp_path / "packed", report, pattern="2:4")


def _rewrite(folder: Path, change) -> None:
    file = folder / WEIGHTS_NAME
    tensors = load_file(str(file))
    change(tensors)
    save_file(tensors, str(file))


def _describe(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config["secateurs"])
    (folder / "config.json").write_text(json.dumps(config))


UP = "model.layers.0.mlp.up_proj.weight"


def test_truncated_file_is_refused(packed_24):
    file = packed_24 / WEIGHTS_NAME
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(PackedFormatError, match="truncated or damaged"):
        secateurs.load(packed_24)


def test_missing_file_is_refused(packed_24):
    (packed_24 / WEIGHTS_NAME).unlink()
    with pytest.raises(PackedFormatError, match="is missing"):
        secateurs.load(packed_24)


def test_altered_bitmask_is_refused(tmp_path):
    model, report = _pruned("llama", "unstructured")
    out = save_packed(model, None, tmp_path / "packed", report)

    _rewrite(out, lambda t: t[UP + "::bitmask"][0].bitwise_xor_(1))  # one weight more or less: another popcount
    with pytest.raises(PackedFormatError, match=r"up_proj.*the bitmask marks \d+ kept weights but the values"):
        secateurs.load(out)


def test_values_that_do_not_match_the_bitmask_are_refused(tmp_path):
    model, report = _pruned("llama", "unstructured")
    out = save_packed(model, None, tmp_path / "packed", report)
    _rewrite(out, lambda t: t.update({UP + "::values": t[UP + "::values"][:-1].clone()}))
    with pytest.raises(PackedFormatError, match="kept weights but the values are float32"):
        secateurs.load(out)


def test_description_mismatches_are_refused(packed_24, tmp_path):
    import shutil

    cases = {
        "shape": (lambda s: s["tensors"][UP].update(shape=[64, 64]), "values are float32 \\[64, 16\\]"),
        "dtype": (lambda s: s["tensors"][UP].update(dtype="float16"), "where dtype float16 is described"),
        "pattern": (lambda s: s["tensors"][UP].update(pattern="4:8", index_bits=3), "indices are uint8"),
        "encoding": (lambda s: s["tensors"][UP].update(encoding="zstd"), "encoding 'zstd'"),
        "version": (lambda s: s.update(version=99), "upgrade secateurs"),
        "dense shape": (
            lambda s: s["tensors"]["model.norm.weight"].update(shape=[33]),
            "float32 \\[32\\] where float32 \\[33\\] is described",
        ),
        "undescribed": (lambda s: s["tensors"].pop("model.norm.weight"), "stored but not described"),
    }
    for label, (change, match) in cases.items():
        folder = tmp_path / label.replace(" ", "-")
        shutil.copytree(packed_24, folder)
        _describe(folder, change)
        with pytest.raises(PackedFormatError, match=match):
            secateurs.load(folder)


def test_missing_tensor_is_refused(packed_24):
    _rewrite(packed_24, lambda t: t.pop(UP + "::indices"))
    with pytest.raises(PackedFormatError, match="indices: it is described but missing from the file"):
        secateurs.load(packed_24)


def test_tensor_missing_from_file_and_description_is_refused(packed_24):
    _rewrite(packed_24, lambda t: t.pop("model.norm.weight"))
    _describe(packed_24, lambda s: s["tensors"].pop("model.norm.weight"))
    with pytest.raises(PackedFormatError, match="lack model.norm.weight"):
        secateurs.load(packed_24)


def test_repeated_in_group_index_is_refused(packed_24):
    # All indices 0: every group lists position 0 twice, which no 2:4 weight does.
    _rewrite(packed_24, lambda t: t[UP + "::indices"].zero_())
    with pytest.raises(PackedFormatError, match="same in-group index twice.*not 2:4"):
        secateurs.load(packed_24)


def test_index_out_of_range_is_refused():
    values = torch.ones(1, 2)
    indices = pack_indices(torch.tensor([0, 7]), index_bits(6))  # 7 does not exist in a group of 6
    with pytest.raises(PackedFormatError, match="index is 7, out of range for groups of M=6"):
        decode_nm(values, indices, 1, 6, NMPattern(2, 6))


def test_claimed_pattern_that_the_weights_break_writes_nothing(tmp_path):
    model, report = _pruned("llama", "unstructured")
    out = tmp_path / "packed"
    with pytest.raises(PatternViolationError, match="is not 2:4 sparse .* non-zeros.*--pattern unstructured"):
        save_packed(model, None, out, report, pattern="2:4")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_refuses_damaged_folders_and_writes_nothing(packed_24, tmp_path, capsys):
    _rewrite(packed_24, lambda t: t[UP + "::indices"].zero_())
    out = tmp_path / "unpacked"
    assert main(["unpack", str(packed_24), str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("secateurs: error: ") and "not 2:4" in error and "Traceback" not in error
    assert not out.exists() and not list(tmp_path.glob(".unpacked*"))


# ------------------------------------------------------------------------------------------- the CLI


def test_prune_packed_unpack_and_from_pretrained(tiny_folder, tmp_path, capsys):
    packed = tmp_path / "packed"
    command = ["prune", str(tiny_folder), "--method", "wanda", "--pattern", "2:4", "--format", "packed"]
    assert main([*command, "--out", str(packed), *FAST]) == 0
    assert not (packed / "model.safetensors").exists() and (packed / WEIGHTS_NAME).is_file()
    assert (packed / "tokenizer.json").is_file() and (packed / "secateurs.json").is_file()
    report = json.loads((packed / "secateurs.json").read_text())
    assert report["checkpoint_format"] == "packed" and "save" in report["seconds"]
    model, tokenizer = secateurs.load(packed)
    assert tokenizer is not None and tokenizer("hello")["input_ids"]
    assert all(is_nm_sparse(layer.mlp.down_proj.weight, NMPattern(2, 4)) for layer in model.model.layers)

    capsys.readouterr()
    unpacked = tmp_path / "unpacked"
    assert main(["unpack", str(packed), str(unpacked), "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip())["out"] == str(unpacked)
    plain = AutoModelForCausalLM.from_pretrained(unpacked)
    assert "secateurs" not in json.loads((unpacked / "config.json").read_text())
    assert_bit_identical(model, plain)
    assert (unpacked / "tokenizer.json").is_file()

    # A packed folder is a model source everywhere (secateurs.load reads the section).
    assert_bit_identical(model, secateurs.load(packed)[0])
    assert main(["eval", str(packed), "--ppl", "builtin", "--seqlen", "32", "--max-windows", "2", *FAST[-3:]]) == 0

    # Pack the unpacked folder again: the report's recipe declares 2:4, so the weights are stored N:M.
    repacked = tmp_path / "repacked"
    capsys.readouterr()
    assert main(["pack", str(unpacked), str(repacked), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["packed_over_dense"] == pytest.approx((2 + 1 / 8) / 4, abs=1e-4)  # float32: half the values + 2 bits
    assert {e["encoding"] for e in _encodings(repacked).values()} == {"dense", "nm"}
    assert_bit_identical(model, secateurs.load(repacked)[0])
    assert (repacked / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_pack_refusals(tiny_folder, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_folder), "--method", "magnitude", "--out", str(pruned)] + FAST) == 0
    capsys.readouterr()
    assert main(["pack", str(pruned), str(tmp_path / "a"), "--pattern", "2:4"]) == 2
    assert "is not 2:4 sparse" in capsys.readouterr().err
    assert main(["pack", str(pruned), str(pruned)]) == 2
    assert "input model's folder" in capsys.readouterr().err
    assert main(["pack", str(pruned), str(tmp_path / "b"), "--pattern", "3:2"]) == 2
    assert "0 < N < M" in capsys.readouterr().err
    assert main(["unpack", str(pruned), str(tmp_path / "c")]) == 2
    assert "not a packed checkpoint" in capsys.readouterr().err
    assert main(["pack", str(tmp_path / "missing"), str(tmp_path / "d")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not {"a", "b", "c", "d"} & {p.name for p in tmp_path.iterdir()}


def test_prune_refuses_an_unknown_format(tiny_folder, tmp_path):
    with pytest.raises(secateurs.SecateursError, match="choose hf or packed"):
        secateurs.run_prune(
            PruneJob(model=str(tiny_folder), recipe={"method": "magnitude"}, out=tmp_path / "o", format="zip")
        )


# --------------------------------------------------------------------------------- semi-structured


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the no-CUDA error cannot happen")
def test_semi_structured_without_cuda_says_why(packed_24):
    with pytest.raises(SemiStructuredError, match="no usable CUDA device: load without semi_structured"):
        secateurs.load(packed_24, semi_structured=True, dtype="float16")


def test_semi_structured_refuses_old_gpus_and_wrong_dtypes(packed_24, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    with pytest.raises(SemiStructuredError, match="Tesla T4 has 7.5"):
        secateurs.load(packed_24, semi_structured=True, dtype="float16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.raises(SemiStructuredError, match='would be float32: pass dtype="float16"'):
        secateurs.load(packed_24, semi_structured=True)


def test_semi_structured_needs_two_four_weights():
    model, _ = _pruned("llama", "unstructured")
    with pytest.raises(SemiStructuredError, match="no Linear weight .* is 2:4 sparse.*--pattern 2:4"):
        to_semi_structured(model)


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="2:4 sparse tensor cores need a CUDA GPU of compute capability 8.0+",
)
def test_semi_structured_runs_on_sparse_tensor_cores(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    report = prune(model, {"method": "magnitude", "pattern": "2:4"}, progress=False)
    out = save_packed(model.half(), None, tmp_path / "packed", report, pattern="2:4")
    sparse, _ = secateurs.load(out, semi_structured=True)
    dense, _ = secateurs.load(out)
    weight = sparse.model.layers[0].mlp.up_proj.weight
    assert type(weight).__name__.startswith("SparseSemiStructuredTensor")
    ids = torch.randint(3, 100, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = dense.cuda()(ids.cuda()).logits.float()
        got = sparse(ids.cuda()).logits.float()
    assert torch.allclose(got, expected, atol=5e-2, rtol=5e-2)


# ------------------------------------------------------------------------------------------- bench


def test_random_two_four_mask_is_two_four():
    from secateurs.bench.speed import random_two_four_mask

    mask = random_two_four_mask((64, 128), torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and (mask.view(64, 32, 4).sum(-1) == 2).all()
    assert is_nm_sparse(mask.float(), NMPattern(2, 4)) and len({tuple(g) for g in mask.view(-1, 4).tolist()}) == 6


def test_bench_writes_json_markdown_and_png(tiny_folder, tmp_path, capsys):
    packed = tmp_path / "wanda-2-4"
    assert main(["prune", str(tiny_folder), "--pattern", "2:4", "--out", str(packed), "--format", "packed"] + FAST) == 0
    capsys.readouterr()
    out = tmp_path / "bench"
    tiny = ["--prefill-batch", "2", "--prefill-seqlen", "16", "--prompt-tokens", "8", "--new-tokens", "4"]
    tiny += ["--repeats", "2", "--micro-tokens", "16", "--device", "cpu", "--quiet"]
    assert main(["bench", str(tiny_folder), str(packed), *tiny, "--out", str(out)]) == 0
    assert "| model |" in capsys.readouterr().out  # the table, for a person
    # --json: the one-line document instead (the micro-benchmark skipped: the table above has it)
    as_json = ["--out", str(tmp_path / "bench-json"), "--no-micro", "--json"]
    assert main(["bench", str(tiny_folder), str(packed), *tiny, *as_json]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["models"] == 2

    result = json.loads((out / "speed.json").read_text())
    assert result["protocol"] == "S" and result["device"] == "cpu"
    dense, sparse = result["models"]
    assert dense["ratio_to_first"]["prefill_tokens_per_s"] == 1.0 and dense["pattern"] == "dense"
    assert sparse["format"] == "packed" and sparse["pattern"] == "2:4" and sparse["sparsity"] == 0.5
    assert sparse["file_bytes"] < dense["file_bytes"] and sparse["model_bytes"] == dense["model_bytes"]
    for row in result["models"]:
        assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0 and row["peak_memory_mib"] >= 0
        assert len(row["prefill_seconds"]) == 2 and len(row["decode_seconds"]) == 2
    shapes = [tuple(row["shape"]) for row in result["microbenchmark"]]
    assert (64, 32) in shapes and (11008, 4096) in shapes and (4096, 11008) in shapes
    assert all(row["sparse_kernel_ms"] is None and "dense kernel" in row["note"] for row in result["microbenchmark"])

    table = (out / "speed.md").read_text()
    assert "Protocol **S**" in table and "wanda-2-4" in table and "11008 x 4096" in table
    from matplotlib.image import imread

    image = imread(out / "speed.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.mark.parametrize("interleave", [True, False])
def test_bench_times_the_models_in_rounds(tiny_folder, tmp_path, monkeypatch, interleave):
    # A host that drifts during the run must not favour the models timed at its fast moments: by default the
    # timed runs alternate between the models; --one-at-a-time times each model's runs together.
    from secateurs.bench import speed

    shutil.copytree(tiny_folder, tmp_path / "second")
    order: list[str] = []
    time_once = speed._time_once

    def record(entry, device, settings):
        order.append(entry.row["model"])
        time_once(entry, device, settings)

    monkeypatch.setattr(speed, "_time_once", record)
    settings = speed.SpeedSettings(
        prefill_batch=1, prefill_seqlen=8, prompt_tokens=4, new_tokens=2, repeats=3, micro=False, interleave=interleave
    )
    result = speed.run_speed([tiny_folder, tmp_path / "second"], "cpu", None, settings)
    first = Path(tiny_folder).name
    assert order == ([first, "second"] * 3 if interleave else [first] * 3 + ["second"] * 3)
    assert all(len(row["decode_seconds"]) == 3 and len(row["prefill_seconds"]) == 3 for row in result["models"])


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="2:4 sparse tensor cores need a CUDA GPU of compute capability 8.0+",
)
def test_bench_on_cuda_runs_two_four_models_on_sparse_kernels(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from secateurs.bench.settings import SpeedSettings
    from secateurs.bench.speed import run_speed

    config = LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).eval().half()
    save_packed(dense, None, tmp_path / "dense", None)
    model = LlamaForCausalLM(config).eval()
    report = prune(model, {"method": "magnitude", "pattern": "2:4"}, progress=False)
    save_packed(model.half(), None, tmp_path / "two-four", report, pattern="2:4")
    settings = SpeedSettings(
        prefill_batch=2, prefill_seqlen=64, prompt_tokens=8, new_tokens=4, repeats=2, micro_tokens=256,
        micro_shapes=[(256, 128)],
    )  # fmt: skip
    result = run_speed([tmp_path / "dense", tmp_path / "two-four"], "cuda", None, settings)
    kernels = [(row["model"], row["kernels"]) for row in result["models"]]
    assert kernels == [("dense", "dense"), ("two-four", "dense"), ("two-four", "2:4 sparse")]
    assert "error" not in result["models"][2], result["models"][2]
    assert result["models"][2]["decode_tokens_per_s"] > 0
    micro = {tuple(row["shape"]): row for row in result["microbenchmark"]}
    assert micro[(256, 128)]["sparse_kernel_ms"] > 0 and micro[(256, 128)]["dtype"] == "float16"
