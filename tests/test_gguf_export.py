"""GGUF export: transformers reads the file back to the same logits, llama.cpp (llama-cpp-python) continues
prompts greedily exactly as the Hugging Face model does, a GGUF source's tokenizer and metadata carry over, and
bad input gets a one-line error with nothing written."""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest
import torch
from conftest import SMOLLM2, requires_smollm2
from tiny_models import COMMON, FAMILIES
from transformers import AutoModelForCausalLM, AutoTokenizer

from secateurs.errors import ModelLoadError, OutputError, UnsupportedModelError
from secateurs.io.gguf_export import byte_level_pre, interleave_halves, write_gguf
from secateurs.io.llama_cpp import llama_cpp_check

gguf = pytest.importorskip("gguf")

# Settings that transformers' GGUF reader rebuilds (it reads no head_dim for Qwen3, and neither the per-layer
# sliding pattern nor the attention scale of Gemma 3: those get their standard values here). Mistral's sliding
# window is dropped by llama.cpp's "llama" layout (its converter does the same): the test models have none.
READABLE = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {"head_dim": 128},
    "phi3": {},
    "gemma3": {"head_dim": 256, "query_pre_attn_scalar": 256, "num_hidden_layers": 6, "layer_types": None},
}


@pytest.fixture(scope="module")
def tokenizer(tiny_folder):
    return AutoTokenizer.from_pretrained(tiny_folder)


