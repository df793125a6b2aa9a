"""Olica's attention work on one block: rotate V/O per KV group (function-preserving), keep the
planned number of rotated value channels, factorise Q/K to their planned low rank (``olica/``)."""
from __future__ import annotations

from collections import defaultdict

from ...calibration import Accumulation, Stat, StatsRequest
from ...surgery import prune
from ..olica.lowrank import factorise
from ..olica.vo import rotate_vo
from .base import ByBlock


def attention_request(parts, whitened: bool) -> StatsRequest:
    """Value input second moments, output-projection input Gram and output moments, Q/K input moments
    (and Gram, for the whitened factorisation) of ``parts``."""
    mods = defaultdict(set)
    for p in parts:
        mods[p.v_module] |= {Stat.INPUT_SQ}
        mods[p.o_module] |= {Stat.INPUT_GRAM, Stat.OUTPUT_SQ}
        for w in p.qk_weights:
            mods[w.rsplit(".", 1)[0]] |= {Stat.INPUT_SQ} | ({Stat.INPUT_GRAM} if whitened else set())
    return StatsRequest(mods, accumulation=Accumulation.MIXED)


class OlicaAttention(ByBlock):
    name = "olica_attention"
    resumable = True  # record: this block's value-channel plan and the factorisations so far

    def record(self, index):
        groups = {p.v_group for p in self.by_block.get(index, ())}
        return {"plan": [[g, u] for g, u in self.final_plan.items() if g in groups], "factorised": self.factorised}

    def replay(self, index, record):
        if record:
            self.final_plan.update({g: list(u) for g, u in record["plan"]})
            self.factorised = record["factorised"]

    def __init__(self, model, analysis, parts_by_block: dict, split, whitened: bool):
        super().__init__(parts_by_block)
        self.model, self.analysis, self.split, self.whitened = model, analysis, split, whitened
        self.final_plan: dict = {}
        self.factorised = 0

    def request(self, ctx):
        return attention_request(self.by_block[ctx.index], self.whitened)

    def apply(self, ctx, stats):
        for p in self.by_block[ctx.index]:
            rotate_vo(self.model, p, stats)
            keep_v = list(range(self.split.v_kept[p.v_group]))
            if len(keep_v) < p.head_dim:
                prune(self.model, {p.v_group: keep_v}, self.analysis, verify=False)
                self.final_plan[p.v_group] = keep_v
            for w in p.qk_weights:
                if w in self.split.ranks:
                    mod = w.rsplit(".", 1)[0]
                    st = stats[mod]
                    factorise(self.model, mod, self.split.ranks[w], st.second_moment,
                              gram=st.gram / st.count if self.whitened else None)
                    self.factorised += 1
