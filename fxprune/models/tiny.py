"""Tiny random-weight models of every supported family, built from transformers' config classes.

Used by ``fxprune inspect tiny:<family>`` and the contract tests. Random weights barely react to
pruning: never use these for quality claims.
"""
from __future__ import annotations

from typing import Callable

import torch

TINY_FAMILIES: dict[str, Callable[..., "object"]] = {}


def _register(name):
    def deco(fn):
        TINY_FAMILIES[name] = fn
        return fn
    return deco


@_register("llama")
def _llama(**over):
    from transformers import LlamaConfig
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
              tie_word_embeddings=False)
    kw.update(over)
    return LlamaConfig(**kw)


@_register("qwen2")
def _qwen2(**over):
    from transformers import Qwen2Config
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
              tie_word_embeddings=True)
    kw.update(over)
    return Qwen2Config(**kw)


@_register("mistral")
def _mistral(**over):
    from transformers import MistralConfig
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
              sliding_window=None)
    kw.update(over)
    return MistralConfig(**kw)


@_register("gpt2")
def _gpt2(**over):
    from transformers import GPT2Config
    kw = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=96,
              bos_token_id=0, eos_token_id=0)
    kw.update(over)
    return GPT2Config(**kw)


@_register("opt")
def _opt(**over):
    from transformers import OPTConfig
    kw = dict(vocab_size=128, hidden_size=64, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=256, word_embed_proj_dim=64)
    kw.update(over)
    return OPTConfig(**kw)


@_register("bert")
def _bert(**over):
    from transformers import BertConfig
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=256)
    kw.update(over)
    return BertConfig(**kw)


@_register("mamba")
def _mamba(**over):
    from transformers import MambaConfig
    kw = dict(vocab_size=128, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
              conv_kernel=4, time_step_rank=4, use_mambapy=False)
    kw.update(over)
    return MambaConfig(**kw)


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
