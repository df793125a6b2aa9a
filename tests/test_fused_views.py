"""A fused projection viewed into [pieces, head_dim] and then cut by a slice and constant indices
(Falcon's multi-query ``query_key_value``: ``view(b, s, heads + 2, d)``, ``[..., :-2, :]``,
``[..., [-2], :]``, ``[..., [-1], :]``): the view's outer dim is segmented, the flat projection rows
segment by segment with it, and the q heads are a prunable group."""
import copy

import torch
from torch import nn

from fxprune.analysis.analyser import analyse
from fxprune.analysis.groups import Kind
from fxprune.surgery import apply_mask, prune


class FusedMQA(nn.Module):
    def __init__(self, hidden=32, heads=4, head_dim=8, first=None):
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(hidden, (heads + 2) * head_dim)
        self.dense = nn.Linear(heads * head_dim, hidden)
        self.first = first  # positions of k given from the start (None: from the end, as Falcon)

    def forward(self, x):
        b, s, _ = x.shape
        f = self.qkv(x).view(b, s, self.num_heads + 2, self.head_dim)
        if self.first is None:
            q, k, v = f[..., :-2, :], f[..., [-2], :], f[..., [-1], :]
        else:
            q, k, v = f[..., 2:, :], f[..., [self.first], :], f[..., [1 - self.first], :]
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.dense(o.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        self.attn = FusedMQA(**kw)
        self.head = nn.Linear(32, 50)

    def forward(self, input_ids):
        h = self.emb(input_ids)
        return self.head(h + self.attn(h))


def _ids():
    return torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def test_end_relative_constant_index_segments_the_fused_view():
    model = Net()
    a = analyse(model)
    heads = [g for g in a.groups if g.kind in (Kind.ATTN_Q_PER_KV, Kind.ATTN_HEADS)]
    assert len(heads) == 1 and heads[0].prunable and heads[0].units == 4, [(g.id, g.kind, g.units) for g in a.groups]
    rows = {(m.param, m.offset, m.size) for m in heads[0].members if m.param == "attn.qkv.weight"}
    assert rows == {("attn.qkv.weight", 0, 32)}  # the q rows only, not k/v's 16
    plan = {heads[0].id: [0, 2, 3]}
    ids = _ids()
    masked = apply_mask(copy.deepcopy(model), a, plan)(ids)
    prune(model, plan, a, verify=True)
    assert model.attn.num_heads == 3 and model.attn.qkv.weight.shape == (5 * 8, 32)
    out = model(ids)
    assert (out - masked).abs().max() <= 1e-5 * masked.abs().max()


def test_positions_from_the_start_after_a_cut_piece_are_not_a_piece():
    """``f[..., [1], :]`` next to the slice ``[2:]``: 1 is not counted from the end nor 0, so it would
    move if an earlier piece shrank: the rule does not treat it as a cut (heads stay unprunable)."""
    a = analyse(Net(first=1))
    heads = [g for g in a.groups if g.kind in (Kind.ATTN_Q_PER_KV, Kind.ATTN_HEADS) and g.prunable]
    assert not heads
