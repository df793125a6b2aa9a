"""Checks before the expensive work: the job fits in memory, the output can be written and has room,
and the result will be savable. ``prune`` and ``sparsify`` call ``check_job`` before loading the
model and ``Job.check_model`` once it is loaded, before calibrating.

Memory: ``estimate_peak`` predicts the peak resident memory of a job from facts read *without
loading the model* (``model_facts``: the GGUF header, the safetensors headers and ``config.json``, or
a tiny config) and the job's sizes (calibration windows, their length, evaluation windows). It is an
upper-bound model of the dominant terms, itemised, checked against measured peaks in
``bench/results/preflight_memory.md``:

* weights in float32 (``4 * params``), plus the load transient (GGUF: the file is mapped and each
  tensor dequantized: ``+ file bytes + 2 x largest tensor``);
* the calibration stream of a layer-wise run: ``copies x n x L x hidden x 4`` (inputs, outputs,
  and for structured reconstruction the dense stream and targets: 4 copies; sparsity: 2);
* statistics: structured scoring keeps per-layer Gram matrices of the block inputs
  (``layers x (3 h^2 + I^2) x 8``); sparsity keeps one block's Hessians (``sum in^2 x 4``) plus the
  solver's copies;
* forward transients: attention scores ``b x heads x L^2 x 4``, MLP activations ``3 x b x L x I x 4``,
  and logits ``3 x b x L x vocab x 4`` wherever full-model forwards run (perplexity, generated
  calibration);
* the interpreter, torch and transformers (``BASE_BYTES``).

Available memory: ``MemAvailable`` and the cgroup limit minus usage (the smaller), or the limit set by
``fxprune --memory-limit SIZE`` / ``$FXPRUNE_MEMORY_LIMIT`` (``0``: do not check). When the estimate
exceeds it, ``ResourceError`` names the largest terms and the number of calibration windows that
would fit.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelLoadError, ResourceError

GiB = 1 << 30
MiB = 1 << 20
BASE_BYTES = 700 * MiB        # python + torch + transformers + lightning, measured ~0.5-0.6 GiB
TOKENIZER_BYTES = 32 * MiB    # tokenizer files written beside the weights (upper bound)
#: Set by ``fxprune --memory-limit``; None: ask the OS. 0: do not check.
MEMORY_LIMIT: int | None = None


# ----------------------------------------------------------------------------- model facts
@dataclass(frozen=True)
class ModelFacts:
    """What is known about a model before loading it."""

    source: str
    params: int
    largest: int          # elements of the largest tensor
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    file_bytes: int = 0   # bytes of the file read at load (GGUF) or of the weight files
    fmt: str = "config"   # gguf | safetensors | config


def _cfg_get(cfg: dict, *names, default=0):
    for n in names:
        v = cfg.get(n)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return default


def _facts_from_config(source: str, cfg: dict, params: int, largest: int, file_bytes: int, fmt: str) -> ModelFacts:
    hidden = _cfg_get(cfg, "hidden_size", "n_embd", "d_model", default=0)
    inter = _cfg_get(cfg, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
    heads = _cfg_get(cfg, "num_attention_heads", "n_head", "num_heads", default=1)
    return ModelFacts(source, params, largest, hidden, _cfg_get(cfg, "num_hidden_layers", "n_layer", default=1),
                      inter, _cfg_get(cfg, "vocab_size", default=0), heads,
                      _cfg_get(cfg, "num_key_value_heads", default=heads), file_bytes, fmt)


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_header(path: Path) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
    """``(metadata, [(tensor name, shape)])`` of a GGUF file, reading only its header (arrays of
    strings are skipped, their length recorded). ``ModelLoadError`` naming the file if malformed."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _parse_gguf(m, len(m))
    except ModelLoadError:
        raise
    except (OSError, ValueError, struct.error, UnicodeDecodeError, OverflowError) as e:
        raise ModelLoadError(str(path), f"not a readable GGUF file ({type(e).__name__}: {e})") from e


