"""Calibration and evaluation data: where it lives, how it is read, how it is cut into token windows.

Contracts
- ``data_root()``: ``--data-root`` argument, else ``$FXPRUNE_DATA``, else ``<repo>/../shared/data``.
- ``calibration_windows``: ``n_samples`` windows of exactly ``seq_len`` tokens, drawn with ``seed``
  (same seed and source give the same tensor). Sources: a text file, a jsonl file (``"text"`` field,
  e.g. the C4 train head), ``hf:<dataset dir or name>[:split[:field]]`` when the optional ``datasets``
  package is installed, or ``generated`` (data-free: text sampled from the model itself, starting
  at its start token).
- ``evaluation_windows``: the WikiText-2 raw test split joined the way GPTQ/SparseGPT/Wanda join the
  Hugging Face rows, or any text file, cut into *non-overlapping* windows of ``seq_len`` tokens
  (a trailing partial window is dropped), optionally limited to the first ``max_windows``.
- BOS-first windows: where the tokenizer puts a start token before a text (``bos_prefix``), every
  window, calibration and evaluation, is that token followed by ``seq_len - 1`` text tokens, as the
  model sees text in use (llama.cpp's perplexity and lm-eval with ``add_bos_token`` do the same);
  evaluation chunks the text stream into ``seq_len - 1`` token pieces so every text token is
  predicted exactly once. Tokenizers that add no start token (SmolLM2's) get plain windows, unchanged.
  ``bos=True/False`` forces either; ``Windows.protocol()`` records the choice (``bos_first``).
- Calibration and evaluation data from the same file are refused (``DataError`` naming the file), and
  so is calibration text that contains evaluation text (a renamed, re-encoded, wrapped or partial
  copy: ``fxprune.disjoint``, word 13-grams).

Every failure to find or read a file is a ``DataError`` that names the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "FXPRUNE_DATA"

#: Named data sets, relative to the data root.
NAMED_FILES = {
    "wikitext2": "wikitext-2-raw/wiki.test.raw",
    "c4": "c4/c4-train.00000-of-01024.first1000.jsonl",
}
GENERATED = "generated"
#: Evaluation files that calibration must never read (relative to the data root).
EVALUATION_FILES = ("wikitext-2-raw/wiki.test.raw", "wikitext-2/wiki.test.tokens")


def data_root(arg: str | os.PathLike | None = None) -> Path:
    """The data directory: ``arg``, else ``$FXPRUNE_DATA``, else ``<repo root>/../shared/data``."""
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return REPO_ROOT.parent / "shared" / "data"


def resolve(name_or_path: str, root: str | os.PathLike | None = None) -> Path:
    """A named set (``wikitext2``, ``c4``) under the data root, or a path; the file must exist."""
    if name_or_path in NAMED_FILES:
        path = data_root(root) / NAMED_FILES[name_or_path]
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_absolute() and not path.exists():
            path = data_root(root) / name_or_path
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found (data root: {str(data_root(root))!r}; "
                        f"set --data-root or ${DATA_ENV})")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_disjoint(calibration: Path | str | None, evaluation: Sequence[Path | str]) -> None:
    """Refuse calibration data that is one of the evaluation files (same path or same bytes)."""
    if calibration is None or str(calibration) == GENERATED or str(calibration).startswith("hf:"):
        return
    cal = Path(calibration)
    for ev in evaluation:
        ev = Path(ev)
        same = cal.resolve() == ev.resolve()
        if not same and cal.is_file() and ev.is_file() and cal.stat().st_size == ev.stat().st_size:
            same = sha256_file(cal) == sha256_file(ev)
        if same:
            raise DataError(f"calibration and evaluation data are the same file {str(ev)!r}: "
                            "calibrate on a training split (e.g. the C4 train head), never on the test data")


# --------------------------------------------------------------------------------------------- text
def wikitext_hf_text(path: Path) -> str:
    """WikiText raw file joined as GPTQ/SparseGPT/Wanda join the HF rows (see shared/data/SOURCES.md)."""
    lines = _read(path).split("\n")[:-1]
    rows = ["" if line.strip() == "" else line + "\n" for line in lines]
    return "\n\n".join(rows)


def _read(path: Path) -> str:
    from .disjoint import read_text  # UTF-8 (BOM or not) or BOM-marked UTF-16/32, else DataError
    return read_text(path)


def read_documents(path: Path) -> list[str]:
    """Documents of a file: jsonl → the ``"text"`` field of each row; anything else → one document."""
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(_read(path).splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["text"]
                if not isinstance(text, str):
                    raise TypeError(f"\"text\" is a {type(text).__name__}, not a string")
                docs.append(text)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{str(path)!r} line {i + 1}: expected a JSON object with a \"text\" string "
                                f"({type(e).__name__}: {e})") from e
        if not docs:
            raise DataError(f"{str(path)!r} holds no documents")
        return docs
    if path.name.startswith("wiki.") and path.suffix in (".raw", ".tokens"):
        return [wikitext_hf_text(path)]
    return [_read(path)]


def read_hf_documents(spec: str) -> list[str]:
    """``hf:<dir or name>[:split[:field]]`` through the optional ``datasets`` package, offline."""
    try:
        import datasets  # noqa: F401
    except ImportError as e:
        raise DataError(f"{spec!r} needs the optional `datasets` package (pip install datasets)") from e
    parts = spec[3:].split(":")
    name, split, field = parts[0], (parts[1] if len(parts) > 1 else "train"), (parts[2] if len(parts) > 2 else "text")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(name, split=split)
        return [t for t in ds[field] if t]
    except Exception as e:  # datasets raises many kinds; name the data set
        raise DataError(f"cannot load Hugging Face dataset {name!r} offline: {type(e).__name__}: {e}") from e


# ----------------------------------------------------------------------------------------- tokens
class ByteTokenizer:
    """UTF-8 bytes modulo ``vocab_size``: a stand-in tokenizer for tiny random models and tests."""

    def __init__(self, vocab_size: int = 256, bos_token_id: int | None = None):
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_id = bos_token_id

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b % self.vocab_size for b in text.encode("utf-8")]
        if add_special_tokens and self.bos_token_id is not None:
            ids = [self.bos_token_id] + ids
        return ids


def tokenizer_for(loaded: Any) -> Any:
    """The tokenizer of a ``LoadedModel``; tiny models (no tokenizer) get a ``ByteTokenizer``."""
    if loaded.tokenizer is not None:
        return loaded.tokenizer
    cfg = loaded.model.config
    return ByteTokenizer(cfg.vocab_size, getattr(cfg, "bos_token_id", None))


def bos_prefix(tokenizer: Any) -> int | None:
    """The start token ``tokenizer`` puts before a text (its BOS), or None if it adds none.

    Asked of the tokenizer itself (encode with and without special tokens), not of its config:
    SmolLM2 declares a ``bos_token`` but does not add it; Gemma and LLaMA tokenizers do."""
    probe = "The cat"
    with_special = tokenize(tokenizer, probe, add_special_tokens=True)
    plain = tokenize(tokenizer, probe, add_special_tokens=False)
    if len(with_special) > len(plain) and with_special[1:1 + len(plain)] == plain:
        return int(with_special[0])
    return None


def _bos_for(tokenizer: Any, bos: bool | None) -> int | None:
    """``bos``: None = as the tokenizer does (``bos_prefix``); True = always (the tokenizer's
    ``bos_token_id``, a ``DataError`` if it has none); False = never."""
    if bos is False:
        return None
    found = bos_prefix(tokenizer)
    if found is None and bos:
        found = getattr(tokenizer, "bos_token_id", None)
        if found is None:
            raise DataError("BOS-first windows were asked for but the tokenizer has no bos_token_id")
    return found


def tokenize(tokenizer: Any, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` (HF tokenizers and ``ByteTokenizer``)."""
    if hasattr(tokenizer, "model_max_length"):  # HF: silence the "longer than max length" warning
        import transformers
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        finally:
            transformers.logging.set_verbosity(verbosity)
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


