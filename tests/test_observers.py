"""Observer sums equal a direct computation from stored activations."""
import pytest
import torch

from fxprune.calibration.layerwise import calibrate_whole
from fxprune.calibration.observers import (Accumulation, HeadLayout, Stat, StatsCollector, StatsRequest)
from fxprune.errors import DataError
from fxprune.models.tiny import tiny_model

O, D = "model.layers.1.self_attn.o_proj", "model.layers.0.mlp.down_proj"


def _batches():
    g = torch.Generator().manual_seed(0)
    b1 = {"input_ids": torch.randint(0, 128, (2, 12), generator=g)}
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, 9:] = 0
    mask[2, 5:] = 0
    b2 = {"input_ids": torch.randint(0, 128, (3, 12), generator=g), "attention_mask": mask}
    return [b1, b2]


def _stored(model, batches, names, exclude_first):
    """Inputs/outputs of ``names`` stored per token (reference)."""
    xs = {n: [] for n in names}
    ys = {n: [] for n in names}
    cur = {}

    def mk(n):
        def hook(mod, args, out):
            m = cur["mask"]
            xs[n].append(args[0].reshape(-1, args[0].shape[-1])[m].double())
            ys[n].append(out.reshape(-1, out.shape[-1])[m].double())
        return hook
    hs = [model.get_submodule(n).register_forward_hook(mk(n)) for n in names]
    with torch.no_grad():
        for b in batches:
            ids = b["input_ids"]
            m = b.get("attention_mask", torch.ones_like(ids)).bool().clone()
            if exclude_first:
                m[:, 0] = False
            cur["mask"] = m.reshape(-1)
            model(**b, use_cache=False)
    for h in hs:
        h.remove()
    return {n: torch.cat(xs[n]) for n in names}, {n: torch.cat(ys[n]) for n in names}


@pytest.mark.parametrize("exclude_first", [False, True])
def test_stats_equal_direct_computation(exclude_first):
    model = tiny_model("llama")
    batches = _batches()
    all_stats = [Stat.INPUT_GRAM, Stat.INPUT_SUM, Stat.INPUT_SQ, Stat.OUTPUT_SQ]
    req = StatsRequest({O: set(all_stats) | {Stat.HEAD_GRAM}, D: set(all_stats)},
                       heads={O: HeadLayout(4, 16)}, exclude_first_token=exclude_first)
    stats = calibrate_whole(model, batches, req, progress=False)
    X, Y = _stored(model, batches, [O, D], exclude_first)
    expected_count = 2 * 12 + 9 + 12 + 5 - (5 if exclude_first else 0)
    for n in (O, D):
        s, x, y = stats[n], X[n], Y[n]
        assert s.count == x.shape[0] == expected_count
        torch.testing.assert_close(s.gram, x.T @ x)
        torch.testing.assert_close(s.input_sum, x.sum(0))
        torch.testing.assert_close(s.input_sq, (x * x).sum(0))
        torch.testing.assert_close(s.output_sq, (y * y).sum(0))
        torch.testing.assert_close(s.variance, x.var(0, unbiased=False))
        torch.testing.assert_close(s.second_moment, torch.diagonal(s.gram) / s.count)
    # per-head output Gram: o_h = x_h W_h^T
    w = model.get_submodule(O).weight.detach().double()
    x = X[O]
    o = [x[:, h * 16:(h + 1) * 16] @ w[:, h * 16:(h + 1) * 16].T for h in range(4)]
    C = torch.tensor([[float((o[a] * o[b]).sum()) for b in range(4)] for a in range(4)], dtype=torch.float64)
    torch.testing.assert_close(stats[O].head_gram, C)
    # the head contributions add up to the layer output (without bias): trace check
    torch.testing.assert_close(stats[O].head_gram.sum(), stats[O].output_sq.sum())


