"""Fuzz harness for the CLI (issue 14, item 7): hypothesis strategies for recipes, files and arguments,
and ``run_case``, which drives ``fxprune.cli.main`` (the public entry point: whatever recipe loader
the CLI uses is what gets fuzzed) and checks the contract:

* exit code 0, or 2 with exactly ONE line ``fxprune CMD: error: TypeName: ...`` on stderr;
* no traceback, no ``internal error`` (exit code 1);
* no file created, changed or removed in the sandbox outside ``--out``.

Used by tests/test_fuzz_cli.py (bounded example counts) and bench/reliability.py (many examples).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent

STRUCTURED_FIELDS = {
    "criterion": ["magnitude", "wanda_sp", "flap", "random"],
    "reconstruction": ["none", "flap_bias", "liar"],
    "allocation": ["uniform", "global"],
    "target": [0.0, 0.2, 0.5],
    "scope": ["decoder_linear", "all"],
    "kinds": [["ffn"], ["attention", "ffn"]],
    "attention_unit": ["q_per_kv", "kv_groups"],
    "channel_multiple": [1, 8],
    "protect_first": [0, 1],
    "protect_last": [0, 1],
    "damping": [0.01],
    "attention": ["heads"],
    "lincal_layers": [0],
    "calib_samples": [2, 3],
    "calib_seq_len": [16, 24],
    "batch_size": [1, 2],
    "seed": [0, 1],
}
SPARSITY_FIELDS = {
    "method": ["magnitude", "wanda", "sparsegpt", "mrp"],
    "sparsity": ["2:4", 0.5, "50%", {"ratio": 0.5}],
    "options": [{}, {"blocksize": 16}, {"percdamp": 0.01}],
    "layers": [{"include": ["*"]}, {"exclude": ["*.lm_head"]}],
    "calibration": [{"samples": 2, "seqlen": 16}],
    "name": ["x"],
}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12), st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.one_of(st.integers(-2, 5), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.one_of(st.integers(-2, 5), st.text(max_size=4)), max_size=2),
)


@st.composite
def recipe_dicts(draw, calib: str):
    """A small valid recipe (structured or sparsity) with 0-3 fields replaced by random values or
    random keys added."""
    if draw(st.booleans()):
        d = {"method": "structured", "criterion": "magnitude", "reconstruction": "none", "target": 0.3,
             "calib_source": calib, "calib_samples": 2, "calib_seq_len": 16, "batch_size": 2}
        fields = STRUCTURED_FIELDS
    else:
        d = {"method": draw(st.sampled_from(SPARSITY_FIELDS["method"])), "sparsity": 0.5,
             "calibration": {"samples": 2, "seqlen": 16}}
        fields = SPARSITY_FIELDS
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(fields) + ["method", "calib_source"]), st.text(max_size=8)))
        valid = fields.get(key)
        d[key] = draw(st.sampled_from(valid)) if valid and draw(st.booleans()) else draw(junk)
    if draw(st.integers(0, 9)) == 0:
        d = draw(st.one_of(junk, st.lists(junk, max_size=3)))  # not a mapping at all
    return d


def dump_recipe(d, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(d, allow_nan=True, default=str)
    import yaml
    return yaml.safe_dump(d, allow_unicode=True)


@st.composite
def recipe_files(draw, calib: str):
    """``(suffix, bytes)`` of a recipe file: a dumped random recipe, or malformed YAML/JSON/bytes."""
    kind = draw(st.integers(0, 9))
    if kind <= 6:
        fmt = draw(st.sampled_from(["yaml", "json"]))
        return (f".{fmt}", dump_recipe(draw(recipe_dicts(calib)), fmt).encode("utf-8"))
    if kind == 7:
        return (".yaml", draw(st.sampled_from([b"method: [unclosed\n", b"a: b: c\n", b"\t- x\n  y: {\n",
                                                b"!!python/object:os.system {}\n", b"method: &a [*a]\n",
                                                b"\xff\xfe\x00bad", b""])))
    if kind == 8:
        return (".json", draw(st.sampled_from([b"{", b"[1,2", b'{"method": }', b"NaN", b"\x00\x01"])))
    return (draw(st.sampled_from([".yaml", ".json", ".txt", ""])), draw(st.binary(max_size=200)))


def gguf_variant(draw, real: bytes | None):
    """Bytes of a broken GGUF file: random bytes, a corrupted magic/version/count, or a truncated header."""
    import struct
    head = real or (b"GGUF" + struct.pack("<IQQ", 3, 1, 1))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=300))
    if kind == 1:
        return b"GGUF" + struct.pack("<I", draw(st.integers(0, 10))) + draw(st.binary(max_size=64))
    if kind == 2:
        return b"GGUF" + struct.pack("<IQQ", 3, draw(st.integers(0, 2 ** 64 - 1)), draw(st.integers(0, 2 ** 64 - 1)))
    if kind == 3:
        return head[:draw(st.integers(0, len(head)))]
    data = bytearray(head)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def model_dirs(draw):
    """Edits of a saved tiny:llama checkpoint: ``[(file, new bytes or None to delete)]``."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["config.json", "model.safetensors", "generation_config.json"]))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            edits.append((target, None))
        elif kind == 1:
            edits.append((target, draw(st.binary(max_size=64))))
        elif kind == 2:
            edits.append((target, ("truncate", draw(st.floats(0, 1)))))
        elif kind == 3:
            edits.append((target, ("flip", draw(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)),
                                                         min_size=1, max_size=6)))))
        else:
            edits.append(("config.json", ("field", draw(st.sampled_from(
                ["hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size",
                 "architectures", "model_type", "head_dim", "num_key_value_heads", "torch_dtype",
                 "fxprune_structure", "rope_theta", "tie_word_embeddings"])), draw(junk))))
    return edits


