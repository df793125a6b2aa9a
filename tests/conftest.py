import os
import signal

import pytest
import torch

from fxprune.data import data_root

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Interrupt tests send this process SIGINT and expect KeyboardInterrupt, as from a terminal. A job
# started in the background (nohup, `cmd &`, some CI runners) inherits SIGINT ignored, and Python then
# installs no handler: restore the terminal's behaviour.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def root():
    r = data_root()
    if not (r / "c4").is_dir():
        pytest.skip(f"shared data not found at {r} (set FXPRUNE_DATA)")
    return r


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(123)
    return torch.randint(5, 128, (2, 9), generator=g)


def half_plan(analysis, seed=0, kinds=None, vary=False):
    """Keep a random half of every prunable group (at least one unit)."""
    g = torch.Generator().manual_seed(seed)
    plan = {}
    for i, gr in enumerate(analysis.prunable()):
        if kinds and gr.kind not in kinds:
            continue
        k = max(1, gr.units // 2 + (i % 2 if vary else 0))
        k = min(k, gr.units)
        plan[gr.id] = sorted(torch.randperm(gr.units, generator=g)[:k].tolist())
    return plan
