"""Kill harness for the checkpoint writer (issue 14): a child process saves two tiny checkpoints A and B
over the same directory in a loop (``save_pruned(..., overwrite=True)``, the path every command
uses); the parent kills it at a random moment and checks what is left.

Used by tests/test_interrupts.py (a few kill points) and bench/reliability.py (many).

    python tests/harness_kill.py child OUT REF     # the child (prints READY, then one line per commit)
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _child(out: Path, ref: Path) -> int:
    import torch

    from fxprune.checkpoint import save_pruned
    from fxprune.cli import _on_sigterm
    from fxprune.models.tiny import tiny_model
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started from a background job
    torch.set_num_threads(1)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(tiny_model("llama", num_hidden_layers=4, hidden_size=128, intermediate_size=384,
                                 head_dim=32))
    try:
        for name, m in zip("AB", models):
            save_pruned(m, ref / name)
        save_pruned(models[0], out)
        (out / "notes.txt").write_text("the user's notes")
        print("READY A", flush=True)
        i = 1
        while True:
            save_pruned(models[i % 2], out, overwrite=True)
            print("AB"[i % 2], flush=True)
            i += 1
    except KeyboardInterrupt:
        return 130


@dataclass
class KillResult:
    sig: int
    delay: float
    state: str          # "A" / "B": a complete checkpoint; "damaged" otherwise
    last_reported: str
    leftovers: list     # entries beside OUT after the kill (before any clean-up)
    after_clean: list   # entries beside OUT after the next writer's check
    notes_kept: bool
    returncode: int


def start_child(work: Path) -> tuple[subprocess.Popen, Path, Path]:
    out_parent, ref = work / "outs", work / "ref"
    out_parent.mkdir(parents=True, exist_ok=True)
    ref.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with open(work / "child.err", "w") as err:  # a file, not a pipe: the child's progress bars never block it
        p = subprocess.Popen([sys.executable, str(HERE / "harness_kill.py"), "child", str(out_parent / "ckpt"),
                              str(ref)], stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=str(work))
    line = p.stdout.readline()
    if not line.startswith("READY"):
        p.kill()
        p.wait()
        raise RuntimeError(f"child did not start: {line!r} {(work / 'child.err').read_text()[-2000:]}")
    return p, out_parent, ref


def kill_once(work: Path, sig: int, max_delay: float, rng: random.Random) -> KillResult:
    """Start a child, let it save for a random time, send ``sig``, classify what is left."""
    from fxprune.output import check_output
    p, out_parent, ref = start_child(work)
    delay = rng.uniform(0.0, max_delay)
    time.sleep(delay)
    p.send_signal(sig)
    try:
        rest, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        rest, _ = p.communicate()
    reported = ["A"] + [x for x in rest.split() if x in ("A", "B")]
    out = out_parent / "ckpt"
    leftovers = sorted(x for x in os.listdir(out_parent) if x != "ckpt")
    got = tree(out) if out.is_dir() else {}
    notes = got.pop("notes.txt", None)
    state = "damaged"
    for name in "AB":
        if got == tree(ref / name):
            state = name
    check_output(out, overwrite=True)  # what the next run does first: clean stale temporaries
    after = sorted(x for x in os.listdir(out_parent) if x != "ckpt")
    return KillResult(sig, delay, state, reported[-1], leftovers, after, notes == b"the user's notes", p.returncode)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "child":
    sys.exit(_child(Path(sys.argv[2]), Path(sys.argv[3])))
