"""Write a causal LM as a GGUF file that llama.cpp runs.

The ``gguf`` package (the one llama.cpp's own converter uses) writes the file and names the tensors; this module
adds what the package leaves to its caller, per architecture, following llama.cpp's conventions:

- Llama and Mistral: llama.cpp rotates adjacent pairs of a head's query and key features, Hugging Face rotates
  its two halves, so q_proj and k_proj rows are interleaved half by half (``interleave_halves``);
  transformers' GGUF reader undoes it, and the tests check the round trip.
- Llama 3 frequency scaling: llama.cpp reads the per-frequency divisors as a ``rope_freqs`` tensor.
- Tied embeddings: no output tensor; llama.cpp then uses the token embedding.

Dtypes: norms and biases stay float32 (llama.cpp's converter does the same); matrices take the requested type;
q8_0 needs rows that are a multiple of 32 values and falls back to float16 for the others.

When the model came from a GGUF file, the file's tokenizer, chat template and other metadata are copied as they
are; only the hyperparameters the model's config states (shapes, layer counts) and the file type are written
anew. Otherwise the tokenizer is built from the folder's tokenizer.json.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import OutputError, UnsupportedModelError
from ..extras import require
from .atomic import check_writable_parent, write_file_atomic

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class Layout:
    """How one Hugging Face architecture is laid out in GGUF. ``arch``: llama.cpp's architecture name;
    ``interleave_qk``: llama.cpp's rotary embedding pairs adjacent features (see the module docstring)."""

    arch: str
    interleave_qk: bool = False
    norm_shift: float = 0.0  # added to every RMSNorm weight: Gemma's norms scale by (1 + w), llama.cpp's by w


# Hugging Face model_type -> layout. Mistral is written as llama.cpp's "llama" (its converter does so too).
LAYOUTS = {
    "llama": Layout("llama", interleave_qk=True),
    "mistral": Layout("llama", interleave_qk=True),
    "qwen2": Layout("qwen2"),
    "qwen3": Layout("qwen3"),
    "phi3": Layout("phi3"),
    "gemma3_text": Layout("gemma3", norm_shift=1.0),
}

# Keys written from the config; a source GGUF's own values of these are replaced, all its other keys are kept.
_REWRITTEN = (
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
)


def layout_of(config: Any) -> Layout:
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise UnsupportedModelError(
            f"secateurs cannot write a {model_type} model as GGUF: the architectures it writes are "
            f"{', '.join(sorted(LAYOUTS))}; save it as a Hugging Face folder instead"
        )
    return LAYOUTS[model_type]


def interleave_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from Hugging Face's (first half, second half) rotary layout to llama.cpp's
    adjacent pairs: row ``i`` of the first half and row ``i`` of the second become rows ``2i`` and ``2i + 1``."""
    rows = weight.shape[0]
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _rope(config: Any) -> dict[str, Any]:
    """The rotary parameters, from transformers 5's ``rope_parameters`` or the older ``rope_theta``/``rope_scaling``."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    if "full_attention" in parameters:  # Gemma 3: one set per layer type; the global layers' is the main one
        parameters = dict(parameters["full_attention"])
    if not parameters:
        parameters = dict(getattr(config, "rope_scaling", None) or {})
        parameters.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    parameters.setdefault("rope_type", parameters.pop("type", "default"))
    return parameters


def head_dim_of(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_uniform(config: Any) -> None:
    """GGUF states one MLP width and one head count for all layers (a list is refused here)."""
    for name in ("intermediate_size", "num_attention_heads", "num_key_value_heads"):
        value = getattr(config, name, None)
        if isinstance(value, (list, tuple)):
            raise UnsupportedModelError(
                f"the model's {name} differs per layer ({value}): GGUF for {config.model_type} holds one value for "
                "all layers; prune with the same width for every layer"
            )


def write_hparams(writer: Any, config: Any, layout: Layout) -> None:
    """The hyperparameters llama.cpp reads for these architectures."""
    gguf = require("gguf")
    _check_uniform(config)
    head_dim = head_dim_of(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if head_dim != config.hidden_size // config.num_attention_heads or layout.arch in ("qwen3", "gemma3"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = _rope(config)
    rotary = int(head_dim * rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0) or 1.0))
    writer.add_rope_dimension_count(rotary)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif kind not in ("default", "llama3"):  # llama3's divisors go in a tensor (rope_frequency_divisors)
        raise UnsupportedModelError(
            f"the model's rotary scaling {kind!r} cannot be written as GGUF by secateurs (it writes default, "
            "linear, yarn and llama3)"
        )
    if getattr(config, "sliding_window", None) and layout.arch == "phi3":
        writer.add_sliding_window(config.sliding_window)
    if layout.arch == "gemma3":
        _gemma3_hparams(writer, config, head_dim)


