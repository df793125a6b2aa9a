"""The method layer: one recipe format, one block-wise runner, checked pass contracts, composition."""
import copy

import pytest
import torch

import fxprune
from fxprune.calibration import BlockOp, Stat, StatsRequest, run_blocks
from fxprune.calibration.blocks import find_blocks
from fxprune.calibration.runner import Stream, forward_kwargs
from fxprune.errors import DataError, RecipeError
from fxprune.models.tiny import tiny_model
from fxprune.passes.base import ContractError, Pass, PassContext, PassError, PassManager
from fxprune.pipeline import plan_model, prune_model
from fxprune.recipe import load_recipe
from fxprune.sparsity.methods import LayerStats, prune_weight


def _windows(n=8, L=24, seed=0):
    return torch.randint(5, 128, (n, L), generator=torch.Generator().manual_seed(seed))


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


STRUCTURED = {"structured": {"criterion": "flap", "reconstruction": "liar", "target": 0.25,
                             "kinds": ["attention", "ffn"]}}
SPARSE = {"sparsegpt": {"sparsity": "2:4"}}


# ---------------------------------------------------------------------------------------- contracts
class _Reads(Pass):
    name, requires = "reads", ("a",)

    def run(self, ctx):
        return {"b": ctx["b"]}


class _Writes(Pass):
    name, ensures = "writes", ("a",)

    def run(self, ctx):
        ctx.facts["a"] = 1
        ctx.facts["c"] = 2


class _Makes(Pass):
    name, ensures = "makes", ("a", "b")

    def run(self, ctx):
        ctx.facts["a"], ctx.facts["b"] = 1, 2


def test_pass_manager_refuses_undeclared_reads_and_writes():
    with pytest.raises(PassError, match="'writes'.*wrote fact 'c'") as e:
        PassManager([_Writes()]).run(PassContext(None))
    assert isinstance(e.value.__cause__, ContractError)
    with pytest.raises(PassError, match="'reads'.*read fact 'b'") as e:
        PassManager([_Makes(), _Reads()]).run(PassContext(None))
    assert isinstance(e.value.__cause__, ContractError)
    with pytest.raises(PassError, match="requires \\['a'\\]"):
        PassManager([_Reads()]).run(PassContext(None))


def test_every_shipped_recipe_runs_its_passes_within_their_contracts():
    """The real passes declare what they read and write: a structured (global, GOA refit, Olica with
    linear calibration, measured allocation with attention) and a sparsity recipe run end to end under the checked manager."""
    for spec in ({"calibration": {"batch_size": 4}, "steps": [{"structured": {
                     "criterion": "goa", "reconstruction": "goa", "allocation": "global", "target": 0.2}}]},
                 {"calibration": {"batch_size": 4}, "steps": [{"structured": {
                     "criterion": "olica", "reconstruction": "none", "attention": "olica", "target": 0.2,
                     "lincal_layers": 1}}]},
                 {"calibration": {"batch_size": 4}, "steps": [{"structured": {
                     "criterion": "goa", "reconstruction": "liar", "allocation": "measured", "target": 0.2,
                     "probe_samples": 4, "probe_ratios": [0.25, 0.75]}}]},
                 {"calibration": {"batch_size": 4}, "steps": [{"wanda": {"sparsity": 0.5}}]}):
        out = prune_model(tiny_model("llama"), spec, _windows())
        assert out.report["params_after"] <= out.report["params_before"]


