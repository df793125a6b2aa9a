"""What fxprune trusts in a checkpoint it did not write (every loader follows this).

* Code: never executed from a checkpoint. A checkpoint's ``modeling_fxprune.py`` (or any
  ``auto_map``) is ignored: fxprune rebuilds recorded per-layer structure with its own installed
  ``fxprune.structure``; model classes are looked up by name among the installed transformers'
  ``PreTrainedModel`` subclasses; every transformers call gets ``trust_remote_code=False``.
* Weights: safetensors only. Pickle files (``.bin``, ``.pt``...) can run code when unpickled: they
  are refused unless the user opts in (``fxprune --allow-pickle`` sets ``ALLOW_PICKLE``), and even
  then transformers reads them with ``torch.load(weights_only=True)``.
* Shapes: a checkpoint's recorded structure is checked against its safetensors headers on the meta
  device before any memory is allocated (a tampered shape cannot allocate terabytes).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelLoadError

#: Set by ``fxprune --allow-pickle`` for one command.
ALLOW_PICKLE = False
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def weight_files(path: Path) -> tuple[list[Path], list[Path]]:
    """``(safetensors files, pickle files)`` directly inside directory ``path``."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file())
    return ([p for p in files if p.suffix == ".safetensors"],
            [p for p in files if p.suffix in PICKLE_SUFFIXES])


def check_weights(path: Path, allow_pickle: bool | None = None) -> bool:
    """True if ``path`` holds safetensors weights; False if only pickle weights and the user opted in;
    else ``ModelLoadError`` naming the pickle file."""
    allow = ALLOW_PICKLE if allow_pickle is None else allow_pickle
    safe, pickles = weight_files(path)
    if safe:
        return True
    if not pickles:
        raise ModelLoadError(str(path), "no weights (no *.safetensors file)")
    if not allow:
        raise ModelLoadError(str(pickles[0]), "pickle weights can run code when loaded; fxprune reads "
                                              "safetensors only (convert the checkpoint, or pass "
                                              "`fxprune --allow-pickle ...` if you trust its author)")
    return False


def model_class(name, path) -> type:
    """The installed transformers ``PreTrainedModel`` subclass called ``name`` (never checkpoint code)."""
    import transformers
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelLoadError(str(path), f"unknown model class {name!r} (not a transformers model class)")
    return cls


def read_config(path: Path) -> dict:
    """``config.json`` of directory ``path`` as a dict (``ModelLoadError`` naming the file otherwise)."""
    f = Path(path) / "config.json"
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise ModelLoadError(str(f), f"unreadable config ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise ModelLoadError(str(f), "config.json must hold a JSON object")
    return raw


def safetensors_header(path: Path) -> dict:
    """``{tensor name: shape}`` from a safetensors header (reads only the header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a header")
            n = int.from_bytes(head, "little")
            size = Path(path).stat().st_size
            if n > min(size - 8, 100 << 20):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        out = {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            shape, (a, b) = v["shape"], v["data_offsets"]
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ValueError(f"tensor {k!r}: bad shape {shape!r}")
            if not (0 <= a <= b <= size - 8 - n):
                raise ValueError(f"tensor {k!r}: data offsets outside the file")
            out[k] = tuple(shape)
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(str(path), f"not a readable safetensors file ({type(e).__name__}: {e})") from e
