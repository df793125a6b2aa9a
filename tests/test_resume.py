"""Resume (fxprune/progress.py, issue 14 item 3): a prune interrupted after any block and resumed gives
the checkpoint an uninterrupted run gives, bit for bit; another job's record is refused."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.errors import CheckpointError
from fxprune.models.synthetic import write_synthetic
from fxprune.output import tensor_digests
from fxprune.progress import Progress, RunProgress, job_key, progress_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(d, "tiny", seed=7, dtype=torch.float32)  # 4 layers
    return d


def _model(ckpt):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()


def _windows():
    return torch.randint(3, 512, (8, 24), generator=torch.Generator().manual_seed(4))


def _recipe(name):
    return fxprune.load_recipe(name).with_calibration(batch_size=4)


def _run(ckpt, recipe, out, progress_at=None, stop_after=None, monkeypatch=None):
    """Prune and save; with ``progress_at`` record progress there; with ``stop_after`` = n, interrupt
    the job right after its n-th block commit (as a kill at that moment would)."""
    model = _model(ckpt)
    prog = None
    if progress_at is not None:
        prog = Progress.open(progress_at, job_key(recipe, model, _windows())).attach(model)
    if stop_after is not None:
        real, count = RunProgress.commit, [0]

        def commit(self, *a, **k):
            real(self, *a, **k)
            count[0] += 1
            if count[0] == stop_after:
                raise KeyboardInterrupt

        monkeypatch.setattr(RunProgress, "commit", commit)
        with pytest.raises(KeyboardInterrupt):
            fxprune.prune(model, recipe, _windows())
        monkeypatch.setattr(RunProgress, "commit", real)
        return None, prog
    res = fxprune.prune(model, recipe, _windows())
    fxprune.save(model, out)
    if prog is not None:
        prog.finish()
    return res, prog


@pytest.mark.parametrize("name,stops", [("goa-liar-ffn-global-20", (1, 3)), ("sparsegpt-2of4", (2,)),
                                        ("magnitude-2of4", (1,))])
def test_interrupted_and_resumed_equals_uninterrupted(ckpt, tmp_path, monkeypatch, name, stops):
    recipe = _recipe(name)
    ref, _ = _run(ckpt, recipe, tmp_path / "ref")
    want = tensor_digests(tmp_path / "ref")
    for stop in stops:
        out, pdir = tmp_path / f"out{stop}", tmp_path / f"out{stop}.progress"
        _run(ckpt, recipe, out, pdir, stop_after=stop, monkeypatch=monkeypatch)
        idx = json.loads((pdir / "progress.json").read_text())
        assert sum(r["blocks_done"] for r in idx["runs"].values()) == stop
        got, prog = _run(ckpt, recipe, out, pdir)
        assert prog.resumed_blocks == stop
        d = tensor_digests(out)
        assert d.keys() == want.keys() and [k for k in d if d[k] != want[k]] == []
        assert got.plan == ref.plan and got.report["params_after"] == ref.report["params_after"]
        layers = lambda r: [p.get("layers") for s in r.report["steps"] for p in s["passes"]]
        assert layers(got) == layers(ref)  # per-layer reports replayed
        assert not pdir.exists()  # finished: the record is gone


def test_progress_of_another_job_is_refused(ckpt, tmp_path, monkeypatch):
    pdir = tmp_path / "p"
    _run(ckpt, _recipe("sparsegpt-2of4"), tmp_path / "o", pdir, stop_after=1, monkeypatch=monkeypatch)
    model = _model(ckpt)
    with pytest.raises(CheckpointError, match="recipe"):
        Progress.open(pdir, job_key(_recipe("wanda-2of4"), model, _windows()))
    with pytest.raises(CheckpointError, match="calibration"):
        Progress.open(pdir, job_key(_recipe("sparsegpt-2of4"), model, _windows()[:4]))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not an fxprune progress"):
        Progress.open(mine, job_key(_recipe("sparsegpt-2of4"), model, _windows()))
    Progress(mine, {}, {}).finish()  # never removes what fxprune did not write
    assert (mine / "notes.txt").read_text() == "x"


def test_progress_dir_is_a_visible_sibling(tmp_path):
    assert progress_dir(tmp_path / "out") == tmp_path / "out.fxprune-progress"


_CALIB = "\n\n".join(f"document {k}: " + "words to calibrate a tiny model on, " * 10 for k in range(20))


def _cli(ckpt, out, calib, extra=()):
    return [sys.executable, "-m", "fxprune", "prune", str(ckpt), "--recipe", "goa-liar-ffn-global-20", "--calib",
            str(calib), "--calib-samples", "8", "--calib-seq-len", "24", "--out", str(out), "--resume", *extra]


@pytest.mark.slow
def test_cli_killed_at_random_blocks_resumes_bit_identical(ckpt, tmp_path):
    """The kill harness: SIGKILL a ``prune --resume`` once k blocks are recorded (k random), rerun the
    same command, compare every tensor with an uninterrupted run."""
    import random
    calib = tmp_path / "calib.txt"
    calib.write_text(_CALIB)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run(_cli(ckpt, tmp_path / "ref", calib), env=env, check=True, capture_output=True)
    want = tensor_digests(tmp_path / "ref")
    rng = random.Random(int(os.environ.get("FXPRUNE_KILL_SEED", "14")))
    for trial in range(int(os.environ.get("FXPRUNE_RESUME_KILLS", "2"))):
        out = tmp_path / f"o{trial}"
        pdir = progress_dir(out)
        k = rng.randint(1, 3)
        p = subprocess.Popen(_cli(ckpt, out, calib), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        done = 0
        while p.poll() is None:
            try:
                done = sum(r["blocks_done"] for r in json.loads((pdir / "progress.json").read_text())["runs"].values())
            except (OSError, ValueError, KeyError):
                done = 0
            if done >= k:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        p.wait()
        assert done >= 1, "the run finished before any block was recorded"
        r = subprocess.run(_cli(ckpt, out, calib, ["--json"]), env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout[r.stdout.index("{"):])["resumed_blocks"] >= done
        assert tensor_digests(out) == want
        assert not pdir.exists()
