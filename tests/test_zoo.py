"""The zoo contract (``fxprune.models.zoo.check_family``) on transformers' architectures, built tiny.

``tests/zoo_supported.json`` records, from the last full run of ``bench/zoo.py``, every family that
was fully supported and the kinds it offered. A family listed there that stops being fully
supported fails the test. The default suite runs a fast subset (one family per construct);
the whole list runs with ``FXPRUNE_ZOO=1 pytest -m zoo tests/test_zoo.py`` (about 15 minutes).
"""
import json
import os
from pathlib import Path

import pytest

from fxprune.models.zoo import check_family, fully_supported, render_table, zoo_families

SUPPORTED = json.loads((Path(__file__).parent / "zoo_supported.json").read_text())

# one family per construct the analysis had to learn, not covered elsewhere in the suite
FAST = ["qwen2_moe",   # MoE with a shared expert and its gate
        "phi3",        # fused qkv with GQA: segments of one weight
        "jamba",       # hybrid: attention, Mamba and MoE layers in one stack
        "gpt_bigcode",  # fused multi-query c_attn (Conv1D-free linear) and GELU MLP
        "falcon",       # fused qkv viewed into [heads + 2, d], cut by a slice and constant indices
        "mpnet"]        # heads of every layer coupled by one shared relative-position bias table


def _check(family):
    want = SUPPORTED[family]
    rec = check_family(family, want["head"])
    assert rec["stage"] == "done", rec.get("error")
    bad = {c: v for c, v in rec["checks"].items() if not v["ok"]}
    assert not bad, bad
    for kind in want["kinds"]:
        k = rec["kinds"].get(kind)
        assert k and k["prunable"] == k["groups"] > 0, (kind, k)
    assert all(k["unexplained"] == 0 for k in rec["kinds"].values())  # never an empty reason
    if family in ("falcon", "mpnet"):  # their attention is recognised, not only passed over
        assert {"attn_q_per_kv", "attn_heads"} & set(rec["planned_kinds"]), rec["kinds"]
    assert fully_supported(rec)
    return rec


@pytest.mark.parametrize("family", FAST)
def test_zoo_fast_subset(family):
    assert family in SUPPORTED
    _check(family)


@pytest.mark.zoo
@pytest.mark.skipif(not os.environ.get("FXPRUNE_ZOO"), reason="full zoo: FXPRUNE_ZOO=1 pytest -m zoo tests/test_zoo.py")
@pytest.mark.parametrize("family", sorted(SUPPORTED))
def test_zoo_supported_family_stays_supported(family):
    _check(family)


def test_discovery_and_the_recorded_table():
    """The families come from transformers' auto mappings (>= 25 supported), and the README shows
    the table rendered from the recorded run."""
    fams = dict(zoo_families())
    assert len(fams) >= 150 and {"llama", "mixtral", "mamba2", "jamba", "gpt2", "bert"} <= set(fams)
    assert len(SUPPORTED) >= 25 and set(SUPPORTED) <= set(fams)
    root = Path(__file__).resolve().parents[1]
    records = json.loads((root / "bench" / "results" / "zoo.json").read_text())
    assert {f for f, r in records.items() if fully_supported(r)} == set(SUPPORTED)
    assert render_table(records, fams) in (root / "README.md").read_text()
    # issue 12 item 2: over the whole zoo, every group that is not prunable says why
    assert not [f for f, r in records.items() if any(k.get("unexplained") for k in r["kinds"].values())]


def test_remote_code_reload_initialises_non_persistent_buffers(tmp_path):
    """Falcon-H1 keeps ``mup_vector`` as a non-persistent buffer that only the model's
    ``_init_weights`` fills: the generated remote-code class must get the stock initialisation
    (transformers skips it for custom code), else the reloaded model computes NaN."""
    import torch
    from transformers import AutoModelForCausalLM

    from fxprune.analysis.analyser import analyse
    from fxprune.checkpoint import is_fxprune_checkpoint, save_pruned
    from fxprune.models.zoo import random_uniform_plan, tiny_zoo_model
    from fxprune.surgery import prune
    m = tiny_zoo_model("falcon_h1")
    a = analyse(m)
    prune(m, random_uniform_plan(a), a, verify=False)
    out = save_pruned(m, tmp_path / "p")
    assert is_fxprune_checkpoint(out)
    r = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert torch.equal(r.get_buffer("model.layers.0.mamba.mup_vector"), m.get_buffer("model.layers.0.mamba.mup_vector"))
    ids = torch.randint(5, 128, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(r(input_ids=ids).logits, m(input_ids=ids).logits, atol=1e-6)


def test_stacked_expert_weights_are_expert_channels():
    """PhiMoE stores its experts as stacked (E, out, in) weights behind a router the analysis does
    not tag (a sparse mixer): the channel group is still expert FFN channels, kept a multiple of 8
    (transformers' grouped_mm needs 16-byte aligned rows), and the zoo contract holds."""
    from fxprune.analysis.analyser import analyse
    from fxprune.kinds import Kind
    from fxprune.models.zoo import tiny_zoo_model
    a = analyse(tiny_zoo_model("phimoe"))
    g = a.group("model.layers.0.mlp.experts")
    assert (g.kind, g.units, g.detail["multiple"], g.prunable) == (Kind.MOE_FFN, 96, 8, True)
    assert {(m.param.rsplit(".", 1)[1], m.dim) for m in g.members} == {("gate_up_proj", 1), ("down_proj", 2)}
    rec = check_family("phimoe")
    assert fully_supported(rec), rec


def test_every_recorded_reason_is_typed_and_names_a_module():
    """Issue 12 item 2 over the whole recorded zoo: every group that is not prunable says why, with
    a reason of a known type (``needs.reason_type``) that names where (``op @ module`` or a module
    or parameter path)."""
    from fxprune.analysis.needs import REASON_TYPES, names_module, reason_type
    root = Path(__file__).resolve().parents[1]
    records = json.loads((root / "bench" / "results" / "zoo.json").read_text())
    bad = []
    for fam, r in sorted(records.items()):
        for kind, k in r.get("kinds", {}).items():
            if k.get("unexplained", 0) or (k["prunable"] < k["groups"] and not k["reasons"]):
                bad.append((fam, kind, "no reason"))
            for why in k["reasons"]:
                if reason_type(why) not in REASON_TYPES or not names_module(why):
                    bad.append((fam, kind, why[:120]))
    assert not bad, bad


def test_table_states_both_counts():
    """The recorded table counts families fully supported and, strictly, with their attention
    recognised: a family with an *Attention module but no attention-head group is named as passing
    only without it."""
    from fxprune.models.zoo import attention_supported
    root = Path(__file__).resolve().parents[1]
    records = json.loads((root / "bench" / "results" / "zoo.json").read_text())
    text = render_table(records)
    full = {f for f, r in records.items() if fully_supported(r)}
    strict = {f for f, r in records.items() if attention_supported(r)}
    assert strict <= full and f"{len(full)} (" in text and f"{len(strict)} (" in text
    for f in full - strict:
        assert records[f].get("attention_modules", 1) > 0 and f in text.split("\n")[0]
    assert {"falcon", "mpnet"} <= strict and {"mamba", "fnet"} <= strict  # no attention module at all
