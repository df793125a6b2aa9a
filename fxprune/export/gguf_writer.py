"""Write a ``Decoder`` (dense LLaMA-like layers, per-layer widths allowed) as a GGUF file with gguf-py.

Architecture (checked against llama.cpp's ``src/models/{llama,deci,qwen2}.cpp`` as bundled with
llama-cpp-python 0.3.36):

* ``llama``: every layer is built with layer 0's widths, so only uniform widths; it loads optional
  q/k/v/o and gate/up/down biases (LIAR's added ``o_proj``/``down_proj`` biases load);
* ``qwen2``: uniform widths with ``heads * head_dim == hidden``; it loads q/k/v biases but no
  output or FFN biases (a file with those tensors fails llama.cpp's tensor-count check);
* ``deci``: per-layer ``feed_forward_length``, ``head_count`` and ``head_count_kv`` arrays (its
  graph uses ``n_ff(il)``, ``n_head(il)``, ``n_head_kv(il)``), the same optional biases as
  ``llama``. Everything else goes here, Qwen2 included (its q/k rows are re-ordered for deci's
  interleaved rope like LLaMA's; its biases load).

``attention.key_length``/``value_length`` are always written: llama.cpp otherwise derives the head
size from layer 0's head count. Both LLaMA-style architectures use interleaved ("normal") rope, so
q/k rows (and biases) of every head are permuted from Hugging Face's half-split order to pairs.

Tensor types: 1-D tensors are float32; 2-D tensors take ``dtype`` when their row length (the input
width) is a multiple of the type's block, else float16 with a printed note. With ``pad_ffn`` (the
default) FFN widths are first padded with zero channels to the block multiple (exact).

The file is written through ``fxprune.output.atomic_file`` (a locked temporary beside ``path``,
renamed when complete); an existing ``path`` is replaced only with ``overwrite`` and only if
fxprune wrote it (its ``fxprune.version`` key): fxprune never replaces a file it did not write.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from .llama_family import Decoder, pad_ffn
from .tokenizer import TokenizerMeta
from .types import gguf_type

FXPRUNE_KEY = "fxprune.version"


@dataclass
class ExportReport:
    """What an export wrote: file, architecture, type, size, per-layer widths and every cost note."""

    path: str
    arch: str
    dtype: str
    bytes: int
    widths: list          # [(q heads, KV heads, FFN channels)] per layer, as written
    tensor_types: dict    # ggml type name -> number of tensors
    notes: list = field(default_factory=list)
    tokenizer: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def choose_arch(dec: Decoder) -> str:
    """``llama``/``qwen2`` where the stock architecture computes exactly this model, else ``deci``."""
    uniform = len(set(dec.widths())) == 1
    if not uniform:
        return "deci"
    if dec.family in ("llama", "mistral"):
        return "llama"
    nh = dec.widths()[0][0]
    extra_bias = any(getattr(l, b) is not None for l in dec.layers for b in ("o_b", "gate_b", "up_b", "down_b"))
    if dec.family == "qwen2" and nh * dec.head_dim == dec.hidden and not extra_bias:
        return "qwen2"
    return "deci"


def interleave_rope(t: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from Hugging Face's half-split rope layout (``i`` pairs with
    ``i + head_dim/2``) to interleaved pairs (``2i``, ``2i+1``), as llama.cpp's normal rope expects."""
    rest = t.shape[1:]
    return t.reshape(heads, 2, head_dim // 2, *rest).transpose(1, 2).reshape(heads * head_dim, *rest)


def llama3_rope_factors(theta: float, head_dim: int, s: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3's rope scaling (``rope_freqs.weight``)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    old = s["original_max_position_embeddings"]
    lo_wl, hi_wl = old / s["low_freq_factor"], old / s["high_freq_factor"]
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(s["factor"])
        else:
            smooth = (old / wl - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
            out.append(1.0 / ((1 - smooth) / s["factor"] + smooth))
    return np.asarray(out, dtype=np.float32)


def _check_target(path: Path, overwrite: bool = False) -> None:
    """Refuse ``path`` unless it is new, or (with ``overwrite``) a GGUF file fxprune wrote."""
    from ..errors import OutputError
    if not path.exists():
        return
    if path.is_dir():
        raise OutputError(f"--out {str(path)!r} is a directory; give a .gguf file name")
    try:
        import gguf
        written_by_us = FXPRUNE_KEY in gguf.GGUFReader(str(path)).fields
    except Exception:
        written_by_us = False
    if not written_by_us:
        raise OutputError(f"--out {str(path)!r} exists and was not written by fxprune; fxprune never replaces "
                          "files it did not write: remove it or choose another name")
    if not overwrite:
        raise OutputError(f"--out {str(path)!r} is a GGUF file fxprune wrote: pass --overwrite to replace it")


class _Tensors:
    """Collects (name, array, ggml type) and the notes about types that had to change."""

    def __init__(self, dtype: str):
        import gguf
        self.gguf = gguf
        self.t = gguf_type(dtype)
        self.qtype = gguf.GGMLQuantizationType[self.t.ggml]
        self.items: list = []
        self.notes: list = []

    def add(self, name: str, x: torch.Tensor) -> None:
        a = x.detach().float().cpu().numpy()
        q = self.gguf.GGMLQuantizationType
        if a.ndim == 1 or self.t.ggml == "F32":
            self.items.append((name, np.ascontiguousarray(a, dtype=np.float32), q.F32))
            return
        qtype = self.qtype
        if a.shape[-1] % self.t.row_multiple:
            qtype = q.F16
            self.notes.append(f"{name}: row length {a.shape[-1]} is not a multiple of {self.t.row_multiple}: "
                              f"stored as f16 instead of {self.t.name}")
        if qtype == q.F16:
            self.items.append((name, a.astype(np.float16), q.F16))
        else:
            self.items.append((name, self.gguf.quants.quantize(np.ascontiguousarray(a), qtype), qtype))


def write_gguf(dec: Decoder, path, dtype: str, tok: TokenizerMeta, *, pad: bool = True, name: str = "",
               source: str = "", overwrite: bool = False, log=print) -> ExportReport:
    """Write ``dec`` to ``path`` as GGUF ``dtype`` (``f32``, ``f16``, ``q8_0``, ``q4_0``)."""
    import gguf

    from .. import __version__
    t0 = time.perf_counter()
    path = Path(path)
    _check_target(path, overwrite)
    t = gguf_type(dtype)
    notes = list(dec.notes) + list(tok.notes)
    if pad and t.row_multiple > 1:
        for i, layer in enumerate(dec.layers):
            n = layer.gate.shape[0]
            added = pad_ffn(layer, t.row_multiple)
            if added:
                notes.append(f"blk.{i}: FFN width {n} padded with {added} zero channels to {n + added} "
                             f"(multiple of {t.row_multiple} for {t.name}): {3 * added * dec.hidden:+,} weights")
    arch = choose_arch(dec)
    widths = dec.widths()
    for i, (nh, nkv, nff) in enumerate(widths):
        if nkv < 1 or nh < 1 or nff < 1 or nh % nkv:
            raise ExportError(f"blk.{i}: widths (q heads {nh}, KV heads {nkv}, FFN {nff}) cannot be written "
                              "(llama.cpp needs q heads a multiple of KV heads, all > 0)")
    if tok.n_tokens is not None and tok.n_tokens != dec.vocab:
        raise ExportError(f"tokenizer ({tok.source}) has {tok.n_tokens} tokens but the embedding has {dec.vocab} rows")
    uniform = len(set(widths)) == 1
    hd = dec.head_dim
    permute = arch in ("llama", "deci")

    tensors = _Tensors(dtype)
    tensors.add("token_embd.weight", dec.embed)
    tensors.add("output_norm.weight", dec.norm)
    if dec.lm_head is not None:
        tensors.add("output.weight", dec.lm_head)
    if dec.rope_scaling["type"] == "llama3":
        tensors.items.append(("rope_freqs.weight", llama3_rope_factors(dec.rope_theta, hd, dec.rope_scaling),
                              gguf.GGMLQuantizationType.F32))
    for i, (l, (nh, nkv, _)) in enumerate(zip(dec.layers, widths)):
        q, k, qb, kb = l.q, l.k, l.q_b, l.k_b
        if permute:
            q, k = interleave_rope(q, nh, hd), interleave_rope(k, nkv, hd)
            qb = None if qb is None else interleave_rope(qb, nh, hd)
            kb = None if kb is None else interleave_rope(kb, nkv, hd)
        b = f"blk.{i}"
        for nm, x in ((f"{b}.attn_norm.weight", l.attn_norm), (f"{b}.attn_q.weight", q), (f"{b}.attn_q.bias", qb),
                      (f"{b}.attn_k.weight", k), (f"{b}.attn_k.bias", kb), (f"{b}.attn_v.weight", l.v),
                      (f"{b}.attn_v.bias", l.v_b), (f"{b}.attn_output.weight", l.o), (f"{b}.attn_output.bias", l.o_b),
                      (f"{b}.ffn_norm.weight", l.ffn_norm), (f"{b}.ffn_gate.weight", l.gate),
                      (f"{b}.ffn_gate.bias", l.gate_b), (f"{b}.ffn_up.weight", l.up), (f"{b}.ffn_up.bias", l.up_b),
                      (f"{b}.ffn_down.weight", l.down), (f"{b}.ffn_down.bias", l.down_b)):
            if x is not None:
                tensors.add(nm, x)
    notes += tensors.notes

    from ..output import atomic_file
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path, overwrite=True) as tmp:
            w = gguf.GGUFWriter(str(tmp), arch)
            w.add_type(gguf.GGUFType.MODEL)
            w.add_name(name or f"fxprune {dec.family}")
            w.add_file_type(int(gguf.LlamaFileType[t.file_type]))
            if t.row_multiple > 1:
                w.add_quantization_version(gguf.GGML_QUANT_VERSION)
            w.add_string(FXPRUNE_KEY, __version__)
            if source:
                w.add_string("fxprune.source", str(source))
            w.add_block_count(len(dec.layers))
            w.add_context_length(dec.context_length)
            w.add_embedding_length(dec.hidden)
            w.add_vocab_size(dec.vocab)
            ff, heads, kv = ([x[j] for x in widths] for j in (2, 0, 1))
            w.add_feed_forward_length(ff[0] if uniform else ff)
            w.add_head_count(heads[0] if uniform else heads)
            w.add_head_count_kv(kv[0] if uniform else kv)
            w.add_key_length(hd)
            w.add_value_length(hd)
            w.add_rope_dimension_count(hd)
            w.add_rope_freq_base(dec.rope_theta)
            if dec.rope_scaling["type"] == "linear":
                w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
                w.add_rope_scaling_factor(dec.rope_scaling["factor"])
            w.add_layer_norm_rms_eps(dec.rms_eps)
            for key, value, vtype, sub in tok.entries:
                w.add_key_value(key, value, vtype, sub_type=sub)
            counts: dict = {}
            for nm, arr, qt in tensors.items:
                w.add_tensor(nm, arr, raw_dtype=qt)
                counts[qt.name] = counts.get(qt.name, 0) + 1
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
    except Exception as e:
        from ..errors import FxPruneError
        if isinstance(e, FxPruneError):
            raise
        raise ExportError(f"{path}: writing the GGUF file failed ({type(e).__name__}: {e})") from e
    rep = ExportReport(str(path), arch, t.name, path.stat().st_size, [list(x) for x in widths], counts, notes,
                       tok.source, round(time.perf_counter() - t0, 2))
    for n in notes:
        log(f"  note: {n}")
    return rep