@dataclass(frozen=True)
class CalibrationConfig:
    """Which calibration windows to draw. ``source``: file path, ``c4``, ``hf:...`` or ``generated``."""

    source: str = "c4"
    n_samples: int = 128
    seq_len: int = 512
    seed: int = 0
    bos: bool | None = None  # None: BOS first where the tokenizer adds one (see ``bos_prefix``)

    def __post_init__(self):
        if self.n_samples < 1 or self.seq_len < 2:
            raise DataError(f"calibration needs n_samples >= 1 and seq_len >= 2 (got {self.n_samples}, {self.seq_len})")


@dataclass(frozen=True)
class Windows:
    """Token windows ``ids`` [n, L] plus what a report needs to state the protocol."""

    ids: torch.Tensor
    source: str
    sha256: str | None
    total_tokens: int  # tokens in the whole source text (evaluation) or drawn (calibration)
    bos_token: int | None = None  # every window starts with this token (then seq_len - 1 text tokens)

    @property
    def seq_len(self) -> int:
        return int(self.ids.shape[1])

    def protocol(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "seq_len": self.seq_len,
                "windows": int(self.ids.shape[0]), "tokens": int(self.ids.numel()),
                "source_tokens": self.total_tokens, "bos_first": self.bos_token is not None,
                "bos_token": self.bos_token}


