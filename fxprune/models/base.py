"""Adapter base class and the attribute sync shared by standard torch/transformers layers."""
from __future__ import annotations

import copy

from torch import nn

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
    elif isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) and w is not None:
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

def _width_value(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, (tuple, list)) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)

def attribute_diff(module: nn.Module, fresh: nn.Module) -> dict:
    """Int (and int tuple) instance attributes of ``module`` that differ from ``fresh`` (the module
    its stock config builds): what a checkpoint must record besides parameter shapes."""
    out = {}
    fv = vars(fresh)
    for k, v in vars(module).items():
        if k.startswith("_") or k == "training" or not _width_value(v) or k not in fv:
            continue
        if fv[k] != v and _width_value(fv[k]):
            out[k] = list(v) if isinstance(v, tuple) else v
    return out

def stock_describes(model: nn.Module) -> bool:
    """True if ``type(model)(model.config)`` builds every parameter shape and width attribute of
    ``model`` (built on the meta device)."""
    import copy
    import torch
    from ..structure import module_specs
    if module_specs(model):
        return False
    try:
        with torch.device("meta"):
            fresh = type(model)(copy.deepcopy(model.config))
    except Exception:
        return False
    fp = dict(fresh.named_parameters(remove_duplicate=False))
    mp = dict(model.named_parameters(remove_duplicate=False))
    if set(fp) != set(mp) or any(tuple(fp[n].shape) != tuple(p.shape) for n, p in mp.items()):
        return False
    fm = dict(fresh.named_modules())
    return all(not attribute_diff(m, fm[n]) for n, m in model.named_modules() if n in fm)

def _optional_fields(config, model):
    """(field, value) for config fields left None whose name is also an int module attribute with
    one value across the model (e.g. ``head_dim`` after heads were removed: the derived
    ``hidden_size // num_attention_heads`` no longer gives it)."""
    seen = {}
    for _, mod in model.named_modules():
        for k, v in vars(mod).items():
            if isinstance(v, int) and not isinstance(v, bool):
                seen.setdefault(k, set()).add(v)
    from ..analysis.widths import missing_config_reads
    names = {k for k, v in vars(config).items() if v is None and not k.startswith("_")}
    names |= missing_config_reads(model)
    for k in sorted(names):
        if len(seen.get(k, ())) == 1:
            yield k, next(iter(seen[k]))

def patch_config_generic(config, model) -> bool:
    """Solve the config fields that make the stock config build ``model`` (``widths.solve_config``:
    the construction is traced, so which field gives which shape is read, not hand-written), write
    them, and check by building the model from the patched config. An unset optional field the
    constructor reads (``head_dim`` after heads were removed) may be added. Reverts and returns
    False when no uniform solution exists (per-layer widths: the checkpoint records structure)."""
    from ..analysis.widths import solve_config
    if config is not getattr(model, "config", None):
        return False
    undo = []

    def put(obj, key, value):
        undo.append((obj, key, obj.__dict__.get(key, _MISSING)))
        obj.__dict__[key] = value

    def revert():
        for obj, key, old in reversed(undo):
            if old is _MISSING:
                obj.__dict__.pop(key, None)
            else:
                obj.__dict__[key] = old
        undo.clear()

    new = solve_config(model)
    if new is None:
        for key, value in _optional_fields(config, model):
            put(config, key, value)
            new = solve_config(model)
            if new is not None:
                break
            revert()
    if new is None:
        return False
    for (name, index), v in new.items():
        obj, key = config, name
        if "." in name:
            sub, key = name.split(".", 1)
            obj = getattr(config, sub)
        old = getattr(obj, key)
        if index is None:
            put(obj, key, v)
        else:
            seq = list(old)
            seq[index] = v
            put(obj, key, type(old)(seq))
    if stock_describes(model):
        return True
    revert()
    return False

_MISSING = object()

class FamilyAdapter:
    """Base adapter: everything generic. A family adapter overrides ``sync_module`` and/or
    ``patch_config`` only for what the generic code cannot infer, and says what in its docstring.

    * attributes that carry widths are re-derived by surgery from the traced forward
      (``analysis/widths.py``); ``sync_module`` may add to that;
    * ``patch_config`` solves the stock config fields from the traced construction."""

    name = "generic"
    model_types: tuple = ()

    def sync(self, module: nn.Module) -> dict:
        attrs = sync_standard_module(module)
        attrs.update(self.sync_module(module))
        return attrs

    def sync_module(self, module: nn.Module) -> dict:
        return {}

    def patch_config(self, config, model) -> bool:
        """Write uniform widths into ``config``; True if the stock config now describes ``model``."""
        return patch_config_generic(config, model)

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
    """Any nn.Module or transformers model: nothing family-specific."""