def _parse_gguf(m, size: int):
    pos = 0

    def take(fmt):
        nonlocal pos
        n = struct.calcsize("<" + fmt)
        if pos + n > size:
            raise ValueError("truncated header")
        v = struct.unpack_from("<" + fmt, m, pos)
        pos += n
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("Q")
        if n > size - pos or n > 1 << 20:
            raise ValueError(f"string length {n} at byte {pos} exceeds the file")
        s = bytes(m[pos:pos + n]).decode("utf-8")
        pos += n
        return s

    def value(t):
        nonlocal pos
        if t in _GGUF_SCALARS:
            return take(_GGUF_SCALARS[t])
        if t == 8:
            return string()
        if t == 9:
            et, count = take("I"), take("Q")
            if count > size:
                raise ValueError(f"array of {count} elements exceeds the file")
            if et in _GGUF_SCALARS:
                width = struct.calcsize("<" + _GGUF_SCALARS[et])
                if pos + width * count > size:
                    raise ValueError("truncated array")
                vals = list(struct.unpack_from(f"<{count}{_GGUF_SCALARS[et]}", m, pos)) if count <= 64 else count
                pos += width * count
                return vals
            if et == 8:
                for _ in range(count):
                    n = take("Q")
                    if n > size - pos:
                        raise ValueError("truncated string array")
                    pos += n
                return count
            raise ValueError(f"unsupported array element type {et}")
        raise ValueError(f"unknown metadata value type {t}")

    if bytes(m[0:4]) != b"GGUF":
        raise ValueError("no GGUF magic number")
    pos = 4
    version = take("I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = take("Q"), take("Q")
    if n_tensors > size or n_kv > size:
        raise ValueError("tensor or metadata count exceeds the file")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("I"))
    tensors = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        if nd > 8:
            raise ValueError(f"tensor {name!r} has {nd} dimensions")
        dims = tuple(take("Q") for _ in range(nd))
        take("I")
        take("Q")
        tensors.append((name, dims))
    return meta, tensors


def _gguf_facts(spec: str, path: Path) -> ModelFacts:
    meta, tensors = read_gguf_header(path)
    arch = meta.get("general.architecture", "")

    def g(key, default=0):
        v = meta.get(f"{arch}.{key}", default)
        return v if isinstance(v, int) and not isinstance(v, bool) else default

    numels = [_prod(d) for _, d in tensors]
    vocab = g("vocab_size") or (meta.get("tokenizer.ggml.tokens") if isinstance(meta.get("tokenizer.ggml.tokens"), int) else 0)
    hidden = g("embedding_length")
    params = sum(numels)  # a tied output head shares the embedding: not counted twice
    heads = g("attention.head_count", 1)
    return ModelFacts(spec, params, max(numels, default=0), hidden, g("block_count", 1),
                      g("feed_forward_length", 4 * hidden), vocab, heads, g("attention.head_count_kv", heads),
                      path.stat().st_size, "gguf")


def _prod(dims) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _dir_facts(spec: str, path: Path) -> ModelFacts:
    from .trust import read_config, safetensors_header
    cfg = read_config(path)
    safe = sorted(path.glob("*.safetensors"))
    shapes = {}
    for f in safe:
        shapes.update(safetensors_header(f))
    numels = [_prod(s) for s in shapes.values()]
    file_bytes = sum(f.stat().st_size for f in safe)
    params = sum(numels)
    if not safe:  # pickle weights (opt-in): their size in float32
        from .trust import PICKLE_SUFFIXES
        file_bytes = sum(f.stat().st_size for f in path.iterdir() if f.suffix in PICKLE_SUFFIXES)
        params = file_bytes // 2
    return _facts_from_config(spec, cfg, params, max(numels, default=params), file_bytes, "safetensors")


def _tiny_facts(spec: str) -> ModelFacts | None:
    from .models.tiny import TINY_FAMILIES
    fam = spec.split(":", 1)[1]
    if fam not in TINY_FAMILIES:
        return None
    cfg = TINY_FAMILIES[fam]()
    d = cfg.to_dict()
    hidden = _cfg_get(d, "hidden_size", "n_embd", "d_model")
    return _facts_from_config(spec, d, 200_000, 64 * hidden, 0, "config")  # tiny: ~0.1M parameters


