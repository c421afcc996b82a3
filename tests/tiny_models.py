"""Tiny random causal LMs of each family the project supports, built from configs (no download)."""

from __future__ import annotations

import torch
import transformers as T

COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    max_position_embeddings=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

FAMILIES: dict[str, tuple[type, dict]] = {
    "llama": (T.LlamaConfig, {}),
    "mistral": (T.MistralConfig, {"sliding_window": 8}),
    "qwen2": (T.Qwen2Config, {}),
    "qwen3": (T.Qwen3Config, {"head_dim": 8}),
    # sliding and global layers alternate: each block needs its own mask
    "gemma2": (T.Gemma2Config, {"head_dim": 8, "sliding_window": 8}),
    "gemma3": (
        T.Gemma3TextConfig,
        {
            "head_dim": 8,
            "sliding_window": 8,
            "num_hidden_layers": 3,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        },
    ),
    "phi3": (T.Phi3Config, {}),
    "opt": (T.OPTConfig, {"ffn_dim": 64, "word_embed_proj_dim": 32}),
    "gpt2": (T.GPT2Config, {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "gpt_neox": (T.GPTNeoXConfig, {}),
    "mixtral": (T.MixtralConfig, {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": (
        T.Qwen3MoeConfig,
        {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "head_dim": 8},
    ),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    config_class, extra = FAMILIES[family]
    config = config_class(**{**COMMON, **extra})
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config)
    return model.eval()
