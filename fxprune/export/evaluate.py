"""``fxprune eval FILE.gguf --engine llamacpp``: perplexity of a GGUF file in llama.cpp on the same
token windows as the PyTorch path.

The windows come from ``fxprune.data.evaluation_windows`` with the tokenizer of the model the file
was exported from (its ``fxprune.source`` key: a checkpoint directory, ``smollm2``, ``tiny:...``),
or ``--tokenizer SPEC``; only when neither loads does llama.cpp's own tokenizer cut the text (said
in the protocol). The protocol records the sha256 of the window ids so the two engines' runs can
be checked to have scored the same tokens.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import EngineError, FxPruneError


def gguf_source(path) -> str | None:
    """The ``fxprune.source`` key of a GGUF file written by fxprune (None otherwise)."""
    import gguf
    try:
        f = gguf.GGUFReader(str(path)).fields.get("fxprune.source")
    except Exception as e:
        raise EngineError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
    return None if f is None else str(f.contents())


def tokenizer_of(spec: str):
    """The tokenizer of model ``spec`` without loading its weights where possible."""
    from ..data import ByteTokenizer
    if spec.startswith("tiny:"):
        from ..models.tiny import tiny_config
        cfg = tiny_config(spec.split(":", 1)[1])
        return ByteTokenizer(cfg.vocab_size, getattr(cfg, "bos_token_id", None))
    from transformers import AutoConfig, AutoTokenizer

    from . import source_gguf
    g = source_gguf(spec)
    if g is not None and (spec.endswith(".gguf") or spec == "smollm2"):
        return AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
    p = Path(spec).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(p))
    except Exception:
        cfg = AutoConfig.from_pretrained(str(p))
        return ByteTokenizer(cfg.vocab_size, getattr(cfg, "bos_token_id", None))


class _LlamaCppTokenizer:
    """llama.cpp's tokenizer of the file, behind the interface ``fxprune.data.tokenize`` uses."""

    def __init__(self, model):
        self.model = model

    def encode(self, text, add_special_tokens=True):
        return self.model.tokenize(text, add_special_tokens)


def windows_sha256(ids) -> str:
    return hashlib.sha256(ids.numpy().astype("<i8").tobytes()).hexdigest()


def run(args) -> int:
    """The ``--engine llamacpp`` branch of ``fxprune eval`` (perplexity only)."""
    from ..data import evaluation_windows
    from .llamacpp import VERSION, LlamaCppModel
    path = Path(args.model)
    if path.suffix != ".gguf":
        raise EngineError(f"llama.cpp engine: {args.model!r} is not a .gguf file (export it first: "
                          "`fxprune export MODEL --to gguf --out FILE`)")
    if args.tasks:
        raise EngineError("llama.cpp engine: zero-shot tasks run on the PyTorch engine only; use --ppl")
    spec = getattr(args, "tokenizer", None) or gguf_source(path)
    tok, tok_note = None, ""
    if spec:
        try:
            tok, tok_note = tokenizer_of(spec), f"tokenizer of {spec}"
        except (OSError, ValueError, FxPruneError) as e:
            tok_note = f"tokenizer of {spec} failed to load ({type(e).__name__}); "
    threads = int(getattr(args, "threads", None) or 1)
    result = {"ppl": {}, "tasks": {}, "protocol": {
        "model": str(path), "engine": f"llama.cpp (llama-cpp-python {VERSION})", "seq_len": args.seq_len,
        "windows": args.windows, "threads": threads, "kv_cache": "f32, flash attention off (exact mode)",
        "perplexity": "exp(sum NLL / predicted tokens), non-overlapping windows, L-1 predictions each",
        "data": {}}}
    with LlamaCppModel(path, n_ctx=args.seq_len, threads=threads) as m:
        if tok is None:
            tok, tok_note = _LlamaCppTokenizer(m), tok_note + "llama.cpp's own tokenizer of the file"
        result["protocol"]["tokenizer"] = tok_note
        for name in [s for s in args.ppl.split(",") if s]:
            w = evaluation_windows(tok, name, args.seq_len, args.windows, root=args.data_root)
            r = m.perplexity(w.ids, progress=True)
            result["ppl"][name] = r.ppl
            result["protocol"]["data"][name] = {**w.protocol(), "predicted_tokens": r.tokens,
                                                "windows_sha256": windows_sha256(w.ids)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result["ppl"].items():
            print(f"ppl {k} (llama.cpp): {v:.4f}")
    return 0