# ---------------------------------------------------------------------------------------- recipes
def test_legacy_and_new_recipe_formats_are_the_same_recipe():
    legacy = {"method": "structured", "criterion": "goa", "reconstruction": "liar", "allocation": "global",
              "target": 0.2, "kinds": ["ffn"], "calib_source": "c4", "calib_samples": 64, "calib_seq_len": 256,
              "batch_size": 4, "seed": 3}
    new = {"calibration": {"source": "c4", "samples": 64, "seq_len": 256, "batch_size": 4, "seed": 3},
           "steps": [{"structured": {"criterion": "goa", "reconstruction": "liar", "allocation": "global",
                                     "target": 0.2, "kinds": ["ffn"]}}]}
    assert load_recipe(legacy) == load_recipe(new)
    legacy_sp = {"method": "sparsegpt", "sparsity": "4:8", "options": {"blocksize": 64},
                 "calibration": {"samples": 32, "seqlen": 256}}
    new_sp = {"calibration": {"samples": 32, "seq_len": 256},
              "steps": [{"sparsegpt": {"sparsity": "4:8", "blocksize": 64}}]}
    assert load_recipe(legacy_sp) == load_recipe(new_sp)


@pytest.mark.parametrize("bad, match", [
    ({"steps": []}, "non-empty list"),
    ({"steps": [{"nope": {}}]}, "unknown step kind 'nope'"),
    ({"steps": [{"structured": {"target": "a lot"}}]}, "target"),
    ({"steps": [{"mrp": {"sparsity": "2:4", "blocksize": "big"}}]}, "blocksize"),
    ({"steps": [{"mrp": {}}]}, "missing field 'sparsity'"),
    ({"steps": [{"structured": {}, "mrp": {}}]}, "one key"),
    ({"calibration": {"samples": -1}, "steps": [SPARSE]}, "calibration.*samples"),
    ({"steps": [SPARSE], "extra": 1}, "unknown field"),
    ([1, 2], "expected a Recipe, a dict"),
])
def test_bad_recipes_are_typed_errors_naming_the_field(bad, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe(bad)


def test_with_target_sets_every_structured_step():
    r = load_recipe({"steps": [STRUCTURED, SPARSE]}).with_target(0.4)
    assert r.steps[0].target == 0.4 and r.steps[1] == load_recipe({"steps": [SPARSE]}).steps[0]
    with pytest.raises(RecipeError, match="no structured step"):
        load_recipe({"steps": [SPARSE]}).with_target(0.3)


# ---------------------------------------------------------------------------------------- composition
def test_composed_recipe_equals_its_steps_run_one_after_another():
    m1, m2 = tiny_model("llama"), tiny_model("llama")
    w = _windows()
    cal = {"batch_size": 4}
    prune_model(m1, {"calibration": cal, "steps": [STRUCTURED, SPARSE]}, w)
    prune_model(m2, {"calibration": cal, "steps": [STRUCTURED]}, w)
    prune_model(m2, {"calibration": cal, "steps": [SPARSE]}, w)
    s1, s2 = _state(m1), _state(m2)
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    down = m1.model.layers[0].mlp.down_proj.weight
    assert down.shape[1] < tiny_model("llama").config.intermediate_size and bool(((down == 0).reshape(down.shape[0], -1, 4).sum(-1) == 2).all())


def test_dry_run_is_the_planning_passes_and_changes_nothing():
    m = tiny_model("llama")
    before = _state(m)
    ctxs = plan_model(m, {"calibration": {"batch_size": 4}, "steps": [
        {"structured": {"criterion": "flap", "reconstruction": "liar", "allocation": "global", "target": 0.25}},
        SPARSE]}, _windows())
    assert [r.name for r in ctxs[0].results] == ["analyse", "select_groups", "score", "allocate"]
    assert [r.name for r in ctxs[1].results] == ["select_linears"]
    after = _state(m)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------------------------------- the runner
class _Count(BlockOp):
    name, modifies = "count", False

    def __init__(self, blocks=None):
        self.blocks, self.seen = blocks, []

    def active(self, i):
        return self.blocks is None or i in self.blocks

    def request(self, ctx):
        return StatsRequest.for_modules([f"{ctx.name}.mlp.up_proj"], [Stat.INPUT_SUM])

    def apply(self, ctx, stats):
        self.seen.append(ctx.index)


def _count_forwards(model):
    calls = {"head": 0, "blocks": [0] * len(find_blocks(model))}
    model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    for i, b in enumerate(find_blocks(model).blocks):
        b.register_forward_hook(lambda *a, i=i: calls["blocks"].__setitem__(i, calls["blocks"][i] + 1))
    return calls


class _Scale(BlockOp):
    """Scales the block's down_proj; ``give``: also hands the runner outputs (marked by ``+ 1000``)."""
    name, modifies = "scale", True

    def __init__(self, give):
        self.give = give

    def active(self, i):
        return i == 0

    def request(self, ctx):
        return None

    def apply(self, ctx, stats):
        with torch.no_grad():
            ctx.block.mlp.down_proj.weight.mul_(0.5)
        if self.give:
            ctx.outputs = [torch.full_like(inp.hidden, 1000.0) for inp in ctx.inputs]


class _Seen(_Count):
    def apply(self, ctx, stats):
        self.seen.append(ctx.inputs[0].hidden.clone())


@pytest.mark.parametrize("ops", ["give", "give_then_modify", "none"])
def test_runner_takes_the_outputs_a_modifying_op_gives(ops):
    """A modifying op may hand the runner the block's new outputs (``BlockContext.outputs``): block 1
    then sees them; a later modifying op that gives none makes the runner recompute them."""
    m = tiny_model("llama", num_hidden_layers=2)
    batches = [{"input_ids": _windows(2)}]
    seen = _Seen(blocks={1})
    chain = {"give": [_Scale(True)], "give_then_modify": [_Scale(True), _Scale(False)], "none": [_Scale(False)]}[ops]
    run_blocks(m, batches, [*chain, seen], stream=Stream.PRUNED, progress=False)
    got = seen.seen[0]
    if ops == "give":
        assert torch.equal(got, torch.full_like(got, 1000.0))
    else:
        ref = copy.deepcopy(m)
        with torch.no_grad():
            h = {}

            def grab(mod, a, kw):
                h.setdefault("x", kw.get("hidden_states", a[0] if a else None))  # returns None: no change

            find_blocks(ref).blocks[1].register_forward_pre_hook(grab, with_kwargs=True)
            ref(**batches[0])
        torch.testing.assert_close(got, h["x"])


def test_runner_never_runs_the_head_and_stops_after_the_last_active_block():
    m = tiny_model("llama", num_hidden_layers=4)
    calls = _count_forwards(m)
    batches = [{"input_ids": w} for w in _windows(4).split(2)]
    op = _Count(blocks={1})
    run_blocks(m, batches, [op], stream=Stream.DENSE, progress=False)
    assert op.seen == [1]
    assert calls["head"] == 0
    assert calls["blocks"] == [2, 2, 0, 0]  # block 1 is the last active one: nothing after it runs


def test_runner_runs_no_forward_for_data_free_ops():
    m = tiny_model("llama")
    calls = _count_forwards(m)
    out = prune_model(m, {"steps": [{"magnitude": {"sparsity": "2:4"}}]})  # no calibration windows at all
    assert calls == {"head": 0, "blocks": [0, 0]}
    assert out.report["steps"][0]["passes"][-1]["calibration_tokens"] == 0
    with pytest.raises(DataError, match="need calibration data"):
        run_blocks(m, [], [_Count()], progress=False)


def test_sparsify_step_equals_the_kernel_on_the_blocks_inputs():
    """Block 0 sees the dense inputs: its q_proj after the step equals the kernel applied to the Gram
    of the inputs captured from a plain forward."""
    m = tiny_model("llama")
    ref = copy.deepcopy(m)
    w = _windows()
    xs = []
    h = ref.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda mod, a: xs.append(a[0].detach()))
    with torch.no_grad():
        for b in w.split(4):
            ref(**forward_kwargs(ref, {"input_ids": b}))
    h.remove()
    X = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double()
    rec = load_recipe({"calibration": {"batch_size": 4}, "steps": [{"sparsegpt": {"sparsity": "2:4"}}]})
    prune_model(m, rec, w)
    W = ref.model.layers[0].self_attn.q_proj.weight.detach()
    expect = prune_weight(W.float(), LayerStats("q", X.T @ X, X.shape[0]), rec.steps[0].pattern, rec.steps[0].method)
    torch.testing.assert_close(m.model.layers[0].self_attn.q_proj.weight, expect.weight, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------- public API
def test_public_api_names():
    for name in ("load", "load_pruned", "prune", "sparsify", "plan", "evaluate", "save", "load_recipe", "export"):
        assert callable(getattr(fxprune, name)), name
    from importlib import import_module
    assert import_module("fxprune.export.types").row_multiple("q8_0") == 32
    assert callable(fxprune.export)  # importing a submodule keeps the verb callable


def test_sparsify_verb_equals_its_recipe():
    m1, m2 = tiny_model("llama"), tiny_model("llama")
    w = _windows()
    fxprune.sparsify(m1, "wanda", 0.5, w)
    fxprune.prune(m2, {"steps": [{"wanda": {"sparsity": 0.5}}]}, w)
    s1, s2 = _state(m1), _state(m2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


# ---------------------------------------------------------------------------------------- export step
def _gguf_tensors(path):
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type, bytes(t.data.tobytes())) for t in r.tensors}


