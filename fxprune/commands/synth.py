"""``fxprune synth PRESET --out DIR``: write a random-weight LLaMA checkpoint of a real shape
(``fxprune/models/synthetic.py``) for memory and time measurements."""
from __future__ import annotations

import time

import torch

NAME = "synth"
HELP = "Write a random-weight LLaMA checkpoint of a real shape (tiny, small, 1.1b, 7b) as sharded safetensors."
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def add_arguments(p):
    from ..models.synthetic import PRESETS
    p.add_argument("preset", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--shard-gb", type=float, default=2.0, help="maximum shard size in GiB")
    p.add_argument("--overwrite", action="store_true", help="replace a synthetic checkpoint already there")


def run(args) -> int:
    from ..models.synthetic import write_synthetic
    t0 = time.perf_counter()
    info = write_synthetic(args.out, args.preset, layers=args.layers, seed=args.seed, dtype=DTYPES[args.dtype],
                           shard_bytes=int(args.shard_gb * 2 ** 30), overwrite=args.overwrite)
    print(f"{info.path}: synthetic {info.preset}, {info.layers} layers, {info.params / 1e9:.3f} B parameters, "
          f"{info.bytes / 2 ** 30:.2f} GiB in {info.shards} shard(s), {time.perf_counter() - t0:.1f}s")
    return 0
