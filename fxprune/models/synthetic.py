"""Random-weight LLaMA checkpoints of real shapes, written to disk tensor by tensor (for memory and
time measurements: their quality means nothing).

``write_synthetic(out_dir, "7b", seed=0)`` writes ``config.json`` (a stock ``LlamaConfig``: stock
``from_pretrained`` loads the directory) and the weights as sharded safetensors with
``model.safetensors.index.json``, in ``dtype`` (default bf16). Every tensor is drawn from its own
generator seeded by ``(seed, tensor name)`` and written in row chunks (``fxprune.shards.ShardWriter``),
so the bytes depend only on the seed, the shape preset and the name, not on the shard size, and peak
memory is one chunk (``chunk_elements``), not a shard or the model: writing the 7B-shaped model holds
a few tens of MB. Linear and embedding weights are N(0, 0.02) (the config's ``initializer_range``),
norm weights are ones.

Presets (``PRESETS``): ``tiny`` (tests), ``small`` (tests of memory vs depth), ``1.1b`` (TinyLlama's
shape: 22 layers, hidden 2048, FFN 5632, 32 query / 4 KV heads, vocab 32000) and ``7b`` (LLaMA-2-7B's:
32 layers, hidden 4096, FFN 11008, 32 heads, vocab 32000). ``layers=`` overrides the depth (slices
for time-vs-depth measurements).
"""
from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..shards import ShardWriter, TensorSpec, write_index

PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "small": dict(vocab_size=1024, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512),
    "1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                 num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
}
_COMMON = dict(rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
               hidden_act="silu", initializer_range=0.02, architectures=["LlamaForCausalLM"], model_type="llama")


def synthetic_config(preset: str, layers: int | None = None, dtype: torch.dtype = torch.bfloat16):
    """The stock ``LlamaConfig`` of ``preset`` (``layers`` overrides the depth)."""
    from transformers import LlamaConfig
    if preset not in PRESETS:
        raise CheckpointError(f"unknown synthetic preset {preset!r}; known: {sorted(PRESETS)}")
    kw = {**_COMMON, **PRESETS[preset]}
    if layers is not None:
        if layers < 1:
            raise CheckpointError(f"synthetic {preset}: layers must be >= 1, got {layers}")
        kw["num_hidden_layers"] = int(layers)
    kw.pop("model_type")
    cfg = LlamaConfig(**kw)
    cfg.dtype = dtype  # transformers >= 4.56 writes "dtype" into config.json
    return cfg


def tensor_specs(config, dtype: torch.dtype = torch.bfloat16) -> list[TensorSpec]:
    """Name, dtype and shape of every tensor of the stock model ``config`` builds, in state-dict order
    (built on the meta device: nothing allocated)."""
    from transformers import LlamaForCausalLM
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return [TensorSpec(n, dtype, tuple(t.shape)) for n, t in model.state_dict().items()]


def _seed_of(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2 ** 63)


@dataclass(frozen=True)
class SyntheticInfo:
    path: Path
    preset: str
    layers: int
    params: int
    bytes: int
    shards: int


def write_synthetic(out_dir, preset: str = "tiny", *, layers: int | None = None, seed: int = 0,
                    dtype: torch.dtype = torch.bfloat16, shard_bytes: int = 2 * 2 ** 30,
                    chunk_elements: int = 1 << 22, overwrite: bool = False) -> SyntheticInfo:
    """Write the synthetic checkpoint ``preset`` to ``out_dir`` (module docstring). Refuses to write
    into an existing non-empty directory unless ``overwrite`` and it holds a synthetic checkpoint
    (``fxprune_synthetic`` in its config)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        cfg_file = out / "config.json"
        ours = cfg_file.is_file() and "fxprune_synthetic" in json.loads(cfg_file.read_text())
        if not (overwrite and ours):
            raise CheckpointError(f"{out}: exists and is not empty"
                                  + ("" if ours else " (and was not written by write_synthetic)"))
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_config(preset, layers, dtype)
    cfg.fxprune_synthetic = {"preset": preset, "seed": int(seed)}
    specs = tensor_specs(cfg, dtype)
    groups, cur, size = [], [], 0
    for s in specs:
        if cur and size + s.nbytes > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += s.nbytes
    groups.append(cur)
    weight_map, total = {}, 0
    std = float(cfg.initializer_range)
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        w = ShardWriter(out / fname, group)
        for s in group:
            _write_random(w, s, seed, std, chunk_elements)
            weight_map[s.name] = fname
            total += s.nbytes
        w.close()
    write_index(out, weight_map, total)
    cfg.save_pretrained(out)
    params = sum(int(torch.Size(s.shape).numel()) for s in specs)
    return SyntheticInfo(out, preset, cfg.num_hidden_layers, params, total, len(groups))


def _write_random(w: ShardWriter, s: TensorSpec, seed: int, std: float, chunk_elements: int) -> None:
    if s.name.endswith("norm.weight") or s.name.endswith("layernorm.weight"):
        w.write(s.name, torch.ones(s.shape, dtype=s.dtype))
        return
    g = torch.Generator().manual_seed(_seed_of(seed, s.name))
    rows, cols = (s.shape[0], int(torch.Size(s.shape[1:]).numel())) if len(s.shape) > 1 else (1, s.shape[0])
    step = max(1, chunk_elements // max(cols, 1))
    for r in range(0, rows, step):
        n = min(step, rows - r)
        w.write_bytes((torch.randn(n, cols, generator=g) * std).to(s.dtype))
    w.skip_to_next()
