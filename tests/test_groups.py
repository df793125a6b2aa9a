"""Groups found on every tiny family match hand-written expectations (no per-model analysis code)."""
import pytest

from fxprune.analysis.analyser import analyse
from fxprune.analysis.groups import Kind
from fxprune.models.tiny import tiny_model


def members(g):
    return {(m.param, m.dim, m.role) for m in g.members}


@pytest.fixture(scope="module")
def analyses():
    return {f: analyse(tiny_model(f)) for f in ("llama", "qwen2", "mistral", "gpt2", "opt", "bert", "mamba")}


def test_llama_gqa_groups(analyses):
    a = analyses["llama"]  # 4 q heads, 2 kv heads, head_dim 16, ffn 96, 2 layers
    assert len(a.prunable()) == 8  # per layer: kv groups, q per kv, value channels, FFN
    v = a.group("model.layers.0.self_attn:v_channels")
    assert (v.kind, v.units) == (Kind.V_CHANNELS, 16)
    assert members(v) == {("model.layers.0.self_attn.v_proj.weight", 0, "producer"),
                          ("model.layers.0.self_attn.o_proj.weight", 1, "consumer")}
    kv = a.group("model.layers.0.self_attn")
    assert (kv.kind, kv.units, kv.unit_size) == (Kind.ATTN_KV_GROUPS, 2, 32)
    p = "model.layers.0.self_attn."
    assert members(kv) == {(p + "q_proj.weight", 0, "producer"), (p + "k_proj.weight", 0, "producer"),
                           (p + "v_proj.weight", 0, "producer"), (p + "o_proj.weight", 1, "consumer")}
    strides = {m.param.split(".")[-2]: m.stride for m in kv.members}
    assert strides == {"q_proj": 32, "k_proj": 16, "v_proj": 16, "o_proj": 32}
    q = a.group("model.layers.0.self_attn:q_per_kv")
    assert (q.kind, q.units, q.unit_size) == (Kind.ATTN_Q_PER_KV, 2, 32)
    assert members(q) == {(p + "q_proj.weight", 0, "producer"), (p + "o_proj.weight", 1, "consumer")}
    assert {m.stride for m in q.members} == {16}
    ffn = a.group("model.layers.1.mlp")
    assert (ffn.kind, ffn.units, ffn.unit_size, ffn.detail["glu"]) == (Kind.FFN, 96, 1, True)
    p = "model.layers.1.mlp."
    assert members(ffn) == {(p + "gate_proj.weight", 0, "producer"), (p + "up_proj.weight", 0, "producer"),
                            (p + "down_proj.weight", 1, "consumer")}
    assert ffn.params_per_unit == 3 * 64


def test_rope_blocks_head_channels_not_heads(analyses):
    a = analyses["llama"]
    qk = [g for g in a.groups if g.kind == Kind.QK_CHANNELS]
    assert qk and all(not g.prunable for g in qk)
    assert any("inv_freq" in b for g in qk for b in g.blocked_by)


def test_residual_reported_not_offered(analyses):
    for fam, a in analyses.items():
        res = [g for g in a.groups if g.kind == Kind.RESIDUAL]
        assert len(res) == 1, fam
        assert not res[0].prunable and res[0].units == (32 if fam == "mamba" else 64)


def test_qwen2_biases_and_mqa(analyses):
    kv = analyses["qwen2"].group("model.layers.0.self_attn")  # 6 heads / 2 kv, head_dim 10
    assert kv.units == 2 and kv.unit_size == 30
    assert {m.param.split(".")[-1] for m in kv.members} == {"weight", "bias"}
    assert analyses["qwen2"].group("model.layers.0.self_attn:q_per_kv").units == 3
    # mistral: MQA (1 kv head) on the explicit matmul-softmax-matmul path
    a = analyses["mistral"]
    assert "model.layers.0.self_attn" not in a.by_id()
    assert a.group("model.layers.0.self_attn:q_per_kv").units == 4


def test_gpt2_fused_qkv_heads(analyses):
    g = analyses["gpt2"].group("transformer.h.0.attn")
    assert (g.kind, g.units, g.unit_size) == (Kind.ATTN_HEADS, 4, 16)
    p = "transformer.h.0.attn."
    assert members(g) == {(p + "c_attn.weight", 1, "producer"), (p + "c_attn.bias", 0, "producer"),
                          (p + "c_proj.weight", 0, "consumer")}
    cattn = next(m for m in g.members if m.param.endswith("c_attn.weight"))
    # unit 1 of the fused (64 -> 192) Conv1D: rows 16..31 of each of the q, k and v thirds
    assert cattn.indices(4, [1]).tolist() == [*range(16, 32), *range(80, 96), *range(144, 160)]
    ffn = analyses["gpt2"].group("transformer.h.0.mlp")
    assert ffn.units == 96 and not ffn.detail["glu"]


def test_opt_and_bert(analyses):
    g = analyses["opt"].group("model.decoder.layers.0.self_attn")
    assert (g.kind, g.units, len(g.members)) == (Kind.ATTN_HEADS, 4, 7)  # q,k,v w+b, out_proj w
    f = analyses["opt"].group("model.decoder.layers.0")
    assert f.kind == Kind.FFN and f.units == 96
    b = analyses["bert"]
    h = b.group("bert.encoder.layer.0.attention")
    assert (h.kind, h.units) == (Kind.ATTN_HEADS, 4)
    assert {m.param for m in h.members_by_role("consumer")} == {"bert.encoder.layer.0.attention.output.dense.weight"}
    assert b.group("bert.encoder.layer.1").kind == Kind.FFN


def test_mamba_inner_channels(analyses):
    g = analyses["mamba"].group("backbone.layers.0.mixer")  # hidden 32, expand 2 -> d_inner 64
    assert (g.kind, g.units) == (Kind.SSM, 64)
    got = {(m.param.split("mixer.")[1], m.dim, m.stride) for m in g.members}
    assert got == {("in_proj.weight", 0, 1), ("conv1d.weight", 0, 1), ("conv1d.bias", 0, 1),
                   ("x_proj.weight", 1, 1), ("dt_proj.weight", 0, 1), ("dt_proj.bias", 0, 1),
                   ("A_log", 0, 1), ("D", 0, 1), ("out_proj.weight", 1, 1)}
    inp = next(m for m in g.members if m.param.endswith("in_proj.weight"))
    assert inp.indices(64, [3]).tolist() == [3, 67]  # both halves (x and z), offset by d_inner
