"""Tiny random-weight models of every supported family, built from transformers' config classes.

Used by ``fxprune inspect tiny:<family>`` and the contract tests. Random weights barely react to
pruning: never use these for quality claims.
"""
from __future__ import annotations

from typing import Callable

import torch

#: family -> (transformers config class, its tiny settings besides ``vocab_size=128``).
_L2 = {"num_hidden_layers": 2, "max_position_embeddings": 256}
_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(_L2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(_L2, hidden_size=64, intermediate_size=96, num_attention_heads=6,
                                  num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(_L2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                      num_key_value_heads=1, head_dim=16, sliding_window=None)),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=96, bos_token_id=0,
                                eos_token_id=0)),
    "opt": ("OPTConfig", dict(_L2, hidden_size=64, ffn_dim=96, num_attention_heads=4, word_embed_proj_dim=64)),
    "bert": ("BertConfig", dict(_L2, hidden_size=64, intermediate_size=96, num_attention_heads=4)),
    "mamba": ("MambaConfig", dict(num_hidden_layers=2, hidden_size=32, state_size=8, expand=2, conv_kernel=4,
                                  time_step_rank=4, use_mambapy=False)),
}


def _factory(cls_name: str, settings: dict) -> Callable[..., "object"]:
    def make(**over):
        import transformers
        return getattr(transformers, cls_name)(**{"vocab_size": 128, **settings, **over})
    return make


#: family -> a function ``(**overrides) -> config``.
TINY_FAMILIES: dict[str, Callable[..., "object"]] = {f: _factory(c, kw) for f, (c, kw) in _CONFIGS.items()}


# Both attention forms are covered: the fused SDPA op and the explicit matmul-softmax-matmul.
_ATTN = {"llama": "sdpa", "qwen2": "sdpa", "mistral": "eager", "gpt2": "eager", "opt": "sdpa", "bert": "eager"}


def tiny_config(family: str, **overrides):
    """The tiny config of ``family`` with ``overrides`` applied."""
    if family not in TINY_FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {sorted(TINY_FAMILIES)}")
    return TINY_FAMILIES[family](**overrides)


def tiny_model(family: str, seed: int = 0, **overrides):
    """A tiny random model of ``family`` in eval mode (causal LM head, BERT: masked LM head)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    cfg = tiny_config(family, **overrides)
    torch.manual_seed(seed)
    auto = AutoModelForMaskedLM if family == "bert" else AutoModelForCausalLM
    kwargs = {} if family not in _ATTN else {"attn_implementation": _ATTN[family]}
    model = auto.from_config(cfg, **kwargs)
    return model.eval()
