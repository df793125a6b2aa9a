"""Calibration/evaluation disjointness checked on *content*, not only on the path.

``data.check_disjoint`` refuses the evaluation file itself (same path or same bytes). This module
catches what that misses: a copy under another name that was re-encoded (UTF-16, a BOM, CRLF line
ends, NFKC/case changes), wrapped (a jsonl ``"text"`` field, extra text around it) or cut (a part of
the test set).

Fingerprint: the text is NFKC-normalised and case-folded, split into words (``\\w+``: punctuation,
whitespace and line ends do not matter), and every run of ``NGRAM`` = 13 consecutive words (the
contamination unit GPT-3 used) is hashed to 64 bits. The calibration documents actually sampled are
compared with each evaluation file: they share ``shared`` 13-grams. Refused when ``shared >=
MIN_SHARED`` and the shared grams are at least ``EVAL_FRACTION`` of the evaluation text's or
``CALIB_FRACTION`` of the calibration text's. Measured on the shared data: the C4 train head and the
WikiText-2 test split share 0 of 206,133 13-grams, WikiText-2 validation and test share 0; the
tokenised WikiText-2 test (``<unk>`` replaced words) shares 44% with the raw one.
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DataError

NGRAM = 13
MIN_SHARED = 20          # fewer shared 13-grams than this is chance (quotes, boilerplate)
EVAL_FRACTION = 0.001    # 0.1% of the evaluation text's 13-grams (~200 for WikiText-2 test)
CALIB_FRACTION = 0.01    # 1% of the calibration text's 13-grams
_WORD = re.compile(r"\w+")
_P = np.uint64(1099511628211)


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def fingerprint(text: str) -> np.ndarray:
    """Sorted unique 64-bit hashes of the text's word 13-grams (empty if it has fewer words)."""
    ws = words(text)
    if len(ws) < NGRAM:
        return np.zeros(0, dtype=np.uint64)
    vocab: dict[str, int] = {}

    def wid(w: str) -> int:
        v = vocab.get(w)
        if v is None:
            b = w.encode("utf-8")
            v = vocab[w] = zlib.crc32(b) | (zlib.adler32(b) << 32)
        return v

    ids = np.fromiter((wid(w) for w in ws), dtype=np.uint64, count=len(ws))
    n = len(ids) - NGRAM + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(NGRAM):
            h = h * _P + ids[j:j + n]
    return np.unique(h)


def read_text(path: Path) -> str:
    """A text file in UTF-8 (with or without BOM) or BOM-marked UTF-16/32; ``DataError`` otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {str(path)!r}: {e}") from e
    for bom, enc in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                     (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if raw.startswith(bom):
            break
    else:
        enc = "utf-8"
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(path)!r} is not {enc} text ({e.reason} at byte {e.start})") from e


@functools.lru_cache(maxsize=8)
def _file_fingerprint(path: str, size: int, mtime_ns: int) -> np.ndarray:
    try:
        text = read_text(Path(path))
    except DataError:
        text = Path(path).read_bytes().decode("utf-8", errors="replace")
    return fingerprint(text)


def file_fingerprint(path: Path) -> np.ndarray:
    st = os.stat(path)
    return _file_fingerprint(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Overlap:
    """13-grams shared by the calibration text and one evaluation file."""

    evaluation: str
    shared: int
    eval_grams: int
    calib_grams: int

    @property
    def contaminated(self) -> bool:
        return self.shared >= MIN_SHARED and (self.shared >= EVAL_FRACTION * self.eval_grams
                                              or self.shared >= CALIB_FRACTION * self.calib_grams)


def overlaps(calibration_texts: Iterable[str], evaluation_files: Sequence[Path]) -> list[Overlap]:
    cal = np.unique(np.concatenate([fingerprint(t) for t in calibration_texts] or [np.zeros(0, np.uint64)]))
    out = []
    for ev in evaluation_files:
        e = file_fingerprint(Path(ev))
        shared = int(np.intersect1d(cal, e, assume_unique=True).size)
        out.append(Overlap(str(ev), shared, int(e.size), int(cal.size)))
    return out


def check_content_disjoint(calibration_texts: Iterable[str], name: str, evaluation_files: Sequence[Path]) -> list[Overlap]:
    """``DataError`` if the calibration texts (from ``name``) contain a meaningful part of an
    evaluation file (see the module docstring); returns the overlaps otherwise."""
    found = overlaps(calibration_texts, [Path(f) for f in evaluation_files if Path(f).is_file()])
    for o in found:
        if o.contaminated:
            raise DataError(
                f"calibration data {name!r} contains evaluation text of {o.evaluation!r}: {o.shared} of its "
                f"{o.eval_grams} word 13-grams ({100 * o.shared / max(o.eval_grams, 1):.1f}%; "
                f"{100 * o.shared / max(o.calib_grams, 1):.1f}% of the calibration text). Calibrate on a "
                "training split (e.g. the C4 train head), never on the test data")
    return found