def tiny(family: str, tokenizer, **extra) -> torch.nn.Module:
    config_class, base = FAMILIES[family]
    config = config_class(**{**COMMON, **base, **extra, "vocab_size": len(tokenizer)})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def read_back(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    ids = torch.randint(3, 400, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (a(ids).logits - b(ids).logits).abs().max().item()


def test_interleave_halves_pairs_each_heads_rotary_halves():
    # two heads of four rows: (a0 a1 | b0 b1) becomes a0 b0 a1 b1, per head
    weight = torch.tensor([[0.0], [1.0], [10.0], [11.0], [20.0], [21.0], [30.0], [31.0]])
    assert interleave_halves(weight, heads=2).flatten().tolist() == [0, 10, 1, 11, 20, 30, 21, 31]


def test_pre_tokenizer_names_follow_the_splitting_rules():
    assert byte_level_pre({"type": "ByteLevel", "use_regex": True}) == "gpt-2"
    steps = [{"type": "Digits", "individual_digits": True}, {"type": "ByteLevel"}]
    digits = {"type": "Sequence", "pretokenizers": steps}
    assert byte_level_pre(digits) == "smollm"
    assert byte_level_pre({"type": "Whitespace"}) == "default"


@pytest.mark.parametrize("family", sorted(READABLE))
def test_f32_file_reads_back_to_the_same_logits(family, tokenizer, tmp_path):
    model = tiny(family, tokenizer, **READABLE[family])
    written = write_gguf(model, tokenizer, tmp_path / "m.gguf", outtype="f32")
    assert written["bytes"] == (tmp_path / "m.gguf").stat().st_size
    assert max_difference(model, read_back(tmp_path / "m.gguf")) <= 1e-5


TYPES = [("f16", 2e-3, "F16"), ("bf16", 2e-2, "BF16"), ("q8_0", 3e-2, "Q8_0")]


@pytest.mark.parametrize(("outtype", "tolerance", "kind"), TYPES)
def test_smaller_types_stay_within_their_rounding(outtype, tolerance, kind, tokenizer, tmp_path):
    model = tiny("llama", tokenizer)
    write_gguf(model, tokenizer, tmp_path / "m.gguf", outtype=outtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == kind and types["blk.0.attn_norm.weight"] == "F32"
    assert max_difference(model, read_back(tmp_path / "m.gguf")) <= tolerance


LLAMA_CPP = {**READABLE, "gemma3-cut": {"head_dim": 8, "query_pre_attn_scalar": 8}}  # its own sliding pattern


@pytest.mark.parametrize("case", sorted(LLAMA_CPP))
def test_llama_cpp_continues_every_prompt_as_the_model_does(case, tokenizer, tmp_path):
    pytest.importorskip("llama_cpp", reason="the [llama] extra (llama-cpp-python) checks files in llama.cpp")
    model = tiny(case.removesuffix("-cut"), tokenizer, **LLAMA_CPP[case])
    write_gguf(model, tokenizer, tmp_path / "m.gguf")
    check = llama_cpp_check(tmp_path / "m.gguf", model, tokenizer)
    assert check["matches"], check["prompts"]
    assert check["tokenizer_matches"]


@requires_smollm2()
def test_a_gguf_sources_tokenizer_and_metadata_carry_over_to_a_cut_model(tmp_path):
    pytest.importorskip("llama_cpp", reason="the [llama] extra (llama-cpp-python) checks files in llama.cpp")
    from secateurs.io import load

    model, tokenizer = load(SMOLLM2)
    kept = list(range(24))  # the last 6 of 30 blocks removed
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in kept)
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(kept)
    out = tmp_path / "cut.gguf"
    written = write_gguf(model, tokenizer, out, source_gguf=SMOLLM2)
    assert written["tokenizer"] == "source"
    source, cut = gguf.GGUFReader(SMOLLM2), gguf.GGUFReader(out)
    assert cut.fields["llama.block_count"].contents() == 24
    assert source.fields["llama.block_count"].contents() == 30
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.chat_template", "general.name"):
        assert cut.fields[key].contents() == source.fields[key].contents(), key
    assert cut.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    check = llama_cpp_check(out, model, tokenizer)
    assert check["matches"] and check["tokenizer_matches"], check


def test_export_command_writes_and_checks_a_folder(tiny_folder, tmp_path):
    out = tmp_path / "tiny.gguf"
    cli = [sys.executable, "-m", "secateurs", "export", str(tiny_folder), str(out), "--json"]
    result = subprocess.run(cli, capture_output=True, text=True, check=True)
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert document["bytes"] == out.stat().st_size and document["architecture"] == "llama"
    llama_cpp = document.get("llama_cpp")
    assert llama_cpp is None or llama_cpp["matches"]
    again = subprocess.run(cli, capture_output=True, text=True)
    assert again.returncode != 0 and "exists" in again.stderr and "--overwrite" in again.stderr


def test_prune_with_gguf_records_the_file_in_the_report(tiny_folder, tmp_path):
    from secateurs.pipeline import PruneJob, run_prune
    from secateurs.recipe import SparseRecipe

    job = PruneJob(
        model=str(tiny_folder),
        recipe=SparseRecipe(method="magnitude", sparsity=0.5),
        out=tmp_path / "pruned",
        gguf=tmp_path / "pruned.gguf",
        progress=False,
    )
    report = run_prune(job)
    assert report.gguf is not None and report.gguf.bytes == (tmp_path / "pruned.gguf").stat().st_size
    saved = json.loads((tmp_path / "pruned" / "secateurs.json").read_text())
    assert saved["gguf"]["outtype"] == "f32"
    assert "## GGUF file" in (tmp_path / "pruned" / "report.md").read_text()
    blocks = gguf.GGUFReader(tmp_path / "pruned.gguf")
    weight = next(t for t in blocks.tensors if t.name == "blk.0.ffn_up.weight")
    assert (weight.data == 0).mean() == pytest.approx(0.5, abs=0.01)  # the zeros are in the file


@pytest.mark.bad_input
def test_an_architecture_llama_cpp_cannot_run_is_refused_by_name(tokenizer, tmp_path):
    config_class, base = FAMILIES["gpt2"]
    model = AutoModelForCausalLM.from_config(config_class(**{**COMMON, **base}))
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.bad_input
def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    from secateurs.pipeline.export import ExportJob, run_export

    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        run_export(ExportJob(model=tmp_path / "notes", out=tmp_path / "m.gguf"))
    with pytest.raises(OutputError, match=".gguf"):
        run_export(ExportJob(model=tmp_path / "notes", out=tmp_path / "m.bin"))


@pytest.mark.bad_input
def test_a_full_disk_leaves_no_file_behind(tokenizer, tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    with pytest.raises(OutputError, match="No space left"):
        write_gguf(tiny("llama", tokenizer), tokenizer, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_a_sentencepiece_style_tokenizer_is_written_as_llamas(tmp_path):
    # Llama 2, Mistral and Phi-3 folders: BPE with byte fallback and "▁" for spaces (gguf's LlamaHfVocab)
    pytest.importorskip("llama_cpp", reason="the [llama] extra (llama-cpp-python) checks files in llama.cpp")
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from secateurs.data import builtin_text

    spm = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    spm.train_from_iterator([builtin_text()[:100_000]], trainers.BpeTrainer(vocab_size=600, special_tokens=specials))
    PreTrainedTokenizerFast(tokenizer_object=spm, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        tmp_path / "spm"
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "spm")
    model = tiny("llama", tokenizer)
    write_gguf(model, tokenizer, tmp_path / "m.gguf")
    assert gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.model"].contents() == "llama"
    assert llama_cpp_check(tmp_path / "m.gguf", model, tokenizer)["matches"]
