"""Check a GGUF file with llama.cpp itself (through llama-cpp-python, the ``[llama]`` extra): it must load, and
its greedy continuation of each prompt must be the Hugging Face model's, token for token.

Prompts go in as token ids, so the check is of the weights and the architecture; whether llama.cpp's tokenizer
splits the prompt text as the Hugging Face one does is recorded beside it (``tokenizer_matches``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import OutputError
from ..extras import require
from ..models.family import cache_argument

PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "Water boils at a temperature of",
)


@torch.no_grad()
def greedy_ids(model: nn.Module, prompt: list[int], new_tokens: int) -> list[int]:
    """The Hugging Face model's greedy continuation (no stop at end-of-text: llama.cpp's loop does not stop
    either)."""
    name = cache_argument(model)
    cache, ids, out = None, torch.tensor([prompt]), []
    for _ in range(new_tokens):
        step = model(input_ids=ids, use_cache=True, **({name: cache} if cache is not None else {}))
        cache = step.get("cache", None) or step.get("past_key_values", None)
        token = int(step.logits[0, -1].argmax())
        out.append(token)
        ids = torch.tensor([[token]])
    return out


def _llama_greedy(llm: Any, prompt: list[int], new_tokens: int) -> list[int]:
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        out.append(int(token))
        if len(out) == new_tokens:
            break
    return out


def llama_cpp_check(
    path: str | Path, model: nn.Module, tokenizer: Any, new_tokens: int = 32, prompts: tuple[str, ...] = PROMPTS
) -> dict[str, Any]:
    """Load ``path`` in llama.cpp and compare greedy continuations with ``model``'s. Returns the prompts' results
    and ``matches`` (all equal); raises nothing on a mismatch (the caller reports it), but an OutputError when
    llama.cpp cannot load the file."""
    llama_cpp = require("llama_cpp")
    model = model.eval()
    try:
        # a float32 KV cache (llama.cpp's default is float16): the comparison is with the float32 model, and a
        # float16 cache alone moves logits by ~1e-2, enough to flip a near-tie
        f32 = llama_cpp.GGML_TYPE_F32
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, seed=0, type_k=f32, type_v=f32)
    except (ValueError, RuntimeError) as error:
        raise OutputError(f"llama.cpp could not load {path}: {error}") from error
    results, tokenizer_matches = [], True
    for text in prompts:
        prompt = [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
        ours = greedy_ids(model, prompt, new_tokens)
        theirs = _llama_greedy(llm, prompt, new_tokens)
        split = llm.tokenize(text.encode(), add_bos=False, special=False)
        tokenizer_matches &= list(split) == prompt
        results.append({"prompt": text, "same": ours == theirs, **_difference(model, prompt, ours, theirs)})
    llm.close()
    return {
        "ran": True,
        "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
        "new_tokens": new_tokens,
        "matches": all(r["same"] for r in results),
        "tokenizer_matches": tokenizer_matches,
        "prompts": results,
    }


@torch.no_grad()
def _difference(model: nn.Module, prompt: list[int], ours: list[int], theirs: list[int]) -> dict[str, Any]:
    """Where the continuations part, and by how much the model preferred its token there (its logit minus the
    logit of llama.cpp's token): a gap near float rounding is a tie, a large one a wrong file."""
    position = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if position is None:
        return {"first_difference": None, "logit_gap": None}
    logits = model(input_ids=torch.tensor([prompt + ours[:position]])).logits[0, -1]
    return {"first_difference": position, "logit_gap": float(logits[ours[position]] - logits[theirs[position]])}
