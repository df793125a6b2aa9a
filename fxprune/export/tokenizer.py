"""The tokenizer part of a GGUF file (``tokenizer.*`` keys): vocabulary, merges, special tokens and the
chat template, from the best source available.

1. ``from_gguf(path)``: the ``tokenizer.*`` keys of the model's own GGUF file, copied with their types
   (SmolLM2 comes as GGUF: its pre-tokenizer name, special tokens and chat template carry over
   verbatim, so llama.cpp tokenizes the pruned file exactly as it tokenized the original);
2. ``from_hf(tokenizer, vocab)``: a byte-level BPE tokenizer (``tokenizer.json``) converted to
   llama.cpp's ``gpt2`` tokenizer; llama.cpp's pre-tokenizer name cannot be derived from the
   files, so it is ``pre`` (default ``"default"``, with a note) unless the caller names one;
3. ``none(vocab)``: no tokenizer (tiny test models): ``tokenizer.ggml.model = "none"``; llama.cpp
   then runs on token ids only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ExportError

# llama.cpp token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class TokenizerMeta:
    """``(key, value, value type, array element type)`` entries for ``GGUFWriter.add_key_value``."""

    entries: list = field(default_factory=list)
    source: str = ""
    notes: list = field(default_factory=list)
    n_tokens: int | None = None


def from_gguf(path) -> TokenizerMeta:
    """Copy every ``tokenizer.*`` key of the GGUF file at ``path``."""
    import gguf
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise ExportError(f"{path}: cannot read GGUF tokenizer metadata ({type(e).__name__}: {e})") from e
    meta = TokenizerMeta(source=f"tokenizer keys copied from {path.name}")
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = f.contents()
        if key == "tokenizer.ggml.tokens":
            meta.n_tokens = len(value)
        meta.entries.append((key, value, vtype, sub))
    if not meta.entries:
        raise ExportError(f"{path}: the GGUF file has no tokenizer.* keys")
    return meta


def none(vocab: int) -> TokenizerMeta:
    """No tokenizer: llama.cpp gets ``vocab`` dummy tokens and runs on ids."""
    import gguf
    return TokenizerMeta([("tokenizer.ggml.model", "none", gguf.GGUFValueType.STRING, None)],
                         source="no tokenizer (token ids only)", n_tokens=vocab)


def from_hf(tokenizer, vocab: int, pre: str | None = None) -> TokenizerMeta:
    """Convert a Hugging Face byte-level BPE tokenizer (``tokenizer.json``) to GGUF keys."""
    import gguf
    V = gguf.GGUFValueType
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ExportError(f"tokenizer {type(tokenizer).__name__}: not a fast tokenizer (no tokenizer.json); "
                          "pass the model's GGUF file as the vocabulary source")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"tokenizer {type(tokenizer).__name__}: model type {model.get('type')!r}; only byte-level "
                          "BPE converts to GGUF here (pass the model's GGUF file as the vocabulary source)")
    pretok = json.dumps(spec.get("pre_tokenizer") or {})
    if "ByteLevel" not in pretok:
        raise ExportError(f"tokenizer {type(tokenizer).__name__}: BPE without a byte-level pre-tokenizer has no "
                          "llama.cpp equivalent here")
    by_id = {i: t for t, i in model["vocab"].items()}
    types = {i: NORMAL for i in by_id}
    for a in spec.get("added_tokens", []):
        by_id[a["id"]] = a["content"]
        types[a["id"]] = CONTROL if a.get("special") else USER_DEFINED
    n = max(vocab, max(by_id) + 1)
    tokens, ttypes = [], []
    for i in range(n):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        ttypes.append(types.get(i, UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    meta = TokenizerMeta(source=f"converted from {type(tokenizer).__name__} (byte-level BPE)", n_tokens=n)
    e = meta.entries
    e += [("tokenizer.ggml.model", "gpt2", V.STRING, None),
          ("tokenizer.ggml.pre", pre or "default", V.STRING, None),
          ("tokenizer.ggml.tokens", tokens, V.ARRAY, V.STRING),
          ("tokenizer.ggml.token_type", ttypes, V.ARRAY, V.INT32),
          ("tokenizer.ggml.merges", merges, V.ARRAY, V.STRING)]
    if pre is None:
        meta.notes.append("tokenizer: llama.cpp pre-tokenizer set to 'default' (it cannot be derived from "
                          "tokenizer.json); name the right one if llama.cpp tokenizes differently")
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        tid = getattr(tokenizer, attr, None)
        if tid is not None:
            e.append((f"tokenizer.ggml.{key}_token_id", int(tid), V.UINT32, None))
    add_bos = getattr(tokenizer, "add_bos_token", None)
    if add_bos is not None:
        e.append(("tokenizer.ggml.add_bos_token", bool(add_bos), V.BOOL, None))
    tmpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tmpl, str) and tmpl:
        e.append(("tokenizer.chat_template", tmpl, V.STRING, None))
    return meta
