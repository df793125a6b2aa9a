"""Statistics observers: hooks that accumulate per-layer sums from calibration data.

A pass asks for exactly the statistics it needs with a ``StatsRequest`` (module qualified name →
set of ``Stat``). A ``StatsCollector`` attaches one ``Observer`` per requested module, the caller
runs data through the model (setting the token mask of each batch first), and ``result()`` returns
an immutable ``Statistics`` mapping (module name → ``ModuleStats``).

Invariants
- Observers keep running *sums* only (Gram ``XᵀX``, ``Σx``, ``Σx²``, ``Σy²``, head Gram, token count);
  activations are never stored beyond the batch being observed.
- Tokens where the mask is False (padding, and the first token of each window when
  ``exclude_first_token``) contribute nothing to any sum or count.
- All sums are additive over batches and over data-parallel ranks: ``state()`` exposes them as
  a flat dict of tensors that a distributed engine sums (all-reduce) before ``result()``.

Per-head output Gram (attention): for an ``o_proj``-like consumer with input ``x = [x_1 … x_H]``
(head h's attention output in columns ``h·d:(h+1)·d``) and weight ``W_o``, the head contribution is
``o_h = x_h · W_o[:, h·d:(h+1)·d]ᵀ`` and ``C[h, h'] = Σ_t ⟨o_{t,h}, o_{t,h'}⟩`` (H × H).
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Iterator

import torch

from ..errors import DataError


class Stat(enum.Enum):
    """One kind of statistic an observer can accumulate for a module."""

    INPUT_GRAM = "input_gram"        # XᵀX over tokens, [d_in, d_in]
    INPUT_SUM = "input_sum"          # Σ_t x_t, [d_in] (with the token count)
    INPUT_SQ = "input_sq"            # Σ_t x_t², [d_in] → per-channel second moment / variance
    OUTPUT_SQ = "output_sq"          # Σ_t y_t², [d_out] (output second moments)
    HEAD_GRAM = "head_gram"          # per-head output-contribution Gram, [H, H]
    ROUTED = "routed"                # router modules: times each expert was chosen, [E] (or [8, E]: top-k
                                     # of the logits for k = 1..8 when the router returns logits only)


class Accumulation(enum.Enum):
    """How Gram-type sums are accumulated.

    FP64: inputs cast to float64 before the product (exact reference). MIXED: each batch's product in
    the activation dtype, added to a float64 running sum (SparseGPT-style "fp32 with care", ~2× faster
    on CPU). FP32: everything in float32.
    """

    FP64 = "fp64"
    MIXED = "mixed"
    FP32 = "fp32"


@dataclass(frozen=True)
class HeadLayout:
    """Head layout of an ``o_proj``-like consumer: its input is ``num_heads`` blocks of ``head_dim``."""

    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class StatsRequest:
    """Which statistics to gather for which modules (qualified names in the model).

    ``heads`` must give a ``HeadLayout`` for every module that asks for ``Stat.HEAD_GRAM``.
    """

    modules: Mapping[str, frozenset[Stat]]
    heads: Mapping[str, HeadLayout] = field(default_factory=dict)
    accumulation: Accumulation = Accumulation.FP64
    exclude_first_token: bool = False

    def __post_init__(self):
        object.__setattr__(self, "modules", MappingProxyType({k: frozenset(v) for k, v in self.modules.items()}))
        object.__setattr__(self, "heads", MappingProxyType(dict(self.heads)))
        for name, stats in self.modules.items():
            if Stat.HEAD_GRAM in stats and name not in self.heads:
                raise ValueError(f"StatsRequest: {name!r} asks for HEAD_GRAM but no HeadLayout is given")

    @classmethod
    def for_modules(cls, names: Iterable[str], stats: Iterable[Stat], **kw) -> "StatsRequest":
        stats = frozenset(stats)
        return cls({n: stats for n in names}, **kw)

    def merged(self, other: "StatsRequest") -> "StatsRequest":
        """The union of two requests (same accumulation and token options)."""
        mods = {k: set(v) for k, v in self.modules.items()}
        for k, v in other.modules.items():
            mods.setdefault(k, set()).update(v)
        return StatsRequest(mods, {**self.heads, **other.heads}, self.accumulation, self.exclude_first_token)


@dataclass(frozen=True)
class ModuleStats:
    """Accumulated sums of one module. ``count``: tokens seen at the input (after masking)."""

    count: int
    gram: torch.Tensor | None = None
    input_sum: torch.Tensor | None = None
    input_sq: torch.Tensor | None = None
    output_sq: torch.Tensor | None = None
    head_gram: torch.Tensor | None = None
    routed: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.input_sum / self.count

    @property
    def second_moment(self) -> torch.Tensor:
        """Per-channel E[x²]: from ``input_sq`` or, failing that, ``diag(gram)``."""
        sq = self.input_sq if self.input_sq is not None else torch.diagonal(self.gram)
        return sq / self.count

    @property
    def variance(self) -> torch.Tensor:
        """Per-channel population variance E[x²] − E[x]²."""
        return self.second_moment - self.mean ** 2

    @property
    def output_second_moment(self) -> torch.Tensor:
        return self.output_sq / self.count


class Statistics(Mapping):
    """Mapping: module qualified name → ``ModuleStats``; read-only except ``release``."""

    def __init__(self, items: Mapping[str, ModuleStats]):
        self._items = dict(items)

    def __getitem__(self, key: str) -> ModuleStats:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Statistics({sorted(self._items)})"

    def merged(self, other: "Statistics") -> "Statistics":
        return Statistics({**self._items, **other._items})

    def release(self, key: str) -> None:
        """Drop ``key``'s statistics (their memory goes once nothing else holds it). Only the block's
        last op that reads statistics may call it (``BlockContext.owns_stats``)."""
        self._items.pop(key, None)


def gram(x: torch.Tensor, min_blocked: int = 1024, blocks: int = 4) -> torch.Tensor:
    """``xᵀx`` for ``x`` [N, d]. For wide ``x`` only the upper block triangle is multiplied and mirrored
    (10 of 16 block products for 4 blocks: ~30% less CPU time than one GEMM at d = 1536)."""
    d = x.shape[1]
    if d < min_blocked:
        return x.T @ x
    out = x.new_empty(d, d)
    edges = [round(i * d / blocks) for i in range(blocks + 1)]
    for i in range(blocks):
        a, b = edges[i], edges[i + 1]
        xi = x[:, a:b]
        for j in range(i, blocks):
            c, e = edges[j], edges[j + 1]
            g = xi.T @ x[:, c:e]
            out[a:b, c:e] = g
            if i != j:
                out[c:e, a:b] = g.T
    return out


class _MaskSource:
    """What all observers of a collector share while a batch runs: its token mask, and the sums
    already computed for an input tensor (q/k/v and gate/up read the same tensor: its Gram is
    computed once per batch, not once per module), and the running sums those batch sums went into:
    observers whose running sum is the same tensor and who add the same batch value share the result,
    so q/k/v (and gate/up) hold ONE running Gram between them, not one each. Values are the same bits
    as with one sum per observer (the same additions in the same order)."""

    def __init__(self):
        self.mask: torch.Tensor | None = None
        self.cache: dict = {}
        self.added: dict = {}
        self.observers: list["Observer"] = []

    def new_batch(self, mask: torch.Tensor | None) -> None:
        self.mask = mask
        self.cache = {}
        self.added = {}

    def accumulate(self, obs: "Observer", key: str, value: torch.Tensor) -> None:
        """``obs.sums[key] += value``, shared: when another observer already added this very ``value``
        (a cached batch sum) to this very running sum in this batch, ``obs`` takes that result. A running
        sum held by several observers is never changed in place (one of them may see another input
        later): the sum is then a new tensor; one held by ``obs`` alone is added to in place."""
        prior = obs.sums.get(key)
        ident = (key, id(value), None if prior is None else id(prior))
        hit = self.added.get(ident)
        if hit is not None:
            obs.sums[key] = hit[2]
            return
        if prior is None:
            v = value.to(obs._acc_dtype())
            new = v.clone() if v is value else v
        elif sum(o.sums.get(key) is prior for o in self.observers) > 1:
            new = prior + value  # fp32 batch sums into an fp64 sum: promoted exactly, no fp64 copy of the batch sum
        else:
            new = prior.add_(value)
        self.added[ident] = (value, prior, new)  # holding value and prior keeps their ids from being reused
        obs.sums[key] = new

    def shared(self, x: torch.Tensor, key: str, acc: "Accumulation", compute: Callable[[], torch.Tensor]):
        """``compute()``, or the value an observer already computed for the same tensor ``x``."""
        ident = (id(x), x.data_ptr(), x._version, tuple(x.shape), x.dtype, acc, key)
        hit = self.cache.get(ident)
        if hit is None:
            hit = self.cache[ident] = (x, compute())  # holding x keeps its id from being reused
        return hit[1]


def _select_tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``x`` (flattened to [N, d]) whose token mask is True."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat
    if mask.numel() != flat.shape[0]:
        raise DataError(f"token mask of shape {tuple(mask.shape)} does not match activations of shape "
                        f"{tuple(x.shape)}")
    return flat[mask.reshape(-1).to(flat.device)]


class Observer:
    """Accumulates the requested sums of one module from forward (pre-)hooks."""

    def __init__(self, name: str, stats: frozenset[Stat], request: StatsRequest, masks: _MaskSource):
        self.name = name
        self.stats = stats
        self.layout = request.heads.get(name)
        self.acc = request.accumulation
        self.masks = masks
        self.sums: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._module: torch.nn.Module | None = None

    # ---- lifecycle
    def attach(self, module: torch.nn.Module, source=None) -> None:
        """Observe ``module``; ``source=(module, fn)``: the module's forward never runs (its parent reads
        its weight), so its input is ``fn(output of the source module)`` (``models.runtime``)."""
        self._module = module
        if source is not None:
            src, fn = source
            if Stat.OUTPUT_SQ in self.stats or Stat.HEAD_GRAM in self.stats:
                raise DataError(f"observer on {self.name!r}: only input statistics can be derived from "
                                f"another module's output")
            self._handles.append(src.register_forward_hook(lambda m, a, out: self._pre_hook(module, (fn(out),))))
            return
        self._handles.append(module.register_forward_pre_hook(self._pre_hook))
        if Stat.OUTPUT_SQ in self.stats or Stat.ROUTED in self.stats:
            self._handles.append(module.register_forward_hook(self._post_hook))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._module = None

    # ---- accumulation
    def _acc_dtype(self) -> torch.dtype:
        return torch.float32 if self.acc is Accumulation.FP32 else torch.float64

    def _add(self, key: str, value: torch.Tensor) -> None:
        value = value.to(self._acc_dtype())
        if key in self.sums:
            self.sums[key] += value
        else:
            self.sums[key] = value.clone()

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() if self.acc is Accumulation.FP64 else x.float()

    @torch.no_grad()
    def _pre_hook(self, module, args):
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor):
            raise DataError(f"observer on {self.name!r}: first input is not a tensor")
        share = self.masks.shared
        xs = share(x, "tokens", self.acc, lambda: self._cast(_select_tokens(x, self.masks.mask)))
        self._add("count", torch.tensor(float(xs.shape[0])))
        add = self.masks.accumulate  # one running sum for observers of the same input (see _MaskSource)
        if Stat.INPUT_GRAM in self.stats:
            add(self, "gram", share(x, "gram", self.acc, lambda: gram(xs)))
        if Stat.INPUT_SUM in self.stats:
            add(self, "input_sum", share(x, "sum", self.acc, lambda: xs.sum(0)))
        if Stat.INPUT_SQ in self.stats:
            add(self, "input_sq", share(x, "sq", self.acc, lambda: (xs * xs).sum(0)))
        if Stat.HEAD_GRAM in self.stats:
            self._add("head_gram", self._head_gram(module, xs))

    def _head_gram(self, module, xs: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        h, d = self.layout.num_heads, self.layout.head_dim
        w = self._cast(module.weight)  # [d_out, h·d]
        if w.shape[1] != h * d:
            raise DataError(f"observer on {self.name!r}: weight has {w.shape[1]} input columns, "
                            f"head layout says {h}×{d}")
        wh = w.view(w.shape[0], h, d)
        out = torch.zeros(h, h, dtype=xs.dtype)
        for i in range(0, xs.shape[0], chunk):
            o = torch.einsum("nhd,ehd->nhe", xs[i:i + chunk].reshape(-1, h, d), wh)  # per-head contributions
            out += torch.einsum("nhe,nge->hg", o, o)
        return out

    @torch.no_grad()
    def _post_hook(self, module, args, output):
        if Stat.ROUTED in self.stats:
            self._routed(module, output)
        if Stat.OUTPUT_SQ not in self.stats:
            return
        y = output[0] if isinstance(output, tuple) else output
        ys = self._cast(_select_tokens(y, self.masks.mask))
        self._add("output_sq", (ys * ys).sum(0))

    def _routed(self, module, output) -> None:
        """Count expert choices: the router's integer output (transformers routers return
        ``(logits, weights, indices)``), or the top-k of its logits for every k <= 8."""
        outs = output if isinstance(output, (tuple, list)) else (output,)
        idx = [o for o in outs if isinstance(o, torch.Tensor) and not o.is_floating_point()]
        w = getattr(module, "weight", None)
        n = int(w.shape[0]) if isinstance(w, torch.Tensor) else None
        if idx and n:
            chosen = _select_tokens(idx[-1], self.masks.mask).reshape(-1).long()
            self._add("routed", torch.bincount(chosen, minlength=n)[:n].double())
        elif outs and isinstance(outs[0], torch.Tensor) and outs[0].is_floating_point():
            logits = _select_tokens(outs[0], self.masks.mask)
            e = logits.shape[-1]
            ranks = torch.argsort(logits, dim=-1, descending=True)[:, :8]
            counts = torch.zeros(8, e, dtype=torch.float64)
            for k in range(ranks.shape[1]):
                counts[k:] += torch.bincount(ranks[:, k], minlength=e)[:e].double()
            self._add("routed", counts)

    def result(self) -> ModuleStats:
        if "count" not in self.sums:
            raise DataError(f"observer on {self.name!r} saw no call of the module: the model reads its weight "
                            "directly (e.g. Mamba dt_proj inside the selective scan) or no data was run")
        count = int(round(float(self.sums.get("count", torch.tensor(0.0)))))
        return ModuleStats(count=count, gram=self.sums.get("gram"), input_sum=self.sums.get("input_sum"),
                           input_sq=self.sums.get("input_sq"), output_sq=self.sums.get("output_sq"),
                           head_gram=self.sums.get("head_gram"), routed=self.sums.get("routed"))


class StatsCollector:
    """Attach observers for ``request`` to ``root``'s submodules; use as a context manager.

    ``names`` restricts attachment to a subset of the requested modules (the layer-wise runner attaches
    one block at a time); ``prefix`` is prepended to a name to look it up when ``root`` is a submodule.
    """

    def __init__(self, root: torch.nn.Module, request: StatsRequest, names: Iterable[str] | None = None,
                 prefix: str = ""):
        self.root, self.request, self.prefix = root, request, prefix
        self.masks = _MaskSource()
        wanted = list(request.modules) if names is None else list(names)
        self.observers = {n: Observer(n, request.modules[n], request, self.masks) for n in wanted}

    def __enter__(self) -> "StatsCollector":
        from ..models.runtime import derived_inputs
        derived = derived_inputs(self.root)
        self.masks.observers = list(self.observers.values())  # until __exit__ (a cycle would delay freeing the sums)
        for name, obs in self.observers.items():
            if self.prefix and name == self.prefix.rstrip("."):
                local = ""
            else:
                local = name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name
            try:
                module = self.root.get_submodule(local)
            except AttributeError as e:
                raise DataError(f"statistics requested for {name!r}, which is not a module of "
                                f"{type(self.root).__name__}") from e
            obs.attach(module, derived.get(module))
        return self

    def __exit__(self, *exc) -> None:
        for obs in self.observers.values():
            obs.detach()
        self.masks.new_batch(None)  # the last batch's cached sums and superseded running sums go
        self.masks.observers = []

    def set_token_mask(self, attention_mask: torch.Tensor | None, batch_shape: tuple[int, int] | None = None) -> None:
        """Set the mask of the next batch: True = token counts. Applies ``exclude_first_token``."""
        mask = attention_mask
        if mask is None and self.request.exclude_first_token:
            if batch_shape is None:
                raise ValueError("exclude_first_token needs attention_mask or batch_shape")
            mask = torch.ones(batch_shape, dtype=torch.bool)
        if mask is not None:
            mask = mask.bool().clone()
            if self.request.exclude_first_token:
                first = mask.int().argmax(dim=1)  # first real token of each row (left padding allowed)
                mask[torch.arange(mask.shape[0]), first] = False
        self.masks.new_batch(mask)

    def state(self) -> dict[str, torch.Tensor]:
        """All running sums, keyed ``<module>/<sum>``, for a data-parallel all-reduce."""
        return {f"{n}/{k}": v for n, obs in self.observers.items() for k, v in obs.sums.items()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for key, value in state.items():
            n, k = key.rsplit("/", 1)
            self.observers[n].sums[k] = value

    def reduce(self, all_reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace every sum by ``all_reduce(sum)`` (keys in a fixed order on every rank)."""
        state = self.state()
        done: dict = {}  # a running sum shared by several observers stays shared (one reduced tensor)
        out = {}
        for k in sorted(state):  # one all_reduce per key on every rank, whatever is shared
            r = all_reduce(state[k])
            out[k] = done.setdefault(id(state[k]), r)
        self.load_state(out)

    def result(self) -> Statistics:
        return Statistics({n: obs.result() for n, obs in self.observers.items()})
