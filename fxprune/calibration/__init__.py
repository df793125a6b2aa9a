"""Calibration: statistics observers, the generic block finder, the layer-wise runner and the
Lightning Fabric engine that shards data over devices and all-reduces the sums.

Methods contribute ``BlockOp`` objects (a statistics request and the work on one block) and the one
block-wise runner drives them::

    Engine().run_blocks(model, windows.ids, [MyOp(...)], stream=Stream.PRUNED)
"""
from .blocks import BlockList, find_blocks
from .engine import Engine, EngineConfig
from .layerwise import calibrate_layerwise, calibrate_whole
from .runner import BlockContext, BlockOp, CollectStats, RunInfo, Stream, run_blocks
from .observers import (Accumulation, HeadLayout, ModuleStats, Stat, Statistics, StatsCollector,
                        StatsRequest)

__all__ = ["Accumulation", "BlockContext", "BlockList", "BlockOp", "CollectStats", "RunInfo", "run_blocks", "Engine", "EngineConfig", "HeadLayout", "ModuleStats",
           "Stat", "Statistics", "StatsCollector", "StatsRequest", "Stream", "calibrate_layerwise",
           "calibrate_whole", "find_blocks"]
