"""Read a (pruned) LLaMA-family model (LLaMA, Mistral, Qwen2) into dense per-layer weights.

The result, ``Decoder``, is what every LLaMA-like GGUF architecture needs: per layer the RMSNorm
weights, dense q/k/v/o and gate/up/down matrices in PyTorch layout ([out, in], HF head order) and
their optional biases, plus the embeddings, final norm, LM head (None when tied), rope and norm
settings. Widths may differ from layer to layer.

What is exact and what is refused:

* fxprune modules are folded by ``fold.dense_linear`` (exact; the cost is noted);
* a linear calibration beside an FFN (``mlp(x) + x A^T B^T``, rank k) becomes k extra FFN channels:
  gate row 0 with gate bias ``c`` (``silu(c) == c`` in float32 for ``c = 32``), up rows ``A``,
  down columns ``B / c``: ``silu(c) * (A x) * B / c = B A x``. Exact; costs k channels of three
  matrices and a gate bias (zero for the other channels);
* anything with parameters this reader does not consume (an unknown module, a norm with a bias,
  q/k norms) raises ``UnsupportedModuleError`` naming it; other activation functions, partial
  rotary, unknown rope scaling or attention scales raise ``UnsupportedFamilyError``/``ExportError``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ExportError, UnsupportedFamilyError, UnsupportedModuleError
from .fold import dense_linear

FAMILIES = ("llama", "mistral", "qwen2")
# Calibration channels: silu(32) == 32 exactly in float32 (sigmoid(32) rounds to 1), and 1/32 is exact.
LINCAL_GATE_BIAS = 32.0


@dataclass
class Layer:
    """One decoder layer, dense, float32, PyTorch layout. ``*_b`` are None where the model has none."""

    attn_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    ffn_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    q_b: torch.Tensor | None = None
    k_b: torch.Tensor | None = None
    v_b: torch.Tensor | None = None
    o_b: torch.Tensor | None = None
    gate_b: torch.Tensor | None = None
    up_b: torch.Tensor | None = None
    down_b: torch.Tensor | None = None

    def widths(self, head_dim: int) -> tuple[int, int, int]:
        """(q heads, KV heads, FFN channels)."""
        return self.q.shape[0] // head_dim, self.k.shape[0] // head_dim, self.gate.shape[0]


@dataclass
class Decoder:
    """A LLaMA-like decoder, ready to be written by any GGUF writer."""

    family: str
    hidden: int
    head_dim: int
    vocab: int
    context_length: int
    rms_eps: float
    rope_theta: float
    rope_scaling: dict          # {"type": "none" | "linear" | "llama3", ...}
    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor | None  # None: tied to ``embed``
    layers: list[Layer]
    notes: list[str] = field(default_factory=list)

    def widths(self) -> list[tuple[int, int, int]]:
        return [l.widths(self.head_dim) for l in self.layers]


def _family(model) -> str:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None) or type(model).__name__
    if mt not in FAMILIES:
        raise UnsupportedFamilyError(str(mt), f"GGUF export covers the LLaMA family {list(FAMILIES)} "
                                     "(llama.cpp's per-layer-width architecture, deci, is LLaMA-like)")
    return mt


def _rope(cfg, path: str) -> tuple[float, dict]:
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    legacy = getattr(cfg, "rope_scaling", None) or {}
    if not params:
        params = dict(legacy)
    theta = float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1.0):
        raise ExportError(f"{path}: partial rotary embeddings (partial_rotary_factor="
                          f"{cfg.partial_rotary_factor}) have no LLaMA-like GGUF architecture")
    if kind == "default":
        return theta, {"type": "none"}
    if kind == "linear":
        return theta, {"type": "linear", "factor": float(params["factor"])}
    if kind == "llama3":
        return theta, {"type": "llama3", **{k: float(params[k]) for k in (
            "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}}
    raise ExportError(f"{path}: rope scaling {kind!r} is not supported by the GGUF export "
                      "(default, linear and llama3 are)")


def _take(model, consumed: set, module: nn.Module, prefix: str):
    for n, _ in module.named_parameters(recurse=True):
        consumed.add(f"{prefix}.{n}" if prefix else n)


def _linear(model, consumed, path):
    mod = model.get_submodule(path)
    f = dense_linear(mod, path)
    _take(model, consumed, mod, path)
    return f


def _norm(model, consumed, path) -> torch.Tensor:
    mod = model.get_submodule(path)
    names = {n for n, _ in mod.named_parameters()}
    if names != {"weight"}:
        raise UnsupportedModuleError(path, type(mod).__name__, f"an RMSNorm with parameters {sorted(names)}; "
                                     "GGUF LLaMA norms have a weight only")
    consumed.add(f"{path}.weight")
    return mod.weight.detach().float().cpu().clone()


@torch.no_grad()
def read_decoder(model: nn.Module, log=print) -> Decoder:
    """Dense per-layer weights of ``model`` (LLaMA, Mistral, Qwen2; pruned or not)."""
    family = _family(model)
    cfg = model.config
    act = getattr(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedFamilyError(family, f"hidden_act {act!r}: LLaMA-like GGUF architectures use SiLU")
    base = model.model
    prefix = "model"
    consumed: set[str] = set()
    notes: list[str] = []
    layers = []
    head_dim = None
    for i, blk in enumerate(base.layers):
        p = f"{prefix}.layers.{i}"
        attn = blk.self_attn
        hd = int(getattr(attn, "head_dim", 0) or cfg.hidden_size // cfg.num_attention_heads)
        if head_dim is None:
            head_dim = hd
        elif hd != head_dim:
            raise ExportError(f"{p}.self_attn: head_dim {hd} differs from layer 0's {head_dim}")
        scaling = getattr(attn, "scaling", hd ** -0.5)
        if not math.isclose(float(scaling), hd ** -0.5, rel_tol=1e-6):
            raise ExportError(f"{p}.self_attn: attention scale {scaling} is not 1/sqrt(head_dim)")
        q, k, v, o = (_linear(model, consumed, f"{p}.self_attn.{n}") for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        mlp_path = f"{p}.mlp"
        mlp = blk.mlp
        for n in ("gate_proj", "up_proj", "down_proj"):
            if not hasattr(mlp, n):
                raise UnsupportedModuleError(mlp_path, type(mlp).__name__, "expected a GLU FFN (gate/up/down)")
        gate, up, down = (_linear(model, consumed, f"{mlp_path}.{n}") for n in ("gate_proj", "up_proj", "down_proj"))
        layer = Layer(attn_norm=_norm(model, consumed, f"{p}.input_layernorm"),
                      ffn_norm=_norm(model, consumed, f"{p}.post_attention_layernorm"),
                      q=q.weight, k=k.weight, v=v.weight, o=o.weight, q_b=q.bias, k_b=k.bias, v_b=v.bias,
                      o_b=o.bias, gate=gate.weight, up=up.weight, down=down.weight, gate_b=gate.bias,
                      up_b=up.bias, down_b=down.bias)
        notes += [f.note for f in (q, k, v, o, gate, up, down) if f.note]
        if getattr(mlp, "lincal", None) is not None:
            notes.append(_fold_lincal(layer, mlp.lincal, f"{mlp_path}.lincal"))
            _take(model, consumed, mlp.lincal, f"{mlp_path}.lincal")
        if layer.v.shape[0] != layer.k.shape[0]:
            raise ExportError(f"{p}.self_attn: value width {layer.v.shape[0]} differs from key width "
                              f"{layer.k.shape[0]} after folding")
        layers.append(layer)
    embed_mod = base.embed_tokens
    embed = embed_mod.weight.detach().float().cpu().clone()
    consumed.add(f"{prefix}.embed_tokens.weight")
    norm = _norm(model, consumed, f"{prefix}.norm")
    head = model.get_output_embeddings()
    lm_head = None
    if head is not None and head.weight is not embed_mod.weight:
        if getattr(head, "bias", None) is not None:
            raise UnsupportedModuleError("lm_head", type(head).__name__, "an LM head bias has no LLaMA GGUF tensor")
        lm_head = head.weight.detach().float().cpu().clone()
    consumed.add("lm_head.weight")
    left = [n for n, _ in model.named_parameters(remove_duplicate=False) if n not in consumed]
    if left:
        mod = left[0].rpartition(".")[0]
        raise UnsupportedModuleError(mod, type(model.get_submodule(mod)).__name__,
                                     f"parameters with no GGUF tensor: {left[:4]}")
    theta, scaling = _rope(cfg, type(model).__name__)
    ctx = int(getattr(cfg, "max_position_embeddings", 2048))
    sw = getattr(cfg, "sliding_window", None)
    if family == "mistral" and sw:
        ctx = min(ctx, int(sw))
        notes.append(f"sliding window {sw}: llama.cpp's llama architecture attends to the whole context, so "
                     f"context_length is capped at the window ({ctx}) where both agree")
    return Decoder(family=family, hidden=int(cfg.hidden_size), head_dim=int(head_dim), vocab=embed.shape[0],
                   context_length=ctx, rms_eps=float(cfg.rms_norm_eps), rope_theta=theta, rope_scaling=scaling,
                   embed=embed, norm=norm, lm_head=lm_head, layers=layers, notes=notes)


def _fold_lincal(layer: Layer, lincal: nn.Module, path: str) -> str:
    """Append the calibration's rank as FFN channels (see the module docstring); returns the note."""
    a = lincal.down.weight.detach().float().cpu()   # k x d
    b = lincal.up.weight.detach().float().cpu()     # d x k
    k, d = a.shape
    c = LINCAL_GATE_BIAS
    n = layer.gate.shape[0]
    layer.gate = torch.cat([layer.gate, layer.gate.new_zeros(k, d)])
    layer.gate_b = torch.cat([layer.gate_b if layer.gate_b is not None else layer.gate.new_zeros(n),
                              torch.full((k,), c)])
    layer.up = torch.cat([layer.up, a])
    layer.up_b = None if layer.up_b is None else torch.cat([layer.up_b, layer.up_b.new_zeros(k)])
    layer.down = torch.cat([layer.down, b / c], dim=1)
    return (f"{path}: linear calibration (rank {k}) folded into {k} extra FFN channels with a gate bias: "
            f"{k * d:+,} weights, {n + k:,} gate biases")


def pad_ffn(layer: Layer, multiple: int) -> int:
    """Append zero FFN channels so the width is a multiple of ``multiple`` (exact: silu(0)*0 = 0 and the
    down columns are zero). Returns the number of channels added."""
    n = layer.gate.shape[0]
    extra = -(-n // multiple) * multiple - n
    if extra == 0:
        return 0
    d = layer.gate.shape[1]
    layer.gate = torch.cat([layer.gate, layer.gate.new_zeros(extra, d)])
    layer.up = torch.cat([layer.up, layer.up.new_zeros(extra, d)])
    layer.down = torch.cat([layer.down, layer.down.new_zeros(layer.down.shape[0], extra)], dim=1)
    for attr in ("gate_b", "up_b"):
        b = getattr(layer, attr)
        if b is not None:
            setattr(layer, attr, torch.cat([b, b.new_zeros(extra)]))
    return extra
