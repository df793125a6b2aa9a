"""Run a GGUF file in llama.cpp (through llama-cpp-python's C API): logits, perplexity, greedy
generation and the calls the speed benchmark times.

Needs the ``llamacpp`` extra (``pip install fxprune[llamacpp]``: llama-cpp-python 0.3.36, built from
source). ``exact=True`` (the default) keeps the KV cache in float32 and flash attention off, so an
f32 file reproduces the PyTorch model to float rounding; ``exact=False`` is llama.cpp's default
configuration (f16 KV cache, flash attention where it chooses to), which is what the speed
benchmark measures.

Perplexity follows ``fxprune.evaluation.perplexity``: each window of L tokens is decoded from an
empty cache and predicts its tokens 1..L-1; NLL is summed in float64.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch

from ..errors import EngineError

VERSION = "0.3.36"


def _lib():
    try:
        import llama_cpp
    except ImportError as e:
        raise EngineError(f"llama.cpp engine: llama-cpp-python is not installed; `pip install "
                          f"'fxprune[llamacpp]'` (llama-cpp-python=={VERSION}, built from source)") from e
    return llama_cpp


_QUIET = None


def _silence(lc) -> None:
    """Route llama.cpp's log to nowhere (errors still surface as return codes we check)."""
    global _QUIET
    if _QUIET is None:
        @lc.llama_log_callback
        def quiet(level, text, user_data):  # noqa: ARG001
            return None
        _QUIET = quiet
        lc.llama_log_set(_QUIET, ctypes.c_void_p(0))


