"""Per-layer widths read from a model itself (module names and parameter shapes), not from pass facts.

``layer_widths(model)`` lists, for every decoder block, the width of each prunable kind:

| kind | width | read from |
|---|---|---|
| ``ffn`` | intermediate channels | out features of ``gate_proj``/``up_proj``/``fc1``/``c_fc``/``intermediate.dense`` |
| ``q`` | query channels (heads x head width) | ``q_proj``/``query``, or GPT-2's fused ``c_attn`` (a third) |
| ``kv`` | key channels (KV heads x head width) | ``k_proj``/``key`` |
| ``v`` | value channels | ``v_proj``/``value`` (Olica shrinks these) |
| ``ssm`` | Mamba ``d_inner`` | ``in_proj`` out features / 2 |
| ``q_rank``, ``kv_rank`` | rank of a factorised q / k projection | ``LowRankLinear.rank`` |

Widths are channels; ``heads`` adds heads where the head width is known from the config. A layer is
the first integer in the module path (``model.layers.7.mlp.up_proj`` -> 7). Works the same on a model
in memory, a reloaded checkpoint, or a meta-device model built from a config (no weights).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

_KIND_BY_SUFFIX = [
    ("ffn", ("mlp.gate_proj", "mlp.up_proj", "mlp.fc1", "mlp.c_fc", "intermediate.dense", ".fc1")),
    ("q", ("q_proj", "attention.self.query", "attn.c_attn")),
    ("kv", ("k_proj", "attention.self.key")),
    ("v", ("v_proj", "attention.self.value")),
    ("ssm", ("mixer.in_proj",)),
]
KINDS = [k for k, _ in _KIND_BY_SUFFIX] + ["q_rank", "kv_rank"]  # ranks: low-rank (Olica) q / k


@dataclass(frozen=True)
class LayerWidth:
    layer: int
    kind: str
    width: int
    module: str

    def as_dict(self) -> dict:
        return asdict(self)


def _out_features(mod: nn.Module) -> int | None:
    if hasattr(mod, "out_features"):
        return int(mod.out_features)
    w = getattr(mod, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        # GPT-2's Conv1D stores [in, out]
        return int(w.shape[1] if type(mod).__name__ == "Conv1D" else w.shape[0])
    return None


def layer_widths(model: nn.Module) -> list[LayerWidth]:
    """Width of every prunable kind in every block of ``model`` (see the module docstring)."""
    seen: dict[tuple[int, str], LayerWidth] = {}
    for name, mod in model.named_modules():
        m = re.search(r"\.(\d+)\.", f".{name}.")
        if not m:
            continue
        for kind, suffixes in _KIND_BY_SUFFIX:
            if not any(name.endswith(s) for s in suffixes):
                continue
            width = _out_features(mod)
            if width is None:
                continue
            if name.endswith("attn.c_attn"):
                width //= 3
            if kind == "ssm":
                width //= 2
            key = (int(m.group(1)), kind)
            if key not in seen:  # gate_proj and up_proj agree; keep the first
                seen[key] = LayerWidth(key[0], kind, width, name)
            if kind in ("q", "kv") and hasattr(mod, "rank"):
                seen[key[0], f"{kind}_rank"] = LayerWidth(key[0], f"{kind}_rank", int(mod.rank), name)
    return sorted(seen.values(), key=lambda w: (w.layer, KINDS.index(w.kind)))


def head_width(config) -> int | None:
    hd = getattr(config, "head_dim", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if hd:
        return int(hd)
    if heads and hidden:
        return int(hidden) // int(heads)
    return None


def widths_table(model: nn.Module) -> list[dict]:
    """``layer_widths`` as dicts, with ``heads`` for the q / kv kinds when the head width is known."""
    hd = head_width(getattr(model, "config", None))
    rows = []
    for w in layer_widths(model):
        d = w.as_dict()
        if hd and w.kind in ("q", "kv") and w.width % hd == 0:
            d["heads"] = w.width // hd
        rows.append(d)
    return rows


def dense_model_like(config) -> nn.Module | None:
    """The stock model a config describes, on the meta device (shapes only), or None."""
    import copy

    import transformers
    cfg = copy.deepcopy(config)
    for k in ("fxprune_structure", "auto_map", "fxprune_base_class"):
        if hasattr(cfg, k):
            try:
                delattr(cfg, k)
            except AttributeError:
                pass
    arch = (getattr(cfg, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    try:
        with torch.device("meta"):
            return cls(cfg) if cls is not None else transformers.AutoModelForCausalLM.from_config(cfg)
    except Exception:
        return None


def source_config(spec: str):
    """The config of the model ``spec`` names (``tiny:<family>``, ``smollm2``, a ``.gguf`` file or a model
    directory) without loading its weights; None when it cannot be read."""
    import os
    from pathlib import Path
    try:
        if spec.startswith("tiny:"):
            from ..models.tiny import tiny_model
            return tiny_model(spec.split(":", 1)[1]).config
        import transformers
        if spec == "smollm2" or spec.endswith(".gguf"):
            from ..loading import smollm2_path
            path = smollm2_path() if spec == "smollm2" else Path(os.path.expanduser(spec))
            cfg = transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
            if not getattr(cfg, "architectures", None) and getattr(cfg, "model_type", "") == "llama":
                cfg.architectures = ["LlamaForCausalLM"]
            return cfg
        return transformers.AutoConfig.from_pretrained(os.path.expanduser(spec))
    except Exception:
        return None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
