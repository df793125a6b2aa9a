"""Resume of an interrupted prune: the block-wise runner records its progress after every block, and a
killed job restarts after the last finished block with a bit-identical result (issue 14 item 3).

``Progress.open(directory, key)`` opens (or creates) a progress directory, by default the visible
sibling ``<out>.fxprune-progress/`` of the output (``progress_dir(out)``); ``attach(model)`` makes the
runner (``calibration.runner.run_blocks``) find it. ``key`` says what the result depends on (recipe,
input weights, calibration ids, environment: ``job_key``); a directory recorded under another key is
refused with ``CheckpointError`` naming the part that differs, never mixed. ``finish()`` removes the
directory once the checkpoint is published (only a directory whose ``progress.json`` says it is ours).

What is recorded. Every call of ``run_blocks`` on the model gets the next ordinal (runs happen in the
same order in every run of the same job). A run is *recorded* when one of its ops modifies blocks and
every op is ``resumable`` (``BlockOp.record``/``replay`` carry what an op keeps across blocks, e.g. its
per-layer reports or the plan it chose); other runs (read-only planning, non-resumable ops) simply run
again on resume: they are deterministic and see the same model. After block ``i`` of a recorded run:

1. ``run-RR-block-IIII.safetensors``: the block's tensors after its ops (names relative to the block),
   and ``run-RR-block-IIII.json``: its structure (parameter shapes, fxprune module specs, module
   attributes), the ops' records, the integer config fields, the torch RNG state;
2. ``run-RR-stream-IIII.safetensors``: the hidden states entering block ``i + 1`` (and the dense
   stream when an op needs it), unless ``i`` is the run's last block;
3. ``progress.json`` rewritten atomically with ``blocks_done = i + 1`` (the commit point), then the
   previous stream file removed. Every file goes through ``output.atomic_file`` (temporary + rename).

A kill between these steps leaves the previous commit valid. On resume the runner restores blocks
``0 .. blocks_done - 1`` (structure, then tensors, then the ops' records), captures block-0 inputs
again (the embedding only) and replaces their hidden states by the saved stream, and continues.

Bit-identity holds because safetensors round-trips are exact and every later computation sees the
same tensors; what the key records (versions, thread count) must match. Not supported together with
onloading (``fxprune.onload``; the pruned blocks are already on disk there).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import CheckpointError

FORMAT = "fxprune-progress"
VERSION = 1
INDEX = "progress.json"
ATTR = "_fxprune_progress"


def progress_dir(out) -> Path:
    """``<out>.fxprune-progress`` beside the output directory ``out``."""
    out = Path(os.path.abspath(out))
    return out.parent / (out.name + ".fxprune-progress")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


def job_key(recipe: Any, model: torch.nn.Module, ids: torch.Tensor | None) -> dict:
    """What a resumed job must share with the recorded one: the recipe (canonical JSON), the input
    weights, the calibration ids and the environment (``checkpoint.run_environment``)."""
    from .checkpoint import run_environment
    rec = recipe.to_dict() if hasattr(recipe, "to_dict") else recipe
    env = run_environment()
    return {"recipe": _sha(json.dumps(rec, sort_keys=True, default=str).encode()),
            "model": tensors_digest(model.state_dict()),
            "calibration": None if ids is None else tensors_digest({"ids": torch.as_tensor(ids)}),
            "environment": {k: env[k] for k in ("fxprune", "torch", "transformers", "torch_threads", "blas")}}


def _simple(v) -> bool:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return True
    return isinstance(v, (tuple, list)) and all(isinstance(x, (bool, int, float, str)) for x in v)


def block_structure(block: torch.nn.Module) -> dict:
    """Shapes, fxprune module specs and plain attributes of ``block`` (names relative to it)."""
    from .structure import module_specs
    attrs = {}
    for name, mod in block.named_modules():
        a = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(mod).items()
             if not k.startswith("_") and _simple(v)}
        if a:
            attrs[name] = a
    saved = block.state_dict()
    return {"modules": module_specs(block), "params": {n: list(p.shape) for n, p in block.named_parameters()},
            "buffers": {n: list(b.shape) for n, b in block.named_buffers() if n in saved},  # persistent ones
            "attrs": attrs}


def restore_block(block: torch.nn.Module, structure: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Give ``block`` the recorded structure, then the recorded tensors (``strict``: same names)."""
    from .structure import apply_structure
    apply_structure(block, structure)
    for mod_name, attrs in structure.get("attrs", {}).items():
        mod = block.get_submodule(mod_name) if mod_name else block
        for k, v in attrs.items():
            if isinstance(getattr(mod, k, None), tuple) and isinstance(v, list):
                v = tuple(v)
            setattr(mod, k, v)
    ref = next(block.parameters(), None)
    device = ref.device if ref is not None else "cpu"
    block.load_state_dict({k: v.to(device) for k, v in tensors.items()}, strict=True)