def test_export_step_writes_the_gguf_of_the_model_the_earlier_steps_left(tmp_path):
    pytest.importorskip("gguf")
    m = tiny_model("llama")
    recipe = {"calibration": {"batch_size": 4}, "steps": [STRUCTURED, SPARSE, {"export": {"dtype": "f32"}}]}
    with pytest.raises(RecipeError, match="export"):  # nowhere to write: refused before any work
        prune_model(m, recipe, _windows())
    assert torch.equal(m.model.layers[0].mlp.down_proj.weight, tiny_model("llama").model.layers[0].mlp.down_proj.weight)
    out = fxprune.prune(m, recipe, _windows(), artifacts=tmp_path / "a")
    written = tmp_path / "a" / "model.f32.gguf"
    assert written.is_file() and fxprune.report.find_pass(out.report, "write_export")["arch"] in ("llama", "deci")
    fxprune.export(m, tmp_path / "direct.gguf", "f32", log=lambda *a: None)  # the same model, exported by the verb
    a, b = _gguf_tensors(written), _gguf_tensors(tmp_path / "direct.gguf")
    assert a.keys() == b.keys() and len(a) > 10 and all(a[k] == b[k] for k in a)
    down = m.model.layers[0].mlp.down_proj.weight
    assert down.shape[1] < 96 and bool((down == 0).any())  # structured and 2:4 both reached the file