def model_facts(spec: str) -> ModelFacts | None:
    """Facts about model ``spec`` read without loading it; None where fxprune cannot tell (the loader
    then reports the problem). Malformed GGUF / safetensors / config files raise ``ModelLoadError``."""
    from .loading import DEFAULT_MODEL, minilm_path, smollm2_path
    if spec == DEFAULT_MODEL:
        return _gguf_facts(spec, smollm2_path())
    if spec == "minilm":
        p = minilm_path()
        return _dir_facts(spec, p) if p.is_dir() else None
    if spec.startswith("tiny:"):
        return _tiny_facts(spec)
    path = Path(os.path.expanduser(spec))
    if spec.endswith(".gguf") and path.is_file():
        return _gguf_facts(spec, path)
    if path.is_dir() and (path / "config.json").is_file():
        return _dir_facts(spec, path)
    return None


# ----------------------------------------------------------------------------- estimate
@dataclass(frozen=True)
class JobSizes:
    """The sizes of a job that drive memory. ``method``: ``structured`` | ``sparsity`` | ``eval``."""

    method: str = "structured"
    samples: int = 0          # calibration windows (0: no calibration)
    seq_len: int = 0
    batch: int = 1
    generated: bool = False   # calibration text sampled from the model (full forwards with a cache)
    eval_seq_len: int = 0     # perplexity windows (0: none)
    eval_batch: int = 1


@dataclass(frozen=True)
class Estimate:
    """Peak resident bytes and its terms (``terms``: name -> bytes)."""

    peak: int
    terms: dict = field(default_factory=dict)
    per_sample: int = 0       # bytes added by one more calibration window
    fixed: int = 0            # peak minus the calibration terms that scale with samples

    def describe(self, limit: int = 4) -> str:
        top = sorted(self.terms.items(), key=lambda kv: -kv[1])[:limit]
        return ", ".join(f"{k} {fmt_bytes(v)}" for k, v in top)