def test_blocked_gram_equals_plain_product():
    from fxprune.calibration.observers import gram
    x = torch.randn(300, 1030, dtype=torch.float64)
    g = gram(x)
    torch.testing.assert_close(g, x.T @ x)
    torch.testing.assert_close(g, g.T)
    torch.testing.assert_close(gram(x[:, :50], min_blocked=8, blocks=3), x[:, :50].T @ x[:, :50])


def test_padding_changes_the_sums():
    model = tiny_model("llama")
    b = _batches()[1]
    req = StatsRequest.for_modules([D], [Stat.INPUT_GRAM])
    masked = calibrate_whole(model, [b], req, progress=False)[D]
    unmasked = calibrate_whole(model, [{"input_ids": b["input_ids"]}], req, progress=False)[D]
    assert masked.count == 26 and unmasked.count == 36
    assert not torch.allclose(masked.gram, unmasked.gram)


def test_accumulation_modes_agree_and_fp64_is_default():
    model = tiny_model("llama")
    req64 = StatsRequest.for_modules([D], [Stat.INPUT_GRAM])
    reqmx = StatsRequest.for_modules([D], [Stat.INPUT_GRAM], accumulation=Accumulation.MIXED)
    req32 = StatsRequest.for_modules([D], [Stat.INPUT_GRAM], accumulation=Accumulation.FP32)
    g64 = calibrate_whole(model, _batches(), req64, progress=False)[D].gram
    gmx = calibrate_whole(model, _batches(), reqmx, progress=False)[D].gram
    g32 = calibrate_whole(model, _batches(), req32, progress=False)[D].gram
    assert g64.dtype == gmx.dtype == torch.float64 and g32.dtype == torch.float32
    torch.testing.assert_close(gmx, g64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4)


def test_results_are_immutable_and_sums_only():
    model = tiny_model("llama")
    req = StatsRequest.for_modules([D], [Stat.INPUT_SUM])
    with StatsCollector(model, req) as col:
        for b in _batches():
            col.set_token_mask(b.get("attention_mask"), tuple(b["input_ids"].shape))
            model(**b, use_cache=False)
        assert set(col.state()) == {f"{D}/count", f"{D}/input_sum"}  # nothing but sums is kept
    stats = col.result()
    with pytest.raises(TypeError):
        stats["x"] = None
    with pytest.raises(Exception):
        stats[D].count = 3
    assert stats[D].gram is None
    with pytest.raises(TypeError):
        req.modules["x"] = frozenset()


def test_request_errors():
    with pytest.raises(ValueError, match="HeadLayout"):
        StatsRequest.for_modules([O], [Stat.HEAD_GRAM])
    model = tiny_model("llama")
    with pytest.raises(DataError, match="not a module"):
        with StatsCollector(model, StatsRequest.for_modules(["model.nope"], [Stat.INPUT_SUM])):
            pass


def test_runner_excludes_the_first_token_on_request():
    """``run_blocks(..., exclude_first_token=True)`` (the structured step's ``skip_first_token``): every
    op's statistics leave each window's first token out, and equal the sums over the other tokens."""
    from fxprune.calibration import run_blocks
    from fxprune.calibration.runner import CollectStats, Stream
    from fxprune.calibration.blocks import find_blocks
    model = tiny_model("llama")
    batches = [{"input_ids": torch.randint(0, 128, (3, 12), generator=torch.Generator().manual_seed(2))}]
    got = {}
    for skip in (False, True):
        op = CollectStats(StatsRequest.for_modules([D], [Stat.INPUT_GRAM, Stat.INPUT_SUM]), find_blocks(model))
        run_blocks(model, batches, [op], stream=Stream.DENSE, progress=False, exclude_first_token=skip)
        got[skip] = op.collected[D]
    X, _ = _stored(model, batches, [D], exclude_first=True)
    assert got[False].count == 36 and got[True].count == 33 == X[D].shape[0]
    torch.testing.assert_close(got[True].gram, X[D].T @ X[D])
    torch.testing.assert_close(got[True].input_sum, X[D].sum(0))
