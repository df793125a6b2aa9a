"""Adapter base class and the attribute sync shared by standard torch/transformers layers."""
from __future__ import annotations

import copy

from torch import nn

from ..analysis.groups import Kind


def sync_standard_module(module: nn.Module) -> dict:
    """Make nn.Linear / nn.Conv1d / transformers Conv1D / LayerNorm attributes match their weights."""
    out = {}
    cls = type(module).__name__
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        out = {"in_features": w.shape[1], "out_features": w.shape[0]}
    elif isinstance(module, nn.Conv1d):
        depthwise = module.groups == module.in_channels == module.out_channels and w.shape[1] == 1
        out = {"out_channels": w.shape[0],
               "in_channels": w.shape[0] if depthwise else w.shape[1] * module.groups}
        if depthwise:
            out["groups"] = w.shape[0]
    elif cls == "Conv1D":  # transformers.pytorch_utils.Conv1D: weight (nx, nf)
        out = {"nf": w.shape[1], "nx": w.shape[0]}
    elif isinstance(module, nn.LayerNorm) and w is not None:
        out = {"normalized_shape": tuple(w.shape)}
    return set_attrs(module, out)


def sync_value_width(v: nn.Module, o: nn.Module, head_dim: int, kv_heads: int, q_heads: int) -> None:
    """Keep an attention's value/output projections consistent with their value head width.

    When the value projection ``v`` is narrower than ``kv_heads * head_dim`` (value channels removed,
    e.g. by Olica's V/O decomposition), ``v`` becomes a ``PaddedOutLinear`` (zero-pads every KV
    head's kept channels back to ``head_dim``) and ``o`` a ``SlicedInLinear`` (reads the kept
    channels of every q head): the attention module itself, its scale and its KV cache layout stay
    stock. Module classes are recorded in checkpoints by ``structure.module_specs``."""
    from ..errors import SurgeryError
    from ..structure import PaddedOutLinear, SlicedInLinear
    if v.weight.shape[0] == kv_heads * head_dim and not isinstance(v, PaddedOutLinear):
        return
    for mod, cls, groups in ((v, PaddedOutLinear, kv_heads), (o, SlicedInLinear, q_heads)):
        if not isinstance(mod, cls):
            if type(mod) is not nn.Linear:
                raise SurgeryError(f"value width change needs nn.Linear value/output projections, got "
                                   f"{type(mod).__name__}")
            mod.__class__ = cls
        mod.groups, mod.head_dim = groups, head_dim


def narrowed_values(modules) -> bool:
    """True if any module is a value projection narrower than its heads (stock configs can't say so)."""
    from ..structure import PaddedOutLinear
    return any(isinstance(m, PaddedOutLinear) for m in modules)


def set_attrs(module: nn.Module, attrs: dict) -> dict:
    """Set ``attrs`` on ``module`` and return them (what ``sync`` reports)."""
    for k, v in attrs.items():
        setattr(module, k, v)
    return attrs


def base_model(model: nn.Module) -> nn.Module:
    """The transformers base model (``model.model``, ``model.transformer``...) or ``model`` itself."""
    return getattr(model, getattr(model, "base_model_prefix", ""), model)


class FamilyAdapter:
    """Base adapter. Subclasses set ``model_types``/``supported_kinds`` and override ``sync_module``."""

    name = "generic"
    model_types: tuple = ()
    supported_kinds: frozenset = frozenset({Kind.FFN})

    def sync(self, module: nn.Module) -> dict:
        attrs = sync_standard_module(module)
        attrs.update(self.sync_module(module))
        return attrs

    def sync_module(self, module: nn.Module) -> dict:
        return {}

    def patch_config(self, config, model) -> bool:
        """Write uniform widths into ``config``; True if the stock config now describes ``model``."""
        return False

    def patch_config_checked(self, config, model) -> bool:
        """``patch_config``, undone (returns False) when transformers would refuse the patched config,
        e.g. 24 q heads with hidden size 2048 ("hidden size is not a multiple of the number of
        attention heads"): the model is then saved with the unchanged config plus recorded per-layer
        structure (explicit ``head_dim``), which loads, instead of failing at the end."""
        before = copy.deepcopy(config.__dict__)
        try:
            ok = self.patch_config(config, model)
            if ok:
                validate = getattr(config, "validate", None)
                if callable(validate):
                    validate()
                config.to_json_string()
        except Exception:  # transformers raises several kinds (ValueError, StrictDataclass...)
            ok = False
        if not ok:
            config.__dict__.clear()
            config.__dict__.update(before)
        return ok


class GenericAdapter(FamilyAdapter):
    """Any nn.Module: plain FFN-like groups between standard layers only."""
