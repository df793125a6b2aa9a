"""Writing the sparse model: stock ``save_pretrained`` into a temporary sibling directory, then an atomic
rename over the target, so a crash never leaves a half-written directory over a good one.
Also the optional 2:4 semi-structured conversion on CUDA (``torch.sparse.to_sparse_semi_structured``)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


@contextlib.contextmanager
def _as_plain_float(model):
    """A model loaded from GGUF keeps a GGUF ``hf_quantizer`` marker although its tensors were dequantized
    to float at load; ``save_pretrained`` then refuses to write it. Hide the marker while saving (the
    float tensors are what we computed on), restore it afterwards. Other quantizers are left alone."""
    q = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(q, "quantization_config", None), "quant_method", None)
    if q is None or str(getattr(method, "value", method)).lower() != "gguf":
        yield
        return
    cfg_q = getattr(model.config, "quantization_config", None)
    model.hf_quantizer = None
    if cfg_q is not None:
        del model.config.quantization_config
    try:
        yield
    finally:
        model.hf_quantizer = q
        if cfg_q is not None:
            model.config.quantization_config = cfg_q


def save_sparse_model(model, out_dir: str | Path, tokenizer=None, result=None) -> Path:
    """Save ``model`` (dense tensors with zeros) + tokenizer + ``sparsity_report.{json,md}`` to ``out_dir``.

    The files are written to ``<parent>/.<name>.tmp-XXXX`` and renamed into place. If ``out_dir``
    already exists it is first renamed aside and removed only after the new one is in place.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with _as_plain_float(model):
            model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if result is not None:  # a run report (``fxprune.report``)
            import json

            from ..report import markdown
            (tmp / "sparsity_report.json").write_text(json.dumps(result, indent=1, default=str))
            (tmp / "sparsity_report.md").write_text(markdown(result) + "\n")
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot save sparse model to {str(out)!r}: {type(e).__name__}: {e}") from e
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{int(time.time())}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def semi_structured_available() -> bool:
    """2:4 kernels need CUDA with compute capability ≥ 8.0."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@torch.no_grad()
def convert_2to4_and_time(model: nn.Module, example_ids: torch.Tensor, repeats: int = 20) -> dict:
    """Convert every 2:4-sparse linear to ``to_sparse_semi_structured`` (fp16, CUDA) and time a forward
    pass before and after. Returns ``{"skipped": reason}`` where no suitable device is present."""
    if not semi_structured_available():
        return {"skipped": "no CUDA device with compute capability >= 8.0"}
    from torch.sparse import to_sparse_semi_structured

    model = model.half().cuda().eval()
    ids = example_ids.cuda()

    def bench():
        for _ in range(3):
            model(input_ids=ids)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=ids)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / repeats

    dense_s = bench()
    converted = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            W = mod.weight
            if W.shape[1] % 4 == 0 and bool((W.reshape(W.shape[0], -1, 4) == 0).sum(-1).ge(2).all()):
                try:
                    mod.weight = nn.Parameter(to_sparse_semi_structured(W), requires_grad=False)
                    converted.append(name)
                except Exception as e:  # shape constraints of the kernels
                    print(f"2:4 conversion skipped for {name}: {e}")
    sparse_s = bench()
    return {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s, "converted": converted}