def apply_edits(d: Path, edits) -> None:
    for name, e in edits:
        f = d / name
        if e is None:
            f.unlink(missing_ok=True)
        elif isinstance(e, bytes):
            f.write_bytes(e)
        elif not f.exists():
            continue
        elif e[0] == "truncate":
            data = f.read_bytes()
            f.write_bytes(data[:int(len(data) * e[1])])
        elif e[0] == "flip":
            data = bytearray(f.read_bytes())
            for pos, val in e[1]:
                if data:
                    data[min(int(pos * len(data)), len(data) - 1)] = val
            f.write_bytes(bytes(data))
        elif e[0] == "field":
            try:
                cfg = json.loads(f.read_text())
                cfg[e[1]] = e[2]
                f.write_text(json.dumps(cfg, default=str))
            except (ValueError, TypeError, UnicodeDecodeError):
                pass


# ------------------------------------------------------------------------------- the contract
def snapshot(root: Path, skip: Path | None = None) -> dict:
    """``{relative path: (size, mtime_ns, sha256 of small files)}`` of every entry under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if skip is not None and (d == skip or skip in d.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if skip is not None and p == skip:
                continue
            try:
                st_ = p.lstat()
            except FileNotFoundError:
                continue
            digest = None
            if p.is_file() and not p.is_symlink() and st_.st_size < (1 << 20):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[p.relative_to(root).as_posix()] = (st_.st_size, st_.st_mtime_ns, digest)
    return out


@dataclass
class Outcome:
    argv: list
    rc: int
    stderr: str
    touched: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def run_case(argv: list[str], sandbox: Path, out: Path | None) -> Outcome:
    """Run ``fxprune argv`` in-process inside ``sandbox``; report contract violations."""
    from fxprune.cli import main
    before = snapshot(sandbox, skip=out)
    err, std = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(sandbox)
    try:
        with redirect_stderr(err), redirect_stdout(std):
            try:
                rc = main(argv)
            except SystemExit as e:  # never expected: main returns codes
                rc = f"SystemExit({e.code})"
            except BaseException as e:  # noqa: BLE001 - a traceback escaping main is what we look for
                import traceback
                rc = f"raised {type(e).__name__}"
                err.write(traceback.format_exc())
    finally:
        os.chdir(cwd)
    after = snapshot(sandbox, skip=out)
    touched = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    text = err.getvalue()
    o = Outcome(argv, rc, text, touched)
    if "Traceback (most recent call last)" in text:
        o.problems.append("traceback")
    if rc not in (0, 2):
        o.problems.append(f"exit code {rc}")
    if rc == 2:
        lines = [l for l in text.splitlines() if l.startswith("fxprune") and ": error: " in l]
        if len(lines) != 1 or not lines[0].split(": error: ", 1)[1].split(":", 1)[0].endswith("Error"):
            o.problems.append(f"not one typed error line: {lines[:3]}")
    if touched:
        o.problems.append(f"touched outside --out: {touched[:5]}")
    return o


def make_sandbox(root: Path) -> dict:
    """A sandbox with a small data root (WikiText-2 test head, C4 head), a clean tiny:llama checkpoint
    and the head of the SmolLM2 GGUF (its header, for truncation/corruption)."""
    from fxprune.data import data_root
    real = data_root()
    data = root / "data"
    (data / "wikitext-2-raw").mkdir(parents=True)
    (data / "c4").mkdir(parents=True)
    wt = (real / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    (data / "wikitext-2-raw" / "wiki.test.raw").write_text(wt[:30000], encoding="utf-8")
    c4 = (real / "c4" / "c4-train.00000-of-01024.first1000.jsonl").read_text(encoding="utf-8").splitlines()
    (data / "c4" / "c4-train.00000-of-01024.first1000.jsonl").write_text("\n".join(c4[:40]) + "\n", encoding="utf-8")
    import torch

    from fxprune.checkpoint import save_pruned
    from fxprune.models.tiny import tiny_model
    torch.manual_seed(0)
    clean = root / "_clean_model"
    save_pruned(tiny_model("llama"), clean)
    head = None
    try:
        from fxprune.loading import smollm2_path
        with open(smollm2_path(), "rb") as f:
            head = f.read(1 << 16)
    except Exception:
        pass
    return {"data": data, "clean": clean, "gguf_head": head}


def fresh_model_dir(sandbox: Path, clean: Path, name: str) -> Path:
    d = sandbox / name
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(clean, d)
    return d
