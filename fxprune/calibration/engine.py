"""Lightning Fabric at the edge: device placement, precision, data-parallel launch and all-reduce
for the calibration and evaluation loops.

Why Fabric and not Trainer + LightningModule: calibration and evaluation are not training. They are
forward-only loops with hooks, per-block control flow (layer-wise calibration feeds block i's outputs
to block i+1 and may modify the block in between) and sums that must be all-reduced at exact points
(before any solve). Trainer's fit/validate loops, loggers and callbacks would have to be bent around
that; Fabric gives exactly what is needed (accelerator/devices/strategy/precision, ``launch``,
``all_reduce``, ``autocast``) and leaves the loops as plain readable Python in the core modules,
which stay usable without Lightning (every core function takes an optional ``reduce``).

Contract under data parallelism: every rank calls the same functions with the *same* full list of
windows; each rank keeps the windows ``rank::world_size`` (its shard), streams them, and the sums
(statistics, NLL and token counts, correct-answer counts) are summed across ranks. The results are
identical on every rank and equal (up to float summation order) to a single-process run.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import DataError
from ..evaluation.perplexity import PerplexityResult, perplexity
from ..evaluation.tasks import MCItem
from ..evaluation.zeroshot import TaskResult, loglikelihoods, score_items
from .layerwise import OnBlock, calibrate_layerwise, calibrate_whole
from .runner import RunInfo, Stream, run_blocks
from .observers import Statistics, StatsRequest


@dataclass(frozen=True)
class EngineConfig:
    """Lightning Fabric settings. ``precision``: "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64-true"."""

    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: int = 1


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX). Without either,
    PyTorch's CPU bf16 matmuls run emulated: on an AVX2-only AMD EPYC, a (576, 1536) x (1536, 1536)
    product took 318 ms through ``F.linear`` in bf16 against 47 ms in fp32 (2026-12-02)."""
    cpu = getattr(torch, "cpu", None)
    probes = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in probes if f is not None)


class Engine:
    """Runs calibration/evaluation loops under a ``lightning.fabric.Fabric``. Warns (``RuntimeWarning``)
    when a bf16 precision is asked for on a CPU without hardware bf16 (see ``cpu_has_native_bf16``)."""

    def __init__(self, config: EngineConfig = EngineConfig(), fabric: Any = None):
        from lightning.fabric import Fabric
        self.config = config
        self.fabric = fabric or Fabric(accelerator=config.accelerator, devices=config.devices,
                                       strategy=config.strategy, precision=config.precision,
                                       num_nodes=config.num_nodes)
        if (str(config.precision).startswith("bf16") and self.fabric.device.type == "cpu"
                and not cpu_has_native_bf16()):
            warnings.warn(f"precision {config.precision!r} on a CPU without AVX512-BF16 or AMX: bf16 matmuls are "
                          "emulated there and several times slower than 32-true", RuntimeWarning, stacklevel=2)

    # ---- distribution helpers
    @property
    def rank(self) -> int:
        return self.fabric.global_rank

    @property
    def world_size(self) -> int:
        return self.fabric.world_size

    @property
    def is_main(self) -> bool:
        return self.fabric.global_rank == 0

    def launch(self, fn=None, *args, **kwargs):
        """Start the processes (no-op for one device). ``fn(fabric, *args)`` for spawn strategies."""
        if fn is None:
            return self.fabric.launch()
        return self.fabric.launch(fn, *args, **kwargs)

    def shard(self, items: Sequence) -> list:
        """This rank's share: ``items[rank::world_size]`` (every rank must get at least one)."""
        if len(items) < self.world_size:
            raise DataError(f"{len(items)} batches cannot be split over {self.world_size} ranks")
        return list(items[self.rank::self.world_size])

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        device = self.fabric.device
        return self.fabric.all_reduce(t.to(device), reduce_op="sum").to(t.device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to this rank's device and apply "true" precisions (no DDP wrapper: no grads)."""
        dtypes = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}
        if self.config.precision in dtypes:
            model = model.to(dtypes[self.config.precision])
        return self.fabric.to_device(model)

    # ---- loops
    def batches(self, windows: torch.Tensor, batch_size: int) -> list[dict]:
        """This rank's calibration batches of ``windows`` [n, L]."""
        all_batches = [{"input_ids": windows[i:i + batch_size]} for i in range(0, windows.shape[0], batch_size)]
        return [{k: v.to(self.fabric.device) for k, v in b.items()} for b in self.shard(all_batches)]

    def run_blocks(self, model: torch.nn.Module, windows: torch.Tensor, ops, *, batch_size: int = 8,
                   stream: Stream = Stream.PRUNED, desc: str = "blocks",
                   exclude_first_token: bool = False) -> RunInfo:
        """The block-wise runner (``runner.run_blocks``) over this rank's batches of ``windows``, with
        statistics all-reduced across ranks before any op sees them."""
        batches = self.batches(windows, batch_size) if windows is not None else []
        with torch.no_grad(), self.fabric.autocast():
            return run_blocks(model, batches, ops, stream=stream, reduce=self.reduce_sum,
                              progress=self.is_main, desc=desc, exclude_first_token=exclude_first_token)

    def calibrate(self, model: torch.nn.Module, windows: torch.Tensor, request: StatsRequest, *,
                  batch_size: int = 8, layerwise: bool = True, on_block: OnBlock | None = None,
                  stream: Stream = Stream.DENSE, keep_stats: bool = True,
                  dense_targets: bool = True) -> Statistics:
        """Statistics of ``request`` over ``windows`` (sharded, all-reduced before ``on_block`` sees them).
        ``layerwise=False``: one whole-model forward per batch (the reference; runs the LM head)."""
        batches = self.batches(windows, batch_size)
        with torch.no_grad(), self.fabric.autocast():
            if layerwise:
                return calibrate_layerwise(model, batches, request, on_block=on_block, stream=stream,
                                           reduce=self.reduce_sum, keep_stats=keep_stats,
                                           progress=self.is_main, dense_targets=dense_targets)
            if on_block is not None:
                raise ValueError("on_block needs layer-wise calibration")
            return calibrate_whole(model, batches, request, reduce=self.reduce_sum, progress=self.is_main)

    def perplexity(self, model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 1) -> PerplexityResult:
        shard = torch.stack(self.shard(list(windows)))
        return perplexity(model, shard, batch_size=batch_size, reduce=self.reduce_sum,
                          autocast=self.fabric.autocast, device=self.fabric.device, progress=self.is_main)

    def zeroshot(self, model: torch.nn.Module, tokenizer: Any, items: Sequence[MCItem], **kw) -> TaskResult:
        shard = self.shard(list(items))
        requests = [r for item in shard for r in item.requests]
        res = score_items(shard, loglikelihoods(model, tokenizer, requests, autocast=self.fabric.autocast,
                                                progress=self.is_main, **kw))
        sums = self.reduce_sum(torch.tensor([res.acc * res.items, res.acc_norm * res.items, res.items],
                                            dtype=torch.float64))
        n = int(round(float(sums[2])))
        return TaskResult(float(sums[0]) / n, float(sums[1]) / n, n)
