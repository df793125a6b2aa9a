"""Prune-group kinds: the vocabulary shared by the analysis, the model adapters and the passes.

A neutral module (imports nothing from fxprune) so that ``analysis/`` and ``models/`` never import
each other. Kinds are strings, so they print and serialise as themselves.
"""
from __future__ import annotations


class Kind:
    """Group kinds."""

    ATTN_HEADS = "attn_heads"            # MHA heads: q, k, v rows + o columns of a head
    ATTN_KV_GROUPS = "attn_kv_groups"    # GQA: one kv head with its n_rep q heads
    ATTN_Q_PER_KV = "attn_q_per_kv"      # GQA/MQA: the same q head removed in every kv group
    FFN = "ffn_channels"                 # GLU (gate, up rows; down cols) or plain (fc1 rows; fc2 cols)
    SSM = "ssm_channels"                 # Mamba d_inner channels (Mamba-2: channels inside every head)
    SSM_HEADS = "ssm_heads"              # Mamba-2 heads: in_proj rows of x/z/dt, conv, A_log, D, dt_bias, norm, out_proj cols
    MOE_EXPERTS = "moe_experts"          # whole experts: router rows + the expert's weights
    MOE_FFN = "moe_ffn_channels"         # FFN channels inside the experts of one MoE layer
    QK_CHANNELS = "attn_qk_channels"     # q/k channels within heads (not offered: head size fixed)
    V_CHANNELS = "attn_v_channels"       # v/o channels within heads (Olica's V/O decomposition)
    LOW_RANK = "low_rank"                # the rank of a factorised linear (x -> up(down(x))), reported only
    RESIDUAL = "residual"                # the hidden stream: not depth-2, reported only
    OTHER = "other"


ATTENTION_KINDS = (Kind.ATTN_HEADS, Kind.ATTN_KV_GROUPS, Kind.ATTN_Q_PER_KV)
CHANNEL_KINDS = (Kind.FFN, Kind.SSM, Kind.MOE_FFN)
DEPTH2_KINDS = frozenset({*ATTENTION_KINDS, Kind.FFN, Kind.SSM, Kind.SSM_HEADS, Kind.MOE_EXPERTS, Kind.MOE_FFN,
                          Kind.V_CHANNELS})

# kind -> the recipe family that selects it (``kinds: [attention, ffn, ssm, experts]``)
FAMILY = {**{k: "attention" for k in ATTENTION_KINDS}, Kind.FFN: "ffn", Kind.MOE_FFN: "ffn",
          Kind.SSM: "ssm", Kind.SSM_HEADS: "ssm", Kind.MOE_EXPERTS: "experts"}