def test_export_type_rounds_the_structured_widths_it_needs():
    r = load_recipe({"steps": [STRUCTURED, {"export": {"dtype": "q8_0"}}]})
    assert r.steps[0].channel_multiple == 32  # a Q8_0 row is blocks of 32: FFN widths kept to multiples of 32
    assert load_recipe({"steps": [STRUCTURED, {"export": {"dtype": "f16"}}]}).steps[0].channel_multiple == 8
    with pytest.raises(fxprune.FxPruneError, match="q3_x"):
        load_recipe({"steps": [{"export": {"dtype": "q3_x"}}]})
    with pytest.raises(RecipeError, match="file"):
        load_recipe({"steps": [{"export": {"file": "../x.gguf"}}]})


def test_cli_export_step_writes_inside_the_checkpoint(tmp_path):
    pytest.importorskip("gguf")
    import yaml

    from fxprune.cli import main
    rec = tmp_path / "r.yaml"
    rec.write_text(yaml.safe_dump({"calibration": {"source": "generated", "samples": 4, "seq_len": 16,
                                                   "batch_size": 2},
                                   "steps": [STRUCTURED, {"export": {"dtype": "f16", "file": "small.gguf"}}]}))
    assert main(["prune", "tiny:llama", "--recipe", str(rec), "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "small.gguf").is_file() and (tmp_path / "o" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "r.yaml"]