def _gemma3_hparams(writer: Any, config: Any, head_dim: int) -> None:
    """Gemma 3's sliding-window layers (which ones, by a per-layer list: a depth cut keeps the survivors' kinds),
    their own rotary base, and the attention scale llama.cpp assumes (1/sqrt(head_dim); 62-layer models: the
    hidden size per head)."""
    expected = config.hidden_size / config.num_attention_heads if config.num_hidden_layers == 62 else head_dim
    if float(config.query_pre_attn_scalar) != float(expected):
        raise UnsupportedModelError(
            f"llama.cpp scales a {config.num_hidden_layers}-layer Gemma 3's attention by 1/sqrt({expected:g}), this "
            f"model by 1/sqrt({config.query_pre_attn_scalar}): the GGUF would compute another model; save it as a "
            "Hugging Face folder instead"
        )
    if getattr(config, "attn_logit_softcapping", None):
        raise UnsupportedModelError("llama.cpp's Gemma 3 has no attention logit soft-capping: this model needs it")
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])
        local = (getattr(config, "rope_parameters", None) or {}).get("sliding_attention")
        if local:
            writer.add_rope_freq_base_swa(float(local["rope_theta"]))


def rope_frequency_divisors(config: Any) -> torch.Tensor | None:
    """Llama 3's rotary scaling as llama.cpp reads it: each frequency's divisor against the unscaled one."""
    rope = _rope(config)
    if rope["rope_type"] != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = int(head_dim_of(config))
    plain = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    return (plain / scaled.float()).contiguous()


def gguf_tensors(model: nn.Module, layout: Layout) -> Iterator[tuple[str, torch.Tensor]]:
    """``(GGUF name, float32 tensor)`` for every weight, laid out as llama.cpp reads it."""
    gguf = require("gguf")
    config = model.config
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == layout.arch)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise UnsupportedModelError(
                f"{name} has no place in llama.cpp's {layout.arch} layout: this model cannot be written as GGUF"
            )
        data = tensor.detach().to(torch.float32)
        if layout.interleave_qk and target.endswith(("attn_q.weight", "attn_q.bias")):
            data = interleave_halves(data, config.num_attention_heads)
        elif layout.interleave_qk and target.endswith(("attn_k.weight", "attn_k.bias")):
            data = interleave_halves(data, kv_heads)
        if layout.norm_shift and target.endswith("norm.weight"):
            data = data + layout.norm_shift
        yield target, data
    divisors = rope_frequency_divisors(config)
    if divisors is not None:
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", divisors


def _encoded(tensor: torch.Tensor, name: str, outtype: str) -> tuple[np.ndarray, Any]:
    """The array to write and its GGML type (None: the writer takes it from the array's dtype)."""
    gguf = require("gguf")
    data = tensor.numpy()
    if data.ndim < 2 or outtype == "f32" or name.startswith("rope_freqs"):
        return data, None
    if outtype == "f16" or (outtype == "q8_0" and data.shape[-1] % 32):
        return data.astype(np.float16), None
    kind = gguf.GGMLQuantizationType.BF16 if outtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(data, kind), kind


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def write_vocab_from_folder(writer: Any, folder: Path, vocab_size: int) -> str:
    """The tokenizer of a Hugging Face folder, as llama.cpp's tokenizer keys. Returns the pre-tokenizer name
    written (llama.cpp picks its splitting rules by that name; ``default`` when the folder's is not known)."""
    gguf = require("gguf")
    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UnsupportedModelError(
            f"{folder} has no tokenizer.json: GGUF needs the tokenizer; save the model with its tokenizer"
        )
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model_spec = spec.get("model", {})
    if model_spec.get("type") == "BPE" and model_spec.get("byte_fallback"):
        vocab = gguf.LlamaHfVocab(folder)  # SentencePiece-style BPE (Llama 2, Mistral, Phi-3)
        tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
        writer.add_tokenizer_model("llama")
        writer.add_token_scores(list(scores))
        pre = "default"
    elif model_spec.get("type") == "BPE":
        tokens, types = _byte_level_tokens(folder)
        writer.add_tokenizer_model("gpt2")
        pre = byte_level_pre(spec.get("pre_tokenizer"))
    else:
        raise UnsupportedModelError(
            f"{folder}'s tokenizer is a {model_spec.get('type')} model: secateurs writes BPE tokenizers to GGUF"
        )
    tokens, types = list(tokens), [int(t) for t in types]
    for index in range(len(tokens), vocab_size):  # embedding rows past the tokenizer's last id
        tokens.append(f"[PAD{index}]".encode())
        types.append(int(gguf.TokenType.UNUSED))
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return pre


