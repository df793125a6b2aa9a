"""Models bigger than memory: a checkpoint opened without materialising it, one block in memory at a time.

``open_onloaded(path, dtype=None, out=DIR)`` returns an ``OnloadedModel``: ``.model`` is the stock
model class built on the meta device (every parameter a shape without storage; non-persistent buffers
such as rotary frequencies computed for real, they are tiny), and every weight stays in the
checkpoint's safetensors files (``fxprune.shards.TensorFiles``: one positioned read per tensor, no
mapping). Everything that only needs shapes runs on the skeleton unchanged: capture and dependency
analysis (``torch.export`` traces meta tensors), cost model, allocation, surgery of parameter shapes,
``verify``.

The block-wise runner (``calibration.runner.run_blocks``) finds the ``OnloadedModel`` on the model
(``onloaded_of(model)``) and asks it, through the ``BlockSource`` hooks, for:

* ``prologue()``: before block-0 inputs are captured, every parameter outside the repeated blocks
  except the output head (embeddings; the rotary buffers are already real) is read; ``end_prologue()``
  releases them. The head is never read: no op needs logits block-wise (a criterion that needs
  whole-model gradients is refused with ``RecipeError``).
* ``load(i)``: block ``i``'s parameters read from wherever their newest version lives;
* ``release(i, modified)``: if the block was modified, it is written at once as its own safetensors
  file in the output's temporary directory (and that file supersedes the input for its tensors: a
  later pass or step reads the pruned block from there); then its parameters go back to the meta
  device. At most one block (plus the calibration hidden states) is in memory at any time.

Precision: weights are read in their stored dtype and converted to ``dtype`` (default: the stored
one, e.g. bf16); the runner and ops work in that dtype exactly as in memory. Statistics are
accumulated in fp32/fp64 by the observers (``calibration/observers.py``, ``Accumulation``), and the
solves (GOA refit, LIAR folding, SparseGPT/MRP Cholesky, ``fxprune.linalg``) run in fp32/fp64 on
those statistics, then cast back to the weight's dtype when written into the layer.

``save(out_dir=None, tokenizer=None, extra=None)`` completes the checkpoint: the tensors never
modified (embeddings, final norm, head, untouched blocks) are copied tensor by tensor from the input,
the index and ``config.json`` (with ``fxprune_structure`` when widths vary: the same format as
``checkpoint.save_pruned``, so ``fxprune.load_pruned`` and stock ``from_pretrained`` load it) are
written, and the output writer (``fxprune.output.checkpoint_dir``: its temporary holds the blocks from
the first one written on, its manifest, its atomic swap) publishes the directory. Until then the target
is untouched; ``close()`` (or leaving the ``with`` block) without ``save`` removes the temporary. Under
data parallelism every rank writes its pruned blocks to a private temporary (to read them back in a
later pass) and only rank 0 publishes.

``resident_bytes`` / ``peak_resident_bytes`` count the parameter bytes read into memory (what the
design bounds: one block plus the prologue's embeddings).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, ModelLoadError, RecipeError
from .calibration.runner import SOURCE_ATTR, BlockSource, block_source
from .checkpoint import write_config_files
from .shards import ShardWriter, TensorFiles, TensorSpec, write_index

def onloaded_of(model: nn.Module) -> "OnloadedModel | None":
    """The ``OnloadedModel`` whose skeleton ``model`` is, else None (an ordinary in-memory model)."""
    src = block_source(model)
    return src if isinstance(src, OnloadedModel) else None


def _build_skeleton(config, dtype: torch.dtype) -> nn.Module:
    """The stock model of ``config`` on the meta device, non-persistent buffers computed on the CPU the
    way ``from_pretrained`` computes them (the model's ``_init_weights`` on their owner module)."""
    import transformers
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch or "", None)
    if cls is None:
        raise ModelLoadError(str(arch), "onloading needs a transformers model class named in config.architectures")
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else old)
    try:
        with torch.device("meta"):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    owners = {}
    for mname, mod in model.named_modules():
        for bname in list(mod._non_persistent_buffers_set):
            buf = mod._buffers.get(bname)
            if buf is not None and buf.device.type == "meta":
                mod._buffers[bname] = torch.empty_like(buf, device="cpu")
                owners[mname] = mod
    for mname, mod in owners.items():
        if any(True for _ in mod.parameters(recurse=False)):
            raise ModelLoadError(mname, "a module with both parameters and computed buffers cannot be onloaded")
        model._init_weights(mod)
    return model.eval()


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    path, _, attr = name.rpartition(".")
    mod = root.get_submodule(path) if path else root
    if attr in mod._parameters:
        old = mod._parameters[attr]
        mod._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else False)
    elif attr in mod._buffers:
        mod._buffers[attr] = value
    else:
        raise CheckpointError(f"{name}: not a parameter or buffer of the model")


