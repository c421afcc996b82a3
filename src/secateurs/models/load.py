"""Load a Hugging Face causal LM from a local folder, a hub id, or a GGUF file (dequantized)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..errors import DeviceError, ModelLoadError, UnsupportedModelError
from ..extras import require

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"dtype {name!r} is not supported: choose one of {', '.join(DTYPES)}") from None


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without it is an error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("CUDA was requested but this machine has no usable CUDA device: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DeviceError(f"device {name!r} is not understood: use cpu, cuda, cuda:N or auto") from None


def check_causal_lm(model: nn.Module) -> None:
    """The pruning walk and perplexity need a causal LM (a model with an output embedding)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None or not hasattr(model, "config"):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a causal language model: give a model that "
            "AutoModelForCausalLM loads (for example a *ForCausalLM checkpoint)"
        )


def _weight_files(folder: Path) -> tuple[list[Path], list[Path]]:
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = sorted(p for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(pattern))
    return safetensors, pickles


def _locate(text: str, trust_pickle: bool) -> tuple[str, dict]:
    """Where transformers reads ``text`` from, and the keyword arguments that say how (a GGUF file, safetensors)."""
    path = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {text} does not exist: check the path")
        require("gguf")
        require("accelerate")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{text} is a file, not a model folder: give the folder holding config.json, or a .gguf file"
            )
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{text} has no config.json: give a Hugging Face model folder")
        safetensors, pickles = _weight_files(path)
        if not safetensors and not pickles:
            raise ModelLoadError(f"{text} holds no weight files (*.safetensors): check that the download is complete")
        if not safetensors and not trust_pickle:
            raise ModelLoadError(
                f"{text} has only pickle weights ({pickles[0].name}), which can run code when read: convert "
                "them to safetensors, or pass --trust-pickle if you trust the source"
            )
        return str(path), {"use_safetensors": bool(safetensors)}
    if _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        return text, {}  # a hub id; transformers downloads or uses its cache
    raise ModelLoadError(f"model path {text} does not exist: check the path")


def _check_config(location: str, text: str, gguf: dict) -> None:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(location, **gguf)
    except OSError as error:
        raise ModelLoadError(
            f"could not read a model config from {text}: {str(error).splitlines()[0]} "
            "(for a hub id, check the name, the network and HF_TOKEN)"
        ) from error
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UnsupportedModelError(
            f"{text} is a {type(config).__name__.removesuffix('Config')} model, not a causal language model: "
            "give a model that AutoModelForCausalLM loads"
        )


def load_model(
    source: str | Path, dtype: str | torch.dtype = "float32", trust_pickle: bool = False
) -> tuple[nn.Module, object]:
    """Return ``(model, tokenizer)`` on the CPU, in ``dtype``.

    ``source``: a folder with config.json and safetensors weights, a ``.gguf`` file (the ``[gguf]`` extra; its
    blocks are dequantized), or a hub id (``org/name``). Pickle-only checkpoints are refused unless
    ``trust_pickle``: unpickling runs code. (``secateurs.load`` reads packed checkpoints too.)
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    text = str(source)
    if not text.strip():
        raise ModelLoadError("the model path is empty: give a model folder, a .gguf file or a hub id")
    location, kwargs = _locate(text, trust_pickle)
    gguf = {k: v for k, v in kwargs.items() if k == "gguf_file"}
    _check_config(location, text, gguf)
    if gguf:
        kwargs["quantization_config"] = _dequantizing_gguf_config()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, **{k: v for k, v in kwargs.items() if v is not None}
        )
        tokenizer = AutoTokenizer.from_pretrained(location, **gguf)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise ModelLoadError(
            f"could not load {text}: {str(error).splitlines()[0]} (check the files, or download them again)"
        ) from error
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf and quantizer is not None:
        # The weights are plain dequantized tensors now; without this the model refuses to be saved.
        quantizer.remove_quantization_config(model)
    model.eval()
    return model, tokenizer


def _dequantizing_gguf_config() -> object:
    """Ask transformers to unpack GGUF blocks to dense float weights (pruning needs real weight values)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF files
        return None
    return GgufConfig(dequantize=True)
