"""Per-layer structure of a pruned model: parameter shapes, module attributes and fxprune modules that
differ from what the stock config builds. Standalone (imports only torch): its source is copied
verbatim into ``modeling_fxprune.py`` of saved checkpoints so stock transformers can load them with
``trust_remote_code=True``.

fxprune modules (each reports ``fxprune_spec()``, rebuilt by ``apply_structure``):

* ``LowRankLinear``: ``x -> up(down(x))``, a factorised linear layer (Olica's low-rank Q/K) that keeps
  the output width;
* ``PaddedOutLinear`` / ``SlicedInLinear``: an ``nn.Linear`` whose output (input) is ``groups`` blocks
  of ``width`` channels, zero-padded to (read from the first ``width`` of) ``head_dim`` channels per
  block: value/output projections whose value head width is narrower than the q/k head width, inside
  an unchanged attention module (the attention scale stays ``1/sqrt(head_dim)``);
* a *linear calibration* (``LinearCalibration``) inserted beside a module: the module's class is
  swapped for a subclass whose output is ``module(x) + lincal(x)`` (Olica's low-rank residual fit).
"""
import torch
import torch.nn.functional as F
from torch import nn


class LowRankLinear(nn.Module):
    """``y = up(down(x))``: ``down`` (rank x in, no bias), ``up`` (out x rank, with the original bias)."""

    def __init__(self, in_features, rank, out_features, bias=True):
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x):
        return self.up(self.down(x))

    def fxprune_spec(self):
        return {"type": "low_rank_linear", "in_features": self.in_features, "rank": self.rank,
                "out_features": self.out_features, "bias": self.up.bias is not None}


class PaddedOutLinear(nn.Linear):
    """A linear layer producing ``groups`` blocks of ``out_features // groups`` channels, each padded
    with zeros to ``head_dim`` (the kept value channels of every KV head, first in the block)."""

    groups = 1
    head_dim = 0

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        y = y.unflatten(-1, (self.groups, self.out_features // self.groups))
        return F.pad(y, (0, self.head_dim - y.shape[-1])).flatten(-2)

    def fxprune_spec(self):
        return {"type": "padded_out_linear", "groups": self.groups, "head_dim": self.head_dim}


class SlicedInLinear(nn.Linear):
    """A linear layer reading ``groups`` blocks of ``head_dim`` channels, of which only the first
    ``in_features // groups`` of each block (the kept value channels) are used."""

    groups = 1
    head_dim = 0

    def forward(self, x):
        x = x.unflatten(-1, (self.groups, self.head_dim))[..., : self.in_features // self.groups]
        return F.linear(x.flatten(-2), self.weight, self.bias)

    def fxprune_spec(self):
        return {"type": "sliced_in_linear", "groups": self.groups, "head_dim": self.head_dim}


class LinearCalibration(nn.Module):
    """``x -> up(down(x))`` with no bias: the low-rank linear fit of a module's pruning residual."""

    def __init__(self, features, rank):
        super().__init__()
        self.features, self.rank = features, rank
        self.down = nn.Linear(features, rank, bias=False)
        self.up = nn.Linear(rank, features, bias=False)

    def forward(self, x):
        return self.up(self.down(x))


_CALIBRATED = {}


def calibrated_class(base):
    """The subclass of ``base`` whose output is ``base.forward(x) + self.lincal(x)``."""
    if getattr(base, "_fxprune_calibrated", False):
        return base
    if base not in _CALIBRATED:
        def forward(self, x, *args, **kwargs):
            return base.forward(self, x, *args, **kwargs) + self.lincal(x)

        def fxprune_spec(self):
            return {"type": "linear_calibration", "features": self.lincal.features, "rank": self.lincal.rank}

        _CALIBRATED[base] = type("Calibrated" + base.__name__, (base,),
                                 {"forward": forward, "fxprune_spec": fxprune_spec, "_fxprune_calibrated": True})
    return _CALIBRATED[base]


def add_linear_calibration(module, features, rank):
    """Insert an (uninitialised) ``LinearCalibration`` beside ``module`` (in place); returns it."""
    ref = next(module.parameters(), None)
    lincal = LinearCalibration(features, rank)
    if ref is not None:
        lincal = lincal.to(device=ref.device, dtype=ref.dtype)
    module.__class__ = calibrated_class(type(module))
    module.lincal = lincal
    return lincal


def _as_linear_subclass(mod, cls, spec):
    mod.__class__ = cls
    mod.groups, mod.head_dim = int(spec["groups"]), int(spec["head_dim"])
    return mod


def build_module(parent, name, spec):
    """Replace (or convert) ``parent.<name>`` as ``spec`` (a ``fxprune_spec()``) says."""
    old = getattr(parent, name)
    kind = spec["type"]
    if kind == "low_rank_linear":
        ref = next(old.parameters())
        new = LowRankLinear(spec["in_features"], spec["rank"], spec["out_features"], spec["bias"])
        setattr(parent, name, new.to(device=ref.device, dtype=ref.dtype))
    elif kind == "padded_out_linear":
        _as_linear_subclass(old, PaddedOutLinear, spec)
    elif kind == "sliced_in_linear":
        _as_linear_subclass(old, SlicedInLinear, spec)
    elif kind == "linear_calibration":
        add_linear_calibration(old, spec["features"], spec["rank"])
    else:
        raise ValueError(f"unknown fxprune module type {kind!r} for {name}")


def module_specs(model):
    """``{module path: spec}`` of every fxprune module in ``model``."""
    return {name: m.fxprune_spec() for name, m in model.named_modules() if hasattr(m, "fxprune_spec")}


def apply_modules(model, specs):
    for path, spec in sorted(specs.items(), key=lambda kv: kv[0].count(".")):
        parent_name, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        build_module(parent, attr, spec)
    return model


def apply_structure(model, structure):
    """Rebuild fxprune modules, resize/add parameters to the recorded shapes and set recorded module
    attributes (in place).

    ``structure = {"modules": {path: spec}, "params": {name: shape}, "buffers": {name: shape},
    "attrs": {module path: {attr: value}}}``. Values are left uninitialised: a state dict is loaded
    afterwards."""
    apply_modules(model, structure.get("modules", {}))
    for name, shape in structure.get("params", {}).items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        old = getattr(mod, attr, None)
        ref = old if isinstance(old, torch.Tensor) else next(model.parameters())
        new = nn.Parameter(torch.empty(tuple(shape), dtype=ref.dtype, device=ref.device),
                           requires_grad=getattr(old, "requires_grad", True))
        if attr in mod._parameters:
            mod._parameters[attr] = new
        else:
            if hasattr(mod, attr):
                delattr(mod, attr)
            mod.register_parameter(attr, new)
    for name, shape in structure.get("buffers", {}).items():  # persistent buffers: resized in place
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name) if mod_name else model
        old = mod._buffers.get(attr)
        if old is None:
            raise ValueError(f"recorded buffer {name} is not a buffer of {type(mod).__name__}")
        mod._buffers[attr] = torch.empty(tuple(shape), dtype=old.dtype, device=old.device)
    for mod_name, attrs in structure.get("attrs", {}).items():
        mod = model.get_submodule(mod_name) if mod_name else model
        for k, v in attrs.items():
            setattr(mod, k, tuple(v) if isinstance(v, list) else v)
    return model