def _byte_level_tokens(folder: Path) -> tuple[list[bytes], list[int]]:
    """Tokens by id, and their llama.cpp types: special tokens are control tokens, other added ones user-defined."""
    gguf = require("gguf")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(max(by_id) + 1):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]".encode())
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content.encode())
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token.encode())
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


# Pre-tokenizer regexes of tokenizer.json -> the llama.cpp pre-tokenizer that splits text the same way.
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


def byte_level_pre(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for a byte-level tokenizer's splitting rules, read from tokenizer.json's
    ``pre_tokenizer``; ``default`` (llama.cpp's fallback, with a warning when it loads) for others."""
    steps = (pre_tokenizer or {}).get("pretokenizers") or ([pre_tokenizer] if pre_tokenizer else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds and kinds[0] == "Split":
        regex = steps[0].get("pattern", {}).get("Regex")
        return {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}.get(regex, "default")
    return "default"


def copy_metadata(writer: Any, source: Path, written: set[str]) -> None:
    """Every key of the GGUF file ``source`` that ``writer`` does not hold yet, value and type unchanged."""
    gguf = require("gguf")
    reader = gguf.GGUFReader(source)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in written or key in _REWRITTEN:
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)


def _written_keys(writer: Any) -> set[str]:
    return {key for shard in writer.kv_data for key in shard}


def check_gguf_output(out: str | Path, overwrite: bool) -> Path:
    """Refuse, before any work, a GGUF output that would replace a file unasked or cannot be written."""
    out = Path(out).expanduser().resolve()
    if out.suffix.lower() != ".gguf":
        raise OutputError(f"{out} does not end in .gguf: name the GGUF file OUT.gguf")
    if out.is_dir():
        raise OutputError(f"{out} is a folder: give a file path ending in .gguf")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists: choose another path, or pass --overwrite")
    check_writable_parent(out, "output path")
    return out


def write_gguf(
    model: nn.Module,
    tokenizer: Any,
    out: str | Path,
    *,
    outtype: str = "f32",
    source_gguf: Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Write ``model`` to ``out`` (a temporary sibling renamed at the end: an interruption or a full disk leaves no
    partial file). ``source_gguf``: the GGUF file the model was read from, whose tokenizer and metadata are kept;
    else ``tokenizer`` (a Hugging Face tokenizer) is written. Returns what was written: path, bytes, outtype,
    architecture, tokenizer (``source``, or the name of llama.cpp's pre-tokenizer chosen)."""
    gguf = require("gguf")
    if outtype not in OUTTYPES:
        raise OutputError(f"GGUF type {outtype!r} is not one secateurs writes: choose one of {', '.join(OUTTYPES)}")
    layout = layout_of(model.config)
    out = Path(out)
    vocabulary = []

    def fill(temporary: Path) -> None:
        writer = gguf.GGUFWriter(temporary, layout.arch)
        try:
            vocabulary.append(_describe(writer, model, tokenizer, layout, outtype, source_gguf, name))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=False)
        finally:
            writer.close()

    try:
        write_file_atomic(out, fill)
    except OSError as error:
        raise OutputError(f"could not write {out}: {error.strerror or error}: free space or choose another path") from (
            error
        )
    return {
        "path": str(out),
        "bytes": out.stat().st_size,
        "outtype": outtype,
        "architecture": layout.arch,
        "tokenizer": vocabulary[0],
    }


def _describe(
    writer: Any, model: nn.Module, tokenizer: Any, layout: Layout, outtype: str, source: Path | None, name: str | None
) -> str:
    """Every key and tensor of the file, in ``writer``; returns where the tokenizer came from."""
    gguf = require("gguf")
    if name:
        writer.add_name(name)
    write_hparams(writer, model.config, layout)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[outtype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if source is not None:
        copy_metadata(writer, source, _written_keys(writer))
        vocabulary = "source"
    else:
        if tokenizer is None:
            raise UnsupportedModelError("the model has no tokenizer: GGUF needs one; save it with the model")
        with tempfile.TemporaryDirectory() as folder:
            tokenizer.save_pretrained(folder)
            pre = write_vocab_from_folder(writer, Path(folder), model.config.vocab_size)
        vocabulary = f"built ({pre} pre-tokenizer)"
    for target, tensor in gguf_tensors(model, layout):
        data, kind = _encoded(tensor, target, outtype)
        writer.add_tensor(target, data, raw_dtype=kind)
    return vocabulary