class LlamaCppModel:
    """One GGUF model and one llama.cpp context.

    ``n_ctx``: context (tokens per sequence times ``n_seq``); ``n_batch``: most tokens per decode call;
    ``n_seq``: sequences decoded side by side (batch decoding); ``threads``: CPU threads for both
    prompt processing and generation; ``extra_buffers``: let llama.cpp repack weights into its extra
    CPU buffer types (default: ``extra_buffers_default()``, off on AMX CPUs where that crashes)."""

    def __init__(self, path, n_ctx: int = 512, n_batch: int | None = None, n_seq: int = 1, threads: int = 1,
                 exact: bool = True, quiet: bool = True, extra_buffers: bool | None = None):
        lc = _lib()
        self.lc = lc
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"llama.cpp engine: {self.path}: no such file")
        if quiet:
            _silence(lc)
        lc.llama_backend_init()
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = bool(extra_buffers_default() if extra_buffers is None else extra_buffers)
        self.model = lc.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self.model:
            raise EngineError(f"llama.cpp engine: llama.cpp could not load {self.path} (run with quiet=False "
                              "to see its log)")
        self.vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        cp = lc.llama_context_default_params()
        self.n_batch = int(n_batch or n_ctx)
        cp.n_ctx = int(n_ctx)
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.n_seq_max = int(n_seq)
        cp.n_threads = cp.n_threads_batch = int(threads)
        cp.no_perf = True
        if exact:
            cp.type_k = cp.type_v = lc.GGML_TYPE_F32
            cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            lc.llama_model_free(self.model)
            raise EngineError(f"llama.cpp engine: could not create a context for {self.path}")
        self.n_seq = int(n_seq)
        self.batch = lc.llama_batch_init(self.n_batch, 0, self.n_seq)
        self.mem = lc.llama_get_memory(self.ctx)

    # -- low level -------------------------------------------------------------------------------
    def clear(self) -> None:
        """Empty the KV cache of every sequence."""
        self.lc.llama_memory_clear(self.mem, True)

    def decode(self, tokens, positions, seqs, outputs) -> None:
        """One ``llama_decode`` of ``len(tokens)`` tokens (at most ``n_batch``); ``outputs[i]``: keep
        logits of token i."""
        n = len(tokens)
        if n > self.n_batch:
            raise EngineError(f"llama.cpp engine: {n} tokens exceed n_batch {self.n_batch}")
        b = self.batch
        b.n_tokens = n
        for i in range(n):
            b.token[i] = int(tokens[i])
            b.pos[i] = int(positions[i])
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = int(seqs[i])
            b.logits[i] = 1 if outputs[i] else 0
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise EngineError(f"llama.cpp engine: llama_decode returned {rc} on {self.path}")

    def logits(self, rows: int) -> np.ndarray:
        """The logits of the last decode's ``rows`` output tokens, [rows, vocab] float32 (a copy)."""
        ptr = self.lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(rows, self.vocab)).copy()

    # -- high level ------------------------------------------------------------------------------
    def sequence_logits(self, tokens) -> np.ndarray:
        """Logits at every position of ``tokens`` (one sequence from an empty cache), [n, vocab]."""
        tokens = [int(t) for t in tokens]
        self.clear()
        out = []
        for s in range(0, len(tokens), self.n_batch):
            chunk = tokens[s:s + self.n_batch]
            self.decode(chunk, range(s, s + len(chunk)), [0] * len(chunk), [True] * len(chunk))
            out.append(self.logits(len(chunk)))
        return np.concatenate(out)

    def greedy(self, prompt, new_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt`` (argmax of the logits, no sampler)."""
        prompt = [int(t) for t in prompt]
        self.clear()
        for s in range(0, len(prompt), self.n_batch):
            chunk = prompt[s:s + self.n_batch]
            last = s + len(chunk) == len(prompt)
            self.decode(chunk, range(s, s + len(chunk)), [0] * len(chunk),
                        [last and i == len(chunk) - 1 for i in range(len(chunk))])
        out = []
        pos = len(prompt)
        for _ in range(new_tokens):
            t = int(np.argmax(self.logits(1)[0]))
            out.append(t)
            self.decode([t], [pos], [0], [True])
            pos += 1
        return out

    def perplexity(self, windows: torch.Tensor, progress: bool = False):
        """Perplexity over ``windows`` [n, L], the protocol of ``fxprune.evaluation.perplexity``."""
        from ..evaluation.perplexity import PerplexityResult
        nll, count = 0.0, 0
        it = range(windows.shape[0])
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, desc="perplexity (llama.cpp)", leave=False)
        for i in it:
            ids = windows[i].tolist()
            lg = torch.from_numpy(self.sequence_logits(ids)[:-1]).double()
            target = torch.tensor(ids[1:])
            nll += float(torch.nn.functional.cross_entropy(lg, target, reduction="sum"))
            count += len(ids) - 1
        return PerplexityResult(nll, count)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """llama.cpp's own tokenization of ``text`` with this file's tokenizer (``parse_special``: special
        tokens written in the text become their ids, as Hugging Face tokenizers do)."""
        lc = self.lc
        vocab = lc.llama_model_get_vocab(self.model)
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(vocab, raw, len(raw), buf, cap, add_special, parse_special)
        if n < 0:
            raise EngineError(f"llama.cpp engine: tokenization failed on {self.path}")
        return list(buf[:n])

    def close(self) -> None:
        lc = self.lc
        if getattr(self, "batch", None) is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def extra_buffers_default() -> bool:
    """Whether llama.cpp may repack weights into its extra CPU buffer types (the AMX and ``CPU_REPACK``
    layouts). Off on CPUs with AMX: llama.cpp 0.3.36's AMX repack segfaults there on the first decode,
    for stock files too (dense SmolLM2 q4_0, seen on a Xeon with ``amx_int8`` in a VM), and the AMX
    buffer type cannot be switched off alone. ``FXPRUNE_LLAMACPP_EXTRA_BUFFERS=1`` / ``0`` overrides."""
    import os
    env = os.environ.get("FXPRUNE_LLAMACPP_EXTRA_BUFFERS")
    if env is not None:
        return env not in ("0", "", "false", "no")
    return not _cpu_has_amx()


@functools.lru_cache(maxsize=1)
def _cpu_has_amx() -> bool:
    """Whether this CPU reports AMX (``amx_int8`` in /proc/cpuinfo), read once per process."""
    try:
        with open("/proc/cpuinfo") as f:
            return " amx_int8" in f.read()
    except OSError:
        return False


def available() -> bool:
    """True if llama-cpp-python can be imported."""
    try:
        import llama_cpp  # noqa: F401
        return True
    except ImportError:
        return False


def nll_of(logits: np.ndarray, ids) -> float:
    """Σ NLL (float64) of ``ids[1:]`` under ``logits[:-1]``."""
    lg = torch.from_numpy(np.asarray(logits[:-1])).double()
    return float(torch.nn.functional.cross_entropy(lg, torch.as_tensor(list(ids[1:])), reduction="sum"))


__all__ = ["LlamaCppModel", "available", "nll_of"]
