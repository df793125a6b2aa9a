"""``prune --onload --dry-run``: the expected peak memory and time per block of an onloaded prune,
from the checkpoint's headers and ``config.json`` only (nothing is read or run).

Memory (bytes; the largest of the stages, each the sum of what is alive then):

* ``base``: the interpreter, torch, transformers and the meta skeleton (``BASE_BYTES``);
* ``block weights``: one block in the stored dtype, plus the fp32 working copies of its widest layer;
* ``calibration stream``: ``copies x n x L x hidden x 4`` (sparsity: the inputs and outputs of the block;
  structured: also the dense stream and the refit targets);
* ``statistics`` at the end of the block's calibration pass: one fp64 Gram per distinct input (q/k/v
  share one, gate/up share one; o_proj and down_proj one each: ``(3 h^2 + I^2) x 8``), restricted to the
  layers the method reads;
* ``solve``: sparsity (SparseGPT/MRP), at the widest layer: its fp64 Gram and two fp32 ``d x d``
  matrices (the in-place inverse factor), or the output error's ``out x d`` fp64 product if larger;
  structured (LIAR fold of the FFN): the Gram and two ``(r+1)^2`` fp64 matrices, ``r`` the kept channels.
* the embeddings while block-0 inputs are captured (``prologue``), alone with the base.

Time per block: floating-point operations of the forwards (``2 x tokens x block parameters`` per pass),
the Gram products, and the solves (Cholesky ``d^3/3``, inverse ``2 d^3/3``, SparseGPT's lazy updates
``out x d^2``, its output error ``2 out d^2`` in fp64; LIAR ``r^3/3 + 2 r^2 |P|`` in fp64), divided by
the rate of one fp32 and one fp64 matrix product measured here on one thread (``measure_rates``). It
is an estimate of the order of magnitude (LAPACK factorisations run below GEMM speed); compare
``bench/results/scale.md``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .preflight import BASE_BYTES, fmt_bytes


@dataclass
class OnloadEstimate:
    peak: int
    stages: dict = field(default_factory=dict)     # stage -> bytes alive at its peak
    terms: dict = field(default_factory=dict)      # the stage with the peak: term -> bytes
    seconds_per_block: float = 0.0
    blocks: int = 0
    gflops: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"peak_bytes": self.peak, "peak": fmt_bytes(self.peak), "stages": {k: fmt_bytes(v) for k, v in self.stages.items()},
                "peak_terms": {k: fmt_bytes(v) for k, v in self.terms.items()},
                "seconds_per_block": round(self.seconds_per_block, 4), "blocks": self.blocks,
                "seconds_total": round(self.seconds_per_block * self.blocks, 1), "measured_gflops_1_thread": self.gflops}


def measure_rates(n: int = 768) -> dict:
    """GFLOP/s of one ``n x n`` matrix product in fp32 and fp64 on this process's threads (~0.1 s)."""
    out = {}
    for dt in (torch.float32, torch.float64):
        a = torch.randn(n, n, dtype=dt)
        a @ a
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < 0.05 or k < 2:
            a @ a
            k += 1
        out[str(dt).rsplit(".", 1)[-1]] = round(2 * n ** 3 * k / (time.perf_counter() - t0) / 1e9, 1)
    return out


def estimate_onloaded(facts, kind: str, samples: int, seq_len: int, batch: int = 8, stored_bytes: int = 2,
                      kept: float = 0.8, rates: dict | None = None) -> OnloadEstimate:
    """Peak memory and seconds per block (module docstring) for ``kind`` ``sparsity`` | ``structured``."""
    h, I, V = facts.hidden, facts.intermediate, facts.vocab
    head_dim = h // max(facts.heads, 1)
    kv = facts.kv_heads * head_dim
    lin = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h),
           "gate_proj": (I, h), "up_proj": (I, h), "down_proj": (h, I)}          # name -> (out, in)
    block_params = sum(o * i for o, i in lin.values()) + 2 * h
    T = samples * seq_len
    b = max(1, min(batch, samples))
    weights = block_params * stored_bytes + 3 * h * I * 4            # the block + fp32 copies of one layer
    stream = (4 if kind == "structured" else 2) * T * h * 4
    transients = b * (facts.heads * seq_len ** 2 + 3 * seq_len * I) * 4
    if kind == "structured":  # FFN channels: down_proj's input Gram and sums; LIAR on the kept ones
        grams = I * I * 8
        r = int(kept * I)
        solve = {"Gram (fp64)": I * I * 8, "LIAR system + factor (fp64)": 2 * (r + 1) ** 2 * 8,
                 "right-hand side": (r + 1) * (I - r) * 8 * 2}
    else:
        grams = (3 * h * h + I * I) * 8
        d_max = max(i for _, i in lin.values())
        o_max = max(o for o, i in lin.values() if i == d_max)
        solve = {"Gram (fp64)": d_max * d_max * 8,
                 "inverse factor (2 x fp32)": max(2 * d_max * d_max * 4, 3 * o_max * d_max * 8)}
    common = {"base": BASE_BYTES, "block weights": weights, "calibration stream": stream}
    stages = {"prologue (embeddings)": BASE_BYTES + V * h * stored_bytes + T * h * 4,
              "calibration pass": sum(common.values()) + grams + transients,
              "solve": sum(common.values()) + sum(solve.values())}
    peak_stage = max(stages, key=stages.get)
    terms = {**common, **({"statistics": grams, "forward transients": transients} if peak_stage == "calibration pass"
                          else solve if peak_stage == "solve" else {})}
    rates = rates or measure_rates()
    f32, f64 = rates["float32"] * 1e9, rates["float64"] * 1e9
    passes = 4 if kind == "structured" else 2
    flops32 = passes * 2 * T * block_params + 2 * T * (3 * h * h + I * I)
    flops64 = 0.0
    if kind == "structured":
        r = int(kept * I)
        flops64 += r ** 3 / 3 + 2 * r * r * (I - r) + 2 * T * I * I       # LIAR + score Gram (global allocation)
    else:
        for o, i in lin.values():
            flops32 += 4 / 3 * i ** 3 + o * i * i
            flops64 += 2 * o * i * i
    seconds = flops32 / f32 + flops64 / f64
    return OnloadEstimate(stages[peak_stage], stages, terms, seconds, facts.layers, rates)


def describe(est: OnloadEstimate) -> str:
    d = est.as_dict()
    lines = [f"expected peak memory {d['peak']} (" + ", ".join(f"{k} {v}" for k, v in d["peak_terms"].items()) + ")",
             "  by stage: " + ", ".join(f"{k} {v}" for k, v in d["stages"].items()),
             f"expected time {d['seconds_per_block']} s per block x {d['blocks']} blocks = {d['seconds_total']} s "
             f"(one thread at {d['measured_gflops_1_thread']} GFLOP/s measured now; an order of magnitude)"]
    return "\n".join(lines)