def _int_config(model) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_") and (
        (isinstance(v, int) and not isinstance(v, bool)) or
        (isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v)))}


class RunProgress:
    """The record of one recorded ``run_blocks`` call (see the module docstring)."""

    def __init__(self, progress: "Progress", ordinal: int, entry: dict):
        self.progress, self.ordinal, self.entry = progress, ordinal, entry

    @property
    def blocks_done(self) -> int:
        return int(self.entry["blocks_done"])

    def _name(self, what: str, index: int, ext: str) -> str:
        return f"run-{self.ordinal:02d}-{what}-{index:04d}.{ext}"

    # ---- writing
    def commit(self, index: int, block: torch.nn.Module, ops: Sequence, model: torch.nn.Module,
               stream: list[torch.Tensor] | None, dense: list[torch.Tensor] | None) -> None:
        """Record block ``index`` as done (module docstring, steps 1-3)."""
        from safetensors.torch import save_file
        p = self.progress
        tensors = {k: v.detach().cpu().contiguous() for k, v in block.state_dict().items()}
        bfile = self._name("block", index, "safetensors")
        p._write(bfile, lambda f: save_file(tensors, str(f)))
        meta = {"structure": block_structure(block), "tensors_sha256": tensors_digest(tensors),
                "records": [op.record(index) for op in ops], "config": _int_config(model),
                "rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        mfile = self._name("block", index, "json")
        p._write(mfile, lambda f: f.write_text(json.dumps(meta, default=str)))
        old_stream = self.entry.get("stream")
        if stream is not None:
            st = {f"s{k}": t.detach().cpu().contiguous() for k, t in enumerate(stream)}
            if dense is not None:
                st.update({f"d{k}": t.detach().cpu().contiguous() for k, t in enumerate(dense)})
            sfile = self._name("stream", index + 1, "safetensors")
            p._write(sfile, lambda f: save_file(st, str(f)))
            self.entry["stream"] = {"file": sfile, "sha256": tensors_digest(st), "enters_block": index + 1}
        else:
            self.entry["stream"] = None
        self.entry["blocks"][str(index)] = {"tensors": bfile, "meta": mfile}
        self.entry["blocks_done"] = index + 1
        p._save_index()
        if old_stream and (self.entry["stream"] is None or old_stream["file"] != self.entry["stream"]["file"]):
            (p.directory / old_stream["file"]).unlink(missing_ok=True)

    # ---- reading
    def restore(self, blocks, ops: Sequence, model: torch.nn.Module) -> None:
        """Restore blocks ``0 .. blocks_done - 1`` of a recorded run onto ``model`` and replay the ops'
        records; the torch RNG state is the one after the last restored block."""
        from safetensors.torch import load_file
        meta = None
        for i in range(self.blocks_done):
            files = self.entry["blocks"][str(i)]
            tensors = load_file(str(self.progress.directory / files["tensors"]))
            meta = json.loads((self.progress.directory / files["meta"]).read_text())
            if tensors_digest(tensors) != meta["tensors_sha256"]:
                raise CheckpointError(f"{self.progress.directory / files['tensors']}: damaged (sha256 differs)")
            restore_block(blocks.blocks[i], meta["structure"], tensors)
            for op, rec in zip(ops, meta["records"]):
                op.replay(i, rec)
        if meta is not None:
            cfg = getattr(model, "config", None)
            for k, v in meta["config"].items():
                if cfg is not None and getattr(cfg, k, None) != v:
                    setattr(cfg, k, v)
            torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(meta["rng"])), dtype=torch.uint8))

    def stream(self) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The saved hidden states entering block ``blocks_done`` (and the dense stream, or None)."""
        from safetensors.torch import load_file
        st = self.entry.get("stream")
        if not st or st["enters_block"] != self.blocks_done:
            raise CheckpointError(f"{self.progress.directory}: no saved stream for block {self.blocks_done}")
        t = load_file(str(self.progress.directory / st["file"]))
        if tensors_digest(t) != st["sha256"]:
            raise CheckpointError(f"{self.progress.directory / st['file']}: damaged (sha256 differs)")
        n = sum(1 for k in t if k.startswith("s"))
        dense = [t[f"d{k}"] for k in range(n)] if f"d0" in t else None
        return [t[f"s{k}"] for k in range(n)], dense


class Progress:
    """A progress directory (module docstring)."""

    def __init__(self, directory: Path, key: dict, index: dict):
        self.directory, self.key, self.index = directory, key, index
        self._next = 0
        self.resumed_blocks = 0  # blocks restored instead of computed, over all runs

    @classmethod
    def open(cls, directory, key: dict) -> "Progress":
        """Open ``directory`` (created if missing) for a job with ``key``; refuse another job's record
        (``CheckpointError`` naming the differing part) or a directory fxprune did not write."""
        d = Path(os.path.abspath(directory))
        idx_file = d / INDEX
        if d.exists() and not idx_file.is_file():
            if not d.is_dir() or any(d.iterdir()):
                raise CheckpointError(f"{d}: exists and is not an fxprune progress directory; move it away")
        if idx_file.is_file():
            try:
                index = json.loads(idx_file.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{idx_file}: unreadable ({e})") from e
            if index.get("format") != FORMAT or index.get("version") != VERSION:
                raise CheckpointError(f"{idx_file}: not a version {VERSION} {FORMAT} record")
            old = index.get("key", {})
            differ = [k for k in ("recipe", "model", "calibration", "environment") if old.get(k) != key.get(k)]
            if differ:
                raise CheckpointError(f"{d}: recorded for another job (different {', '.join(differ)}); resume "
                                      "with the same recipe, model, data and environment, or remove it")
            return cls(d, key, index)
        d.mkdir(parents=True, exist_ok=True)
        p = cls(d, key, {"format": FORMAT, "version": VERSION, "key": key, "runs": {}})
        p._save_index()
        return p

    def __deepcopy__(self, memo):
        """A copy of the model (e.g. the analysis' meta-device dry runs) shares the record."""
        return self

    def attach(self, model: torch.nn.Module) -> "Progress":
        setattr(model, ATTR, self)
        return self

    def detach(self, model: torch.nn.Module) -> None:
        if getattr(model, ATTR, None) is self:
            delattr(model, ATTR)

    def run(self, desc: str, n_blocks: int, ops: Sequence) -> RunProgress | None:
        """The record of the next ``run_blocks`` call (None: this run is not recorded)."""
        ordinal = self._next
        self._next += 1
        if not any(op.modifies for op in ops) or not all(getattr(op, "resumable", False) for op in ops):
            return None
        sig = {"desc": desc, "n_blocks": n_blocks, "ops": [op.name for op in ops]}
        entry = self.index["runs"].get(str(ordinal))
        if entry is None or {k: entry.get(k) for k in sig} != sig:
            if entry is not None:
                raise CheckpointError(f"{self.directory}: run {ordinal} was recorded as {entry.get('desc')!r} "
                                      f"with ops {entry.get('ops')}; this job runs {desc!r} with {sig['ops']}")
            entry = {**sig, "blocks_done": 0, "blocks": {}, "stream": None}
            self.index["runs"][str(ordinal)] = entry
        return RunProgress(self, ordinal, entry)

    def finish(self) -> None:
        """The job is published: remove the progress directory (only ours: ``progress.json`` checked)."""
        idx = self.directory / INDEX
        try:
            ours = json.loads(idx.read_text()).get("format") == FORMAT
        except (OSError, ValueError):
            ours = False
        if ours:
            shutil.rmtree(self.directory, ignore_errors=True)

    # ---- files
    def _write(self, name: str, write) -> None:
        from .output import atomic_file
        with atomic_file(self.directory / name, overwrite=True) as f:
            write(f)

    def _save_index(self) -> None:
        self._write(INDEX, lambda f: f.write_text(json.dumps(self.index, indent=1)))


def progress_of(model: torch.nn.Module) -> Progress | None:
    """The ``Progress`` attached to ``model`` (None: the run records nothing)."""
    return getattr(model, ATTR, None)
