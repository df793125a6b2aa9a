"""The structured-pruning step: remove whole units (heads, KV groups, value channels, FFN/SSM channels)
chosen by a criterion, widths allocated on the exact cost model, removed units folded into the kept
ones by a reconstructor. Recipe form::

    steps:
      - structured: {criterion: goa, reconstruction: liar, allocation: global, target: 0.2,
                     scope: decoder_linear, kinds: [ffn, ssm]}
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import RecipeError
from . import Step, dataclass_from, register_step

SCOPES = ("decoder_linear", "all")
ALLOCATIONS = ("uniform", "global", "pooled", "measured")
PROBE_PRECISIONS = ("auto", "32", "bf16")
PROBE_METRICS = ("kl", "loss")
REFIT_SCOPES = ("pruned", "stream", "all")
ATTENTION_UNITS = ("q_per_kv", "kv_groups")
ATTENTION_MODES = ("heads", "olica")
KINDS = ("attention", "ffn", "ssm", "experts")


@register_step("structured")
@dataclass(frozen=True)
class StructuredStep(Step):
    """What to prune and how.

    ``target``: fraction of parameters to remove, counted over ``scope`` (``decoder_linear``: the
    weights of the prunable groups' linear layers; ``all``: every parameter). ``kinds``: which group
    families may lose units. ``attention_unit``: for GQA models, remove q heads uniformly in every
    KV group (``q_per_kv``) or whole KV groups. ``channel_multiple``: FFN/SSM widths are rounded to a
    multiple of it. ``protect_first``/``protect_last``: blocks left whole. ``damping``: ridge of the
    reconstruction solves (``fxprune.linalg``).

    ``attention``: ``heads`` removes whole heads; ``olica`` keeps every head and instead rotates V/O
    (orthogonal decomposition, removing rotated value channels) and factorises Q/K to low rank, with
    Olica's ratio split (``olica_k``) between Q/K, V/O and the FFN (the FFN share spread ``uniform`` or
    ``global``, by ``allocation``); ``olica_qk``: ``diag`` (the paper's
    activation-weighted SVD) or ``whitened`` (SVD whitened by the input Gram: least output error).
    ``lincal_layers`` > 0 inserts a low-rank linear calibration (rank ``lincal_rank_ratio * hidden``,
    ridge ``lincal_damping``) beside the pruned FFN of that many layers, chosen by how linearly
    predictable their residual is; it composes with any criterion, reconstruction and attention mode.

    ``max_extra_removal`` (``global`` allocation): no group keeps fewer units than its ``uniform``
    width minus this fraction of its units (1 = unbounded, FLAP's allocation; OWL bounds its
    non-uniform layer ratios the same way), so pooled scores cannot empty one layer. ``global_scale``
    (``global``): standardise the logarithm of channel scores (``log``, the default) or the scores
    (``linear``: FLAP's, and fxprune's before 2026-12-02).

    ``measured`` allocation: every group's cost curve is measured on the calibration loss, the group
    alone pruned (criterion's units, reconstructor's fold) at each of ``probe_ratios`` of its units on
    the first ``probe_samples`` calibration windows (``probe_precision``: ``auto`` = bf16 where the
    hardware multiplies bf16, else fp32); the curves then share ``pooled``'s greedy. Costs one forward
    of the probe windows per group and ratio. ``probe_metric``: ``kl`` (the default: cross-entropy
    against the dense model's distributions, i.e. the increase of ``KL(dense ‖ probe)``, without the
    sampling noise of the next tokens; keeps the dense next-token probabilities of the probe windows in
    bf16) or ``loss`` (next-token NLL on the windows' own tokens).

    ``skip_first_token``: each calibration window's first token contributes to no statistic (Grams,
    sums, scores) and to no refit's sums; its attention-sink activations can dominate them
    (``methods.md`` section 2). Reconstructions that refit after removal (``goa``, ``liar_block``):
    ``refit_damping`` is the ridge of the refit towards the step-1 weights (``None``: the
    reconstructor's default, ``liar_block`` 1.0, else ``damping``). ``refit_scope`` (``liar_block``):
    ``pruned`` refits the consumers of removed units that add to their block's output; ``stream`` refits
    every linear layer of every block that writes the residual stream (``o_proj`` and ``down_proj`` of a
    pre-norm block), pruned or not, towards the dense stream at its point (``passes/ops/refit.py``).

    ``units_on``: ``dense`` chooses the units from scores on the dense stream, once, before any block
    changes; ``pruned`` keeps the allocation's widths but scores each block's units on the stream that
    the pruned blocks before it produce (the statistics its fold reads). ``allocation_samples``: the
    scores and probes that allocate the widths read only the first that many calibration windows
    (``None``: all); removal, folds and refits always read all of them."""

    @property
    def refit_ridge(self) -> float:
        """``refit_damping``, else the reconstructor's own default (``liar_block``: 1.0), else ``damping``."""
        if self.refit_damping is not None:
            return self.refit_damping
        from ..passes.reconstruct import RECONSTRUCTORS
        default = getattr(RECONSTRUCTORS[self.reconstruction], "default_refit_damping", None)
        return self.damping if default is None else default

    kind = "structured"

    criterion: str = "flap"
    reconstruction: str = "liar"
    allocation: str = "uniform"
    target: float = 0.2
    scope: str = "decoder_linear"
    kinds: tuple = ("attention", "ffn", "ssm")
    attention_unit: str = "q_per_kv"
    channel_multiple: int = 8
    protect_first: int = 0
    protect_last: int = 0
    damping: float = 0.01
    attention: str = "heads"
    olica_k: float = 3.0
    olica_qk: str = "diag"
    lincal_layers: int = 0
    lincal_rank_ratio: float = 0.03
    lincal_damping: float = 0.05
    max_extra_removal: float = 1.0
    global_scale: str = "log"
    probe_samples: int = 8
    probe_ratios: tuple = (0.125, 0.25, 0.5, 0.75)
    probe_precision: str = "auto"
    probe_metric: str = "kl"
    refit_damping: float | None = None
    skip_first_token: bool = False
    refit_scope: str = "pruned"
    units_on: str = "dense"
    allocation_samples: int | None = None

    def __post_init__(self):
        from ..passes.allocate import SCALES
        from ..passes.criteria import CRITERIA
        from ..passes.reconstruct import RECONSTRUCTORS
        kinds = self.kinds
        if isinstance(kinds, str):
            kinds = (kinds,)
        if not isinstance(kinds, (list, tuple)):
            raise RecipeError(f"field 'kinds': expected a list of {list(KINDS)}, got {kinds!r}")
        object.__setattr__(self, "kinds", tuple(kinds))
        ratios = self.probe_ratios
        if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
            ratios = (ratios,)
        if (not isinstance(ratios, (list, tuple)) or not ratios
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in ratios)):
            raise RecipeError(f"field 'probe_ratios': expected a non-empty list of numbers in (0, 1), got {ratios!r}")
        object.__setattr__(self, "probe_ratios", tuple(sorted(float(x) for x in ratios)))
        for name, typ in (("target", float), ("damping", float), ("olica_k", float), ("lincal_rank_ratio", float),
                          ("lincal_damping", float), ("max_extra_removal", float), ("channel_multiple", int),
                          ("protect_first", int), ("protect_last", int), ("lincal_layers", int),
                          ("probe_samples", int)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not float(v).is_integer()):
                raise RecipeError(f"field {name!r}: expected {'an integer' if typ is int else 'a number'}, got {v!r}")
            object.__setattr__(self, name, typ(v))
        checks = [
            ("criterion", self.criterion in CRITERIA, sorted(CRITERIA)),
            ("reconstruction", self.reconstruction in RECONSTRUCTORS, sorted(RECONSTRUCTORS)),
            ("allocation", self.allocation in ALLOCATIONS, ALLOCATIONS),
            ("scope", self.scope in SCOPES, SCOPES),
            ("attention_unit", self.attention_unit in ATTENTION_UNITS, ATTENTION_UNITS),
            ("attention", self.attention in ATTENTION_MODES, ATTENTION_MODES),
            ("olica_qk", self.olica_qk in ("diag", "whitened"), ("diag", "whitened")),
            ("global_scale", self.global_scale in SCALES, SCALES),
            ("probe_precision", self.probe_precision in PROBE_PRECISIONS, PROBE_PRECISIONS),
            ("probe_metric", self.probe_metric in PROBE_METRICS, PROBE_METRICS),
            ("kinds", set(self.kinds) <= set(KINDS) and bool(self.kinds), KINDS),
            ("refit_scope", self.refit_scope in REFIT_SCOPES, REFIT_SCOPES),
            ("units_on", self.units_on in ("dense", "pruned"), ("dense", "pruned")),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise RecipeError(f"field {name!r}: {getattr(self, name)!r} is not one of {list(allowed)}")
        if not 0.0 <= self.target < 1.0:
            raise RecipeError(f"field 'target': {self.target} must be in [0, 1)")
        if self.attention == "olica" and self.allocation not in ("uniform", "global"):
            raise RecipeError("field 'allocation': attention 'olica' splits the budget by Olica's ratios; its FFN "
                              "share is allocated 'uniform' or 'global' (set one of them)")
        if not 0 <= self.max_extra_removal <= 1:
            raise RecipeError(f"field 'max_extra_removal': {self.max_extra_removal} must be in [0, 1]")
        if self.lincal_layers < 0 or not 0 < self.lincal_rank_ratio <= 1:
            raise RecipeError("fields 'lincal_layers' must be >= 0 and 'lincal_rank_ratio' in (0, 1]")
        if self.refit_damping is not None:
            v = self.refit_damping
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise RecipeError(f"field 'refit_damping': expected a number >= 0 or null, got {v!r}")
            object.__setattr__(self, "refit_damping", float(v))
        if not isinstance(self.skip_first_token, bool):
            raise RecipeError(f"field 'skip_first_token': expected true or false, got {self.skip_first_token!r}")
        if self.allocation_samples is not None:
            v = self.allocation_samples
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RecipeError(f"field 'allocation_samples': expected an integer >= 1 or null, got {v!r}")
        if self.probe_samples < 1:
            raise RecipeError(f"field 'probe_samples': {self.probe_samples} must be >= 1")
        if self.channel_multiple < 1 or self.protect_first < 0 or self.protect_last < 0 or self.damping < 0:
            raise RecipeError("fields 'channel_multiple' must be >= 1, 'protect_first'/'protect_last'/'damping' >= 0")

    @classmethod
    def from_fields(cls, name, fields):
        return dataclass_from(cls, fields, f"step {name!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kinds"] = list(self.kinds)
        d["probe_ratios"] = list(self.probe_ratios)
        return {"structured": d}

    def planning(self, env) -> list:
        from ..passes import structured as P
        alloc = P.OlicaSplit(self) if self.attention == "olica" else P.Allocate(self)
        if self.allocation == "measured":
            from ..passes.measure_loss import MeasureLoss
            score = [MeasureLoss(self, env)]
        else:
            score = [] if self.attention == "olica" and self.allocation == "uniform" else [P.Score(self, env)]
        return [P.Analyse(), P.SelectGroups(self), *score, alloc]

    def applying(self, env) -> list:
        from ..passes import structured as P
        from ..passes.reconstruct import get_reconstructor
        layerwise = get_reconstructor(self.reconstruction).name != "none" or P.layerwise_extras(self)
        passes = [P.ReconstructBlocks(self, env) if layerwise else P.RemovePlanned()]
        if self.lincal_layers > 0:
            passes.append(P.InsertLinearCalibration(self))
        return passes + [P.Verify()]