def calibration_windows(tokenizer: Any, cfg: CalibrationConfig, *, model: torch.nn.Module | None = None,
                        root: str | None = None, evaluation_files: Sequence[Path] | None = None) -> Windows:
    """``cfg.n_samples`` windows of ``cfg.seq_len`` tokens from ``cfg.source`` (GPTQ-style sampling:
    a random document long enough, then a random start inside it).

    ``evaluation_files``: files the source must not be (default: the known test splits under the
    data root, ``EVALUATION_FILES``); a match raises ``DataError``."""
    if cfg.source == GENERATED:
        if model is None:
            raise DataError("generated (data-free) calibration needs the model")
        return generated_windows(model, tokenizer, cfg)
    if evaluation_files is None:
        evaluation_files = [data_root(root) / f for f in EVALUATION_FILES]
    evaluation_files = [f for f in evaluation_files if Path(f).exists()]
    if cfg.source.startswith("hf:"):
        docs, sha, name = read_hf_documents(cfg.source), None, cfg.source
    else:
        path = resolve(cfg.source, root)
        check_disjoint(path, evaluation_files)
        docs, sha, name = read_documents(path), sha256_file(path), str(path)
    bos = _bos_for(tokenizer, cfg.bos)
    span = cfg.seq_len - (bos is not None)  # text tokens per window
    rng = random.Random(cfg.seed)
    cache: dict[int, list[int]] = {}
    windows = []
    attempts = 0
    while len(windows) < cfg.n_samples:
        attempts += 1
        if attempts > 50 * cfg.n_samples + 1000:
            raise DataError(f"{name!r}: too few documents longer than {cfg.seq_len} tokens")
        j = rng.randrange(len(docs))
        if j not in cache:  # BOS-first: the text alone, the start token is put before each window
            cache[j] = tokenize(tokenizer, docs[j], add_special_tokens=bos is None)
        ids = cache[j]
        if len(ids) <= span:
            continue
        start = rng.randrange(len(ids) - span)
        windows.append(([bos] if bos is not None else []) + ids[start:start + span])
    from .disjoint import check_content_disjoint  # a renamed, re-encoded or wrapped copy of test text
    check_content_disjoint((docs[j] for j in sorted(cache)), name, evaluation_files)
    return Windows(torch.tensor(windows, dtype=torch.long), name, sha, cfg.n_samples * cfg.seq_len, bos)


@torch.no_grad()
def generated_windows(model: torch.nn.Module, tokenizer: Any, cfg: CalibrationConfig) -> Windows:
    """Data-free calibration: sample ``seq_len`` tokens from the model, starting at its start token."""
    config = getattr(model, "config", None)
    start = getattr(tokenizer, "bos_token_id", None)
    if start is None:
        start = getattr(config, "bos_token_id", None)
    if start is None:
        start = 0
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    ids = torch.full((cfg.n_samples, 1), int(start), dtype=torch.long, device=device)
    from tqdm.auto import tqdm
    past = None  # KV cache where the model returns one; otherwise the prefix is recomputed each step
    for _ in tqdm(range(cfg.seq_len - 1), desc="generate calibration", leave=False):
        if past is not None:
            out = model(input_ids=ids[:, -1:], past_key_values=past, use_cache=True)
        else:
            out = model(input_ids=ids, use_cache=True) if _has_cache(model) else model(input_ids=ids)
        past = getattr(out, "past_key_values", None)
        probs = torch.softmax(out.logits[:, -1, :].float(), -1).cpu()
        nxt = torch.multinomial(probs, 1, generator=gen).to(device)
        ids = torch.cat([ids, nxt], dim=1)
    return Windows(ids, GENERATED, None, int(ids.numel()), int(start))


def _has_cache(model: torch.nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "use_cache", None) is not None and getattr(cfg, "model_type", "") != "mamba"


def evaluation_windows(tokenizer: Any, source: str, seq_len: int, max_windows: int | None = None,
                       root: str | None = None, bos: bool | None = None) -> Windows:
    """Non-overlapping ``seq_len`` windows of ``source`` (``wikitext2`` or a text file).

    BOS-first (``bos``: see ``CalibrationConfig.bos``): the text stream, tokenized without special
    tokens, is cut into ``seq_len - 1`` token chunks and the start token put before each."""
    if seq_len < 2:
        raise DataError(f"evaluation windows need seq_len >= 2 (got {seq_len})")
    if max_windows is not None and max_windows < 1:
        raise DataError(f"evaluation needs at least one window (got max_windows={max_windows})")
    path = resolve(source, root)
    text = "\n\n".join(read_documents(path)) if path.suffix == ".jsonl" else read_documents(path)[0]
    start = _bos_for(tokenizer, bos)
    ids = tokenize(tokenizer, text, add_special_tokens=start is None)
    span = seq_len - (start is not None)
    n = len(ids) // span
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise DataError(f"{str(path)!r} has {len(ids)} tokens: fewer than one window of {seq_len}")
    t = torch.tensor(ids[:n * span], dtype=torch.long).view(n, span)
    if start is not None:
        t = torch.cat([torch.full((n, 1), start, dtype=torch.long), t], 1)
    return Windows(t, str(path), sha256_file(path), len(ids), start)
