"""Calibration: statistics observers, the generic block finder, the layer-wise runner and the
Lightning Fabric engine that shards data over devices and all-reduces the sums.

Typical use by a pass::

    request = StatsRequest.for_modules(names, [Stat.INPUT_GRAM, Stat.INPUT_SUM])
    stats = Engine().calibrate(model, windows.ids, request, on_block=solve_block, stream=Stream.PRUNED)
"""
from .blocks import BlockList, find_blocks
from .engine import Engine, EngineConfig
from .layerwise import BlockContext, Stream, calibrate_layerwise, calibrate_whole
from .observers import (Accumulation, HeadLayout, ModuleStats, Stat, Statistics, StatsCollector,
                        StatsRequest)

__all__ = ["Accumulation", "BlockContext", "BlockList", "Engine", "EngineConfig", "HeadLayout", "ModuleStats",
           "Stat", "Statistics", "StatsCollector", "StatsRequest", "Stream", "calibrate_layerwise",
           "calibrate_whole", "find_blocks"]