def fmt_bytes(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= 256 * MiB else f"{n / MiB:.0f} MiB"


def estimate_peak(f: ModelFacts, job: JobSizes) -> Estimate:
    """Peak resident memory of ``job`` on model ``f`` (float32 on CPU): see the module docstring."""
    B = 4
    W = f.params * B
    h, I, L, V = max(f.hidden, 1), max(f.intermediate, 1), max(job.seq_len, 1), max(f.vocab, 1)
    load = W + (f.file_bytes + 2 * f.largest * B if f.fmt == "gguf" else f.largest * B)
    terms = {"weights": W}
    per_sample = 0
    if job.samples:
        copies = 4 if job.method == "structured" else 2
        per_sample = copies * L * h * B
        terms["calibration stream"] = per_sample * job.samples
        b = max(1, min(job.batch, job.samples))
        terms["forward transients"] = b * (f.heads * L * L + 3 * L * I) * B
        if job.method == "structured":
            terms["statistics"] = f.layers * (3 * h * h + I * I) * 8
        else:
            widest = max(h, I)
            terms["statistics"] = (3 * h * h + I * I) * B + 3 * widest * widest * B + 3 * h * I * B
        if job.generated:
            kv = f.layers * 2 * f.kv_heads * (h // max(f.heads, 1)) * L * B
            terms["generation (cache, logits)"] = job.samples * (kv + 3 * V * B)
    if job.eval_seq_len:
        E = job.eval_seq_len
        terms["perplexity forward"] = job.eval_batch * (3 * E * V + f.heads * E * E + 3 * E * I) * B
    run = sum(terms.values())
    peak = BASE_BYTES + max(load, run)
    scaling = terms.get("calibration stream", 0) + terms.get("generation (cache, logits)", 0)
    if job.samples and job.generated:
        per_sample += terms["generation (cache, logits)"] // job.samples
    return Estimate(int(peak), terms, int(per_sample), int(peak - (scaling if run >= load else 0)))


# ----------------------------------------------------------------------------- available memory
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``'8GiB'``, ``'512M'``, ``'0'`` -> bytes (``ValueError`` otherwise)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 8GiB, 512MiB, 0)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _read_int(path: str) -> int | None:
    try:
        v = Path(path).read_text().strip()
    except OSError:
        return None
    return None if v in ("", "max") else int(v) if v.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process may still use: ``MemAvailable`` and the cgroup's limit minus its usage (the
    smaller); None where neither is known."""
    cands = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                cands.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for lim, use in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                     ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(lim), _read_int(use)
        if limit is not None and usage is not None and limit < 1 << 60:
            cands.append(max(0, limit - usage))
    return min(cands) if cands else None


def memory_budget() -> int | None:
    """The limit to check against: ``--memory-limit`` / ``$FXPRUNE_MEMORY_LIMIT`` or the OS figure;
    0 / None: do not check."""
    if MEMORY_LIMIT is not None:
        return MEMORY_LIMIT
    env = os.environ.get("FXPRUNE_MEMORY_LIMIT")
    if env:
        try:
            return parse_size(env)
        except ValueError as e:
            raise ResourceError(f"$FXPRUNE_MEMORY_LIMIT: {e}") from None
    return available_memory()


def check_memory(f: ModelFacts, job: JobSizes, budget: int | None = None, *, samples_field: str = "calib_samples") -> Estimate:
    """``ResourceError`` if the estimated peak of ``job`` exceeds ``budget`` (default ``memory_budget()``),
    naming the largest terms and the number of calibration windows that would fit."""
    est = estimate_peak(f, job)
    budget = memory_budget() if budget is None else budget
    if not budget or est.peak <= budget:
        return est
    hint = ""
    if est.fixed > budget:
        hint = (f"; the model and its fixed costs alone need about {fmt_bytes(est.fixed)}: use a machine "
                "with more memory")
    elif job.samples and est.per_sample:
        fit = int((budget - est.fixed) // est.per_sample)
        if 1 <= fit < job.samples:
            hint = f"; {samples_field}: {fit} would fit (now {job.samples})"
    elif job.eval_seq_len:
        hint = "; a shorter --seq-len or --batch-size 1 for perplexity needs less"
    raise ResourceError(f"{f.source}: this job needs about {fmt_bytes(est.peak)} of memory ({est.describe()}) "
                        f"and {fmt_bytes(budget)} is available{hint}. Set `fxprune --memory-limit 0` to run anyway")


# ----------------------------------------------------------------------------- jobs
@dataclass
class Job:
    """A checked job: ``check_model`` finishes the checks once the model is loaded."""

    out: str | None
    overwrite: bool
    facts: ModelFacts | None
    estimate: Estimate | None

    def check_model(self, model) -> None:
        """Before calibrating: the result will be savable, and ``--out`` has room for it."""
        check_savable(model)
        if self.out:
            from .output import check_output
            need = sum(p.numel() * p.element_size() for p in model.parameters()) + TOKENIZER_BYTES
            check_output(self.out, overwrite=self.overwrite, need_bytes=need)


def check_job(model: str, *, out: str | None, overwrite: bool = False, sizes: JobSizes | None = None,
              samples_field: str = "calib_samples") -> Job:
    """Before loading ``model``: ``out`` may be written (``fxprune.output.check_output``), the model
    files are readable, and the job fits in memory. Returns the ``Job`` to finish with ``check_model``."""
    if out:
        from .output import check_output
        check_output(out, overwrite=overwrite)
    facts = model_facts(model)
    est = None
    if facts is not None and sizes is not None:
        est = check_memory(facts, sizes, samples_field=samples_field)
    return Job(out, overwrite, facts, est)


def check_savable(model) -> None:
    """What ``save_pretrained`` will validate, checked on the dense model before any work: the
    config (and generation config) serialise and validate. Widths after pruning never block saving
    (``FamilyAdapter.patch_config_checked`` keeps the stock config valid, per-layer structure records
    the rest)."""
    import copy

    from .errors import CheckpointError
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise CheckpointError(f"{type(model).__name__} has no config: it cannot be saved as a checkpoint")
    try:
        c = copy.deepcopy(cfg)
        c.__dict__.pop("quantization_config", None)
        if callable(getattr(c, "validate", None)):
            c.validate()
        json.loads(c.to_json_string())
        gen = getattr(model, "generation_config", None)
        if gen is not None and callable(getattr(gen, "validate", None)):
            gen.validate(strict=True) if "strict" in gen.validate.__code__.co_varnames else gen.validate()
    except Exception as e:
        raise CheckpointError(f"{type(model).__name__}: its config would not save ({type(e).__name__}: {e}); "
                              "nothing was computed") from e
