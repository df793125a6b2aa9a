import os

import pytest
import torch

from fxprune.data import data_root

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def root():
    r = data_root()
    if not (r / "c4").is_dir():
        pytest.skip(f"shared data not found at {r} (set FXPRUNE_DATA)")
    return r