class OnloadedModel(BlockSource):
    """A checkpoint on disk behind a meta-device model (see the module docstring)."""

    def __init__(self, model: nn.Module, files: TensorFiles, dtype: torch.dtype, source: Path, out: Path | None,
                 rank: int = 0, overwrite: bool = False):
        from .calibration.blocks import find_blocks
        self.model, self.files, self.dtype, self.source = model, files, dtype, Path(source)
        self.blocks = find_blocks(model)
        self.out = Path(out) if out is not None else None
        self.overwrite = overwrite
        self._stack: contextlib.ExitStack | None = None
        self.rank = rank
        self.writes = rank == 0
        self.workdir: Path | None = None
        self._written: dict[int, tuple[Path, list[str]]] = {}  # block -> (file, names)
        self._version = 0
        self.resident_bytes = 0
        self.peak_resident_bytes = 0
        self.blocks_written = 0
        self._prologue_names: list[str] = []
        setattr(model, SOURCE_ATTR, self)

    # ---------------------------------------------------------------- reading and releasing
    def _names_in(self, prefix: str, module: nn.Module) -> list[str]:
        pre = prefix + "." if prefix else ""
        return [pre + n for n in module.state_dict(keep_vars=True)]

    def _materialise(self, names: list[str]) -> None:
        for name in names:
            if name not in self.files:
                continue  # e.g. a head tied to the embeddings
            t = self.files.read(name)
            if t.is_floating_point() and t.dtype != self.dtype:
                t = t.to(self.dtype)
            _set_tensor(self.model, name, t)
        self._measure()

    def _measure(self) -> None:
        """Bytes of the model's tensors now in memory (parameters and persistent buffers not on meta)."""
        seen, total = set(), 0
        for t in self.model.state_dict(keep_vars=True).values():
            if t.device.type != "meta" and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        self.resident_bytes = total
        self.peak_resident_bytes = max(self.peak_resident_bytes, total)

    def _to_meta(self, names: list[str]) -> None:
        for name in names:
            path, _, attr = name.rpartition(".")
            mod = self.model.get_submodule(path) if path else self.model
            t = mod._parameters.get(attr) if attr in mod._parameters else mod._buffers.get(attr)
            if t is None or t.device.type == "meta":
                continue
            _set_tensor(self.model, name, torch.empty_like(t, device="meta"))
        self._measure()

    def _outside_names(self) -> list[str]:
        """Persistent tensors outside the repeated blocks, the output head excluded."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        prefix = self.blocks.name + "."
        out = []
        for name, t in self.model.state_dict(keep_vars=True).items():
            if name.startswith(prefix) or id(t) in head_ids:
                continue
            out.append(name)
        return out

    # ---------------------------------------------------------------- runner hooks (BlockSource)
    def prologue(self) -> None:
        self._prologue_names = self._outside_names()
        self._materialise(self._prologue_names)

    def end_prologue(self) -> None:
        self._to_meta(self._prologue_names)
        self._prologue_names = []

    def load(self, index: int) -> None:
        self._materialise(self._names_in(self.blocks.qualified(index), self.blocks.blocks[index]))

    def release(self, index: int, modified: bool) -> None:
        prefix, block = self.blocks.qualified(index), self.blocks.blocks[index]
        names = self._names_in(prefix, block)
        self._measure()  # the block as the ops left it (it may have grown: an added bias)
        if modified:
            self._write_block(index, names)
        self._to_meta(names)

    def _write_block(self, index: int, names: list[str]) -> None:
        work = self._work()
        self._version += 1
        path = work / f"block-{index:05d}.v{self._version}.safetensors"
        sd = self.model.state_dict(keep_vars=True)
        tensors = [(n, sd[n].detach()) for n in names]
        if any(t.device.type == "meta" for _, t in tensors):
            raise CheckpointError(f"block {index}: some of its tensors were never read before it was modified")
        w = ShardWriter(path, [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors])
        for n, t in tensors:
            w.write(n, t)
        w.close()
        self.files.add_file(path)
        old = self._written.get(index)
        if old is not None and old[0] != path:
            old[0].unlink(missing_ok=True)
        self._written[index] = (path, names)
        self.blocks_written += 1

    def _work(self) -> Path:
        """The directory pruned blocks go to: the output writer's temporary (rank 0 with ``out``), else
        a private temporary directory (other data-parallel ranks keep their own copy to read back)."""
        if self.workdir is None:
            if self.out is not None and self.writes:
                from .checkpoint import run_environment
                from .output import checkpoint_dir
                self._stack = contextlib.ExitStack()
                self.workdir = self._stack.enter_context(checkpoint_dir(
                    self.out, overwrite=self.overwrite, manifest={"environment": run_environment()}))
                self._published = True
            else:
                self.workdir = Path(tempfile.mkdtemp(prefix="fxprune-onload-"))
                self._published = False
        return self.workdir

    # ---------------------------------------------------------------- completion
    def save(self, out_dir=None, tokenizer: Any = None, extra: dict | None = None,
             shard_bytes: int = 2 * 2 ** 30) -> Path:
        """Complete and publish the checkpoint (module docstring); returns its path. ``out_dir`` defaults
        to (and, if given at ``open_onloaded``, must equal) the ``out`` the blocks were streamed to."""
        target = Path(out_dir) if out_dir is not None else self.out
        if target is None:
            raise CheckpointError("onloaded model: no output directory given (open_onloaded(out=...) or save(out_dir))")
        if self.out is not None and Path(os.path.abspath(target)) != Path(os.path.abspath(self.out)):
            raise CheckpointError(f"onloaded model: blocks were streamed to {self.out}; cannot save to {target}")
        if not self.writes:  # other data-parallel ranks hold a private copy; rank 0 publishes
            self.close()
            return target
        if self.out is None:  # nothing streamed yet into an output: open it now, move private blocks in
            private = self.workdir
            self.out, self.workdir = target, None
            work = self._work()
            for index, (path, names) in list(self._written.items()):
                dest = work / path.name
                shutil.move(str(path), dest)
                self._written[index] = (dest, names)
                self.files.add_file(dest)
            if private is not None:
                shutil.rmtree(private, ignore_errors=True)
        work = self._work()
        try:
            weight_map, total = self._complete_weights(work, shard_bytes)
            write_index(work, weight_map, total)
            write_config_files(self.model, work, tokenizer=tokenizer, dtype=self.dtype)
            if extra is not None:
                (work / "fxprune_report.json").write_text(json.dumps(extra, indent=2, default=str))
        except BaseException as e:
            self.close()
            if isinstance(e, CheckpointError) or not isinstance(e, Exception):
                raise
            raise CheckpointError(f"could not save the onloaded model to {target}: {type(e).__name__}: {e}") from e
        stack, self._stack, self.workdir = self._stack, None, None
        stack.close()  # the writer's manifest, fsync and atomic swap
        return target

    def _complete_weights(self, work: Path, shard_bytes: int) -> tuple[dict, int]:
        """Rename the written blocks into final shard names and copy every other tensor from the input."""
        sd = self.model.state_dict(keep_vars=True)
        written = {n for _, names in self._written.values() for n in names}
        seen, rest = set(), []
        for name, t in sd.items():
            if name in written:
                continue
            if name not in self.files:
                if id(t) in seen or name.endswith("lm_head.weight") and getattr(self.model.config, "tie_word_embeddings", False):
                    continue  # tied to a tensor that is saved
                raise CheckpointError(f"{self.source}: tensor {name} is neither in the checkpoint nor written")
            seen.add(id(t))
            rest.append((name, t))
        groups, cur, size = [], [], 0
        for name, t in rest:
            nb = t.numel() * t.element_size()
            if cur and size + nb > shard_bytes:
                groups.append(cur)
                cur, size = [], 0
            cur.append((name, t))
            size += nb
        if cur:
            groups.append(cur)
        n_files = len(groups) + len(self._written)
        weight_map, total, k = {}, 0, 0
        for index in sorted(self._written):
            path, names = self._written[index]
            k += 1
            final = work / f"model-{k:05d}-of-{n_files:05d}.safetensors"
            os.replace(path, final)
            for n in names:
                weight_map[n] = final.name
                total += self.files.tensors[n].nbytes
        for group in groups:
            k += 1
            final = work / f"model-{k:05d}-of-{n_files:05d}.safetensors"
            w = ShardWriter(final, [TensorSpec(n, self.dtype if t.is_floating_point() else t.dtype, tuple(t.shape))
                                    for n, t in group])
            for n, t in group:
                v = self.files.read(n)
                w.write(n, v.to(self.dtype) if v.is_floating_point() else v)
                weight_map[n] = final.name
                total += v.numel() * (torch.empty((), dtype=self.dtype).element_size() if v.is_floating_point()
                                      else v.element_size())
                del v
            w.close()
        self._written = {}
        return weight_map, total

    def close(self) -> None:
        """Discard the temporary output (nothing is published; the target stays as it was)."""
        stack, self._stack = getattr(self, "_stack", None), None
        if stack is not None:
            err = CheckpointError("onloaded run closed without save")
            stack.__exit__(type(err), err, None)  # the writer removes its temporary
        elif self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def __deepcopy__(self, memo):
        """A copy of the model (e.g. the analysis' meta-device dry runs) shares the checkpoint on disk."""
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_onloaded(path, dtype: torch.dtype | None = None, out=None, *, rank: int = 0,
                  overwrite: bool = False) -> OnloadedModel:
    """Open the safetensors checkpoint directory ``path`` without reading its weights (module docstring).

    ``dtype``: the weights' working dtype (default: the dtype most of the stored floating tensors have).
    ``out``: the checkpoint directory pruned blocks are streamed into (published by ``save``)."""
    import transformers
    path = Path(path)
    if out is not None and rank == 0:
        from .output import check_output
        check_output(out, overwrite=overwrite)  # a bad --out fails before any work
    if not (path / "config.json").is_file():
        raise ModelLoadError(str(path), "onloading needs a model directory with config.json and safetensors weights")
    files = TensorFiles.open(path)
    if dtype is None:
        counts: dict = {}
        for st in files.tensors.values():
            if st.dtype.is_floating_point:
                counts[st.dtype] = counts.get(st.dtype, 0) + st.nbytes
        dtype = max(counts, key=counts.get) if counts else torch.float32
    try:
        config = transformers.AutoConfig.from_pretrained(str(path))
    except Exception as e:
        raise ModelLoadError(str(path), f"{type(e).__name__}: {e}") from e
    raw = json.loads((path / "config.json").read_text())
    if raw.get("fxprune_structure"):
        raise ModelLoadError(str(path), "onloading an already pruned fxprune checkpoint (per-layer widths) is not "
                             "supported; load it in memory with fxprune.load_pruned")
    model = _build_skeleton(config, dtype)
    fix_heap_threshold()
    return OnloadedModel(model, files, dtype, path, out, rank, overwrite)


def fix_heap_threshold(threshold: int = 1 << 20) -> bool:
    """Serve every allocation of ``threshold`` bytes or more by its own mmap, returned to the OS on free
    (glibc ``mallopt(M_MMAP_THRESHOLD)``; True when applied). glibc otherwise raises that threshold to
    the largest block it has freed (up to 32 MB), after which a block-wise run's activations (8 x 128
    tokens x 4096 fp32 = 16.8 MB for a 7B shape) come from the heap, whose fragments are never returned:
    the onloaded README recipe's peak RSS crept up 23 MB per layer (7B shape, c4 8 x 128: 3.11 GB at 2
    layers, 3.35 at 8, 3.83 at 32; 3.00 at 8 layers with the threshold fixed). Left alone when the user
    set ``MALLOC_MMAP_THRESHOLD_`` or the C library is not glibc."""
    import ctypes
    import ctypes.util
    import os
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def check_onloadable(step) -> None:
    """Refuse, before any work, what cannot run one block at a time (``RecipeError`` naming the field)."""
    kind = getattr(step, "kind", "")
    if getattr(step, "lincal_layers", 0):
        raise RecipeError(f"{kind}: lincal_layers > 0 inserts modules after every block is done; not supported "
                          "onloaded (load the model in memory)")
    if getattr(step, "attention", None) == "olica":
        raise RecipeError(f"{kind}: attention 'olica' plans from whole-model weights; not supported onloaded")
