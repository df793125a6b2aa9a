"""Every CLI error is one typed line with exit code 2 (issue 14, item 7): hypothesis drives
``fxprune.cli.main`` with random recipes (field values and types, malformed YAML/JSON, random
bytes), random and corrupted model files (GGUF headers, safetensors, config.json), random
calibration files and random argument values. Zero tracebacks, zero files touched outside --out.

Example counts are bounded for the default suite (``FXPRUNE_FUZZ_EXAMPLES``, default 12 per test,
derandomized); bench/reliability.py runs thousands with fresh randomness and reports the counts.
"""
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness_fuzz import (apply_edits, fresh_model_dir, gguf_variant, make_sandbox, model_dirs, recipe_files,
                          run_case)

N = int(os.environ.get("FXPRUNE_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=N, deadline=None, database=None,
                derandomize=not os.environ.get("FXPRUNE_FUZZ_RANDOM"),
                suppress_health_check=list(HealthCheck))

SMALL = ("method: structured\ncriterion: magnitude\nreconstruction: none\ntarget: 0.3\n"
         "calib_source: {calib}\ncalib_samples: 2\ncalib_seq_len: 16\nbatch_size: 2\n")


@pytest.fixture(scope="module")
def box(tmp_path_factory, root):
    sb = tmp_path_factory.mktemp("sandbox")
    info = make_sandbox(sb)
    calib = info["data"] / "c4" / "c4-train.00000-of-01024.first1000.jsonl"
    (sb / "small.yaml").write_text(SMALL.format(calib=calib))
    info.update(sb=sb, calib=calib)
    return Box(info)


class Box(dict):
    def __repr__(self):  # hypothesis prints the fixture: keep it short
        return f"Box({self['sb']})"


def check(o):
    assert not o.problems, f"{o.argv}: {o.problems}\n{o.stderr[-3000:]}"


def case(box, argv, out=None):
    out = out or box["sb"] / "out"
    try:
        o = run_case(argv, box["sb"], out)
    finally:
        if out.exists() and out.name == "out":
            shutil.rmtree(out)
    check(o)
    return o


@FUZZ
@given(data=st.data())
def test_random_recipes(box, data):
    suffix, body = data.draw(recipe_files(str(box["calib"])))
    recipe = box["sb"] / f"recipe{suffix}"
    recipe.write_bytes(body)
    extra = data.draw(st.sampled_from([[], ["--dry-run"]]))
    case(box, ["--memory-limit", "4GiB", "prune", "tiny:llama", "--recipe", str(recipe), "--out",
               str(box["sb"] / "out"), "--data-root", str(box["data"])] + extra)
    recipe.unlink()


@FUZZ
@given(data=st.data())
def test_random_and_corrupted_model_files(box, data):
    sb = box["sb"]
    if data.draw(st.booleans()):
        model = sb / "m.gguf"
        model.write_bytes(gguf_variant(data.draw, box["gguf_head"]))
    else:
        model = fresh_model_dir(sb, box["clean"], "model")
        apply_edits(model, data.draw(model_dirs()))
    cmd = data.draw(st.sampled_from([
        ["inspect", str(model)],
        ["eval", str(model), "--ppl", "wikitext2", "--seq-len", "16", "--windows", "2"],
        ["prune", str(model), "--recipe", str(sb / "small.yaml"), "--out", str(sb / "out")],
        ["sparsify", str(model), "--recipe", "magnitude-50", "--out", str(sb / "out")],
        ["report", str(model)],
    ]))
    if cmd[0] == "report":  # its output is the checkpoint directory itself
        case(box, cmd, out=model)
    else:
        case(box, ["--memory-limit", "4GiB"] + cmd + ["--data-root", str(box["data"])])
    if model.is_dir():
        shutil.rmtree(model)
    else:
        model.unlink()


@st.composite
def calib_files(draw):
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return ".txt", draw(st.binary(max_size=400))
    if kind == 1:
        return ".txt", draw(st.text(max_size=400)).encode("utf-8")
    if kind == 2:
        lines = draw(st.lists(st.one_of(st.text(max_size=30), st.just('{"text": 5}'), st.just('{"txt": "a"}'),
                                        st.just('[1, 2]'), st.just('{"text": "' + "word " * 40 + '"}')), max_size=6))
        return ".jsonl", "\n".join(lines).encode("utf-8")
    if kind == 3:
        return ".jsonl", draw(st.binary(max_size=200))
    if kind == 4:
        return ".raw", ("a long document " * draw(st.integers(0, 200))).encode("utf-16")
    return draw(st.sampled_from([".txt", ".jsonl", ".gguf", ""])), b""


@FUZZ
@given(data=st.data())
def test_random_calibration_files(box, data):
    sb = box["sb"]
    suffix, body = data.draw(calib_files())
    calib = sb / f"calib{suffix}"
    calib.write_bytes(body)
    cmd = data.draw(st.sampled_from([
        ["prune", "tiny:llama", "--recipe", str(sb / "small.yaml"), "--calib", str(calib), "--out", str(sb / "out")],
        ["sparsify", "tiny:llama", "--recipe", "wanda-50", "--calib", str(calib), "--samples", "2", "--seqlen", "16",
         "--out", str(sb / "out")],
        ["eval", "tiny:llama", "--ppl", str(calib), "--seq-len", "16", "--windows", "2"],
    ]))
    case(box, cmd + ["--data-root", str(box["data"])])
    calib.unlink()


arg_values = st.one_of(st.integers(-5, 5).map(str), st.integers(-10 ** 12, 10 ** 12).map(str),
                       st.sampled_from(["", "x", "1.5", "nan", "-0", "1e9", "auto", "cpu", "gpu", "0"]),
                       st.text(max_size=8))


@FUZZ
@given(data=st.data())
def test_random_argument_values(box, data):
    sb = box["sb"]
    cmd = data.draw(st.sampled_from([
        ["eval", "tiny:llama", "--ppl", "wikitext2"],
        ["eval", "tiny:llama", "--tasks"],
        ["prune", "tiny:llama", "--recipe", str(sb / "small.yaml"), "--out", str(sb / "out"), "--eval-ppl", "wikitext2"],
        ["sparsify", "tiny:llama", "--recipe", "magnitude-50", "--out", str(sb / "out")],
        ["inspect"],
    ]))
    options = {"eval": ["--seq-len", "--windows", "--batch-size", "--limit", "--accelerator",
                        "--precision", "--ppl", "--tasks", "--data-root"],
               "prune": ["--seq-len", "--windows", "--calib", "--recipe", "--out", "--eval-ppl"],
               "sparsify": ["--samples", "--seqlen", "--seed", "--recipe", "--calib"],
               "inspect": []}[cmd[0]]
    argv = list(cmd)
    if cmd[-1] in ("--tasks", "inspect") or data.draw(st.booleans()):
        argv.append(data.draw(arg_values))
    for _ in range(data.draw(st.integers(0, 3))):
        if options:
            argv += [data.draw(st.sampled_from(options)), data.draw(arg_values)]
    if cmd[0] == "eval" and data.draw(st.booleans()):  # more than one device is DDP: it relaunches the process
        argv += ["--devices", data.draw(st.sampled_from(["1", "0", "-1", "auto", "x", "1.5", ""]))]
    if "--data-root" not in argv and cmd[0] != "inspect":
        argv += ["--data-root", str(box["data"])]
    if "--seq-len" not in argv and cmd[0] == "eval":
        argv += ["--seq-len", "16", "--windows", "2"]
    case(box, ["--memory-limit", "4GiB"] + argv)
