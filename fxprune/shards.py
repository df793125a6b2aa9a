"""Safetensors files on disk, one tensor at a time: write without holding a shard in memory, read
without loading (or mapping) a whole file.

``ShardWriter(path, specs)`` writes the header first (every tensor's name, dtype and shape are known up
front), then each tensor's bytes as it is handed over, in the declared order; nothing but the tensor
being written is ever held. The file is the stock format (``safetensors.safe_open`` and
``transformers.from_pretrained`` read it; the header carries ``{"format": "pt"}``).

``TensorFiles.open(dir_or_file)`` lists the tensors of a checkpoint (``model.safetensors``, or the
shards named by ``model.safetensors.index.json``) from the headers alone, and ``read(name)`` reads
one tensor with a positioned read into a fresh tensor of its stored dtype. Why not a memory map
(``safe_open``): pages of a mapped file that were read stay resident and count in the process's RSS
until the mapping closes, so streaming a 13 GB checkpoint through one open mapping would show a 13 GB
peak RSS although no more than one block is ever in use; a positioned read holds exactly the tensor.
The operating system's page cache still serves repeated reads.

``write_index(dir, weight_map, total_size)`` writes the stock ``model.safetensors.index.json``.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_BY_NAME = {v: k for k, v in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise CheckpointError(f"safetensors cannot store dtype {dtype}") from None


def nbytes(dtype: torch.dtype, shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * dtype.itemsize


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: name, dtype, shape."""

    name: str
    dtype: torch.dtype
    shape: tuple

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


class ShardWriter:
    """One safetensors file written tensor by tensor (see the module docstring).

    ``write(name, tensor)`` must follow the order of ``specs`` with the declared dtype and shape;
    ``close()`` checks that every declared tensor was written (else ``CheckpointError`` naming the file)."""

    def __init__(self, path, specs: Iterable[TensorSpec], metadata: dict | None = None):
        self.path = Path(path)
        self.specs = list(specs)
        header, off = {"__metadata__": {"format": "pt", **(metadata or {})}}, 0
        for s in self.specs:
            header[s.name] = {"dtype": dtype_name(s.dtype), "shape": [int(x) for x in s.shape],
                              "data_offsets": [off, off + s.nbytes]}
            off += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.total = off
        self._next = 0
        self._file = open(self.path, "wb")
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self.specs):
            raise CheckpointError(f"{self.path}: tensor {name!r} was not declared")
        s = self.specs[self._next]
        if name != s.name or tensor.dtype != s.dtype or tuple(tensor.shape) != tuple(s.shape):
            raise CheckpointError(f"{self.path}: expected {s.name} {s.dtype} {list(s.shape)}, got {name} "
                                  f"{tensor.dtype} {list(tensor.shape)}")
        self.write_bytes(tensor)
        self._next += 1

    def write_bytes(self, tensor: torch.Tensor) -> None:
        """Append the raw bytes of ``tensor`` (a piece of the current tensor, in row-major order)."""
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        if t.numel():
            self._file.write(t.view(torch.uint8).numpy().data)

    def skip_to_next(self) -> None:
        """Mark the current tensor written after its bytes were appended piecewise with ``write_bytes``."""
        self._next += 1

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self._next != len(self.specs):
            raise CheckpointError(f"{self.path}: {len(self.specs) - self._next} declared tensors were not written")


def write_index(directory, weight_map: dict, total_size: int) -> Path:
    path = Path(directory) / INDEX_NAME
    path.write_text(json.dumps({"metadata": {"total_size": int(total_size)},
                                "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return path


def read_header(path) -> tuple[dict, int]:
    """``(header, data_start)`` of a safetensors file (``CheckpointError`` naming it if malformed)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return header, 8 + n


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives: file, absolute byte offset, dtype, shape."""

    file: Path
    offset: int
    dtype: torch.dtype
    shape: tuple

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)


class TensorFiles:
    """The tensors of a safetensors checkpoint, by name, read one at a time (module docstring)."""

    def __init__(self, tensors: dict[str, StoredTensor], root: Path):
        self.tensors, self.root = tensors, root

    @classmethod
    def open(cls, path) -> "TensorFiles":
        path = Path(path)
        if path.is_file():
            files = [path]
        elif (path / INDEX_NAME).is_file():
            try:
                wmap = json.loads((path / INDEX_NAME).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{path / INDEX_NAME}: unreadable index ({e})") from e
            files = [path / f for f in dict.fromkeys(wmap.values())]
        elif (path / SINGLE_NAME).is_file():
            files = [path / SINGLE_NAME]
        else:
            raise CheckpointError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME}")
        out = cls({}, path)
        for f in files:
            out.add_file(f)
        return out

    def add_file(self, file) -> None:
        """Register (or, for names already known, supersede with) every tensor of ``file``."""
        file = Path(file)
        header, start = read_header(file)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _BY_NAME:
                raise CheckpointError(f"{file}: tensor {name} has unsupported dtype {info['dtype']}")
            b, _ = info["data_offsets"]
            self.tensors[name] = StoredTensor(file, start + int(b), _BY_NAME[info["dtype"]], tuple(info["shape"]))

    def __contains__(self, name) -> bool:
        return name in self.tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> torch.Tensor:
        """A fresh tensor holding ``name`` in its stored dtype (one positioned read)."""
        try:
            st = self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.root}: no tensor {name!r} in the checkpoint") from None
        out = torch.empty(st.shape, dtype=st.dtype)
        if out.numel() == 0:
            return out
        buf = out.reshape(-1).view(torch.uint8).numpy()
        view, got = memoryview(buf), 0
        with open(st.file, "rb", buffering=0) as f:
            f.seek(st.offset)
            while got < st.nbytes:  # one read returns at most ~2 GB on Linux
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != st.nbytes:
            raise CheckpointError(f"{st.file}: tensor {name} truncated ({got} of {st.nbytes} bytes)")
        return out
