"""Interrupts never leave partial output (issue 14, item 2).

* Ctrl-C and SIGTERM at random moments of a save loop (in this process, a timer thread sends the
  signal): the checkpoint is always one complete version and no temporary sibling is left.
* SIGKILL of a child process at random moments (tests/harness_kill.py): the checkpoint is one
  complete version, the user's file inside it is kept, and the next writer cleans the temporaries.
* The real CLI interrupted by SIGTERM: exit code 143 and one line.
Bounded here (20 + 20 in-process interrupts, 2 kills, 1 CLI run); bench/reliability.py runs many.
"""
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from fxprune.checkpoint import save_pruned
from fxprune.cli import _on_sigterm
from fxprune.models.tiny import tiny_model

from harness_kill import REPO, kill_once, tree


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    ref = tmp_path_factory.mktemp("ref")
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(tiny_model("llama"))
    trees = []
    for name, m in zip("AB", models):
        save_pruned(m, ref / name)
        trees.append(tree(ref / name))
    return models, trees


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_at_random_moments_leaves_complete_output_and_no_temporaries(tmp_path, versions, sig):
    models, trees = versions
    out = tmp_path / "ckpt"
    save_pruned(models[0], out)
    (out / "notes.txt").write_text("mine")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    rng = random.Random(sig)
    t0 = time.perf_counter()
    save_pruned(models[1], out, overwrite=True)
    one_save = time.perf_counter() - t0
    interrupted = resent = 0
    try:
        for trial in range(20):
            timer = threading.Timer(rng.uniform(0, 2 * one_save), os.kill, (os.getpid(), sig))
            try:
                timer.start()
                deadline = time.monotonic() + 30
                i = trial
                fired = None
                while time.monotonic() < deadline:
                    save_pruned(models[i % 2], out, overwrite=True)
                    i += 1
                    if timer.finished.is_set() and fired is None:
                        fired = time.monotonic()
                    if fired is not None and time.monotonic() - fired > 1.0:
                        # the KeyboardInterrupt was lost: CPython drops an exception raised inside a gc
                        # callback or a __del__ ("Exception ignored in ...", seen in CI with hypothesis's
                        # gc callback); a user presses Ctrl-C again, and so does this test
                        os.kill(os.getpid(), sig)
                        fired, resent = time.monotonic(), resent + 1
            except KeyboardInterrupt:
                interrupted += 1
            finally:
                timer.join()
            got = tree(out)
            assert got.pop("notes.txt") == b"mine"
            assert got in trees, f"trial {trial}: the checkpoint is not one complete version"
            assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], f"trial {trial}: temporaries left"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert interrupted == 20
    assert resent <= 2  # a lost signal is rare; more would mean fxprune swallows them


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_a_complete_checkpoint(tmp_path):
    rng = random.Random(14)
    for k in range(2):
        r = kill_once(tmp_path / f"k{k}", signal.SIGKILL, 1.0, rng)
        assert r.state in ("A", "B"), r
        assert r.notes_kept, r
        assert r.after_clean == [], r  # the next run removed the killed writer's temporary


@pytest.mark.slow
def test_cli_sigterm_exits_143_with_one_line_and_no_partial_output(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: structured\ncriterion: magnitude\nreconstruction: none\ntarget: 0.3\n"
                      "calib_source: generated\ncalib_samples: 2\ncalib_seq_len: 8\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-m", "fxprune", "prune", "tiny:llama", "--recipe", str(recipe),
                          "--out", str(tmp_path / "out")], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         text=True, env=env, cwd=str(tmp_path))
    seen, deadline = "", time.monotonic() + 120
    while "calibration" not in seen and p.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([p.stderr], [], [], 1.0)
        if ready:
            seen += os.read(p.stderr.fileno(), 4096).decode(errors="replace")
    time.sleep(random.Random(3).uniform(0.0, 1.0))  # somewhere in calibration, pruning or saving
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    err = seen + err
    assert p.returncode in (143, 0), err[-2000:]
    assert "Traceback" not in err
    left = sorted(x.name for x in tmp_path.iterdir())
    if p.returncode == 143:
        assert err.strip().splitlines()[-1].startswith("fxprune prune: interrupted: SIGTERM")
        assert left in (["r.yaml"], ["out", "r.yaml"])  # nothing, or (signal during the swap) all
    if "out" in left:
        from fxprune.checkpoint import load_pruned
        load_pruned(tmp_path / "out")
