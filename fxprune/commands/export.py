"""``fxprune export MODEL --to gguf --out FILE [--dtype f32|f16|q8_0|q4_0]``.

MODEL is anything ``fxprune`` loads (a pruned checkpoint directory, ``smollm2``, a ``.gguf`` file,
``tiny:<family>``). Uniform LLaMA-family widths become llama.cpp's stock ``llama`` (or ``qwen2``)
architecture, per-layer widths its ``deci`` architecture; every exact fold or padding is printed as
a note with its cost. See ``fxprune/export/__init__.py``.
"""
from __future__ import annotations

import json
import sys

NAME = "export"
HELP = "Write MODEL as a deployment file (GGUF for llama.cpp), per-layer widths included."


def add_arguments(p):
    p.add_argument("model", help="smollm2, tiny:<family>, a .gguf file or a (pruned) model directory")
    p.add_argument("--to", default="gguf", choices=["gguf"], help="target format (gguf)")
    p.add_argument("--out", required=True, help="output file (written atomically)")
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "q8_0", "q4_0"],
                   help="weight type of the 2-D tensors (default f16; norms and biases stay f32)")
    p.add_argument("--no-pad", action="store_true", help="do not pad FFN widths to the type's block multiple "
                   "with zero channels; store such tensors as f16 instead")
    p.add_argument("--vocab-from", default=None, help="GGUF file whose tokenizer keys to copy (default: the "
                   "model's own GGUF file where it came from one, else its Hugging Face tokenizer)")
    p.add_argument("--tokenizer-pre", default=None, help="llama.cpp pre-tokenizer name for a converted "
                   "Hugging Face tokenizer (e.g. smollm, qwen2, llama-bpe)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is a GGUF file fxprune wrote")
    p.add_argument("--json", action="store_true", help="print the export report as JSON")


def run(args) -> int:
    from ..export import export_model
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    rep = export_model(args.model, args.out, args.dtype, vocab_from=args.vocab_from, pad=not args.no_pad,
                       tokenizer_pre=args.tokenizer_pre, overwrite=args.overwrite, log=log)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=1))
        return 0
    ffn = sorted({w[2] for w in rep.widths})
    heads = sorted({(w[0], w[1]) for w in rep.widths})
    print(f"{rep.path}: GGUF {rep.dtype}, architecture {rep.arch}, {len(rep.widths)} layers, "
          f"FFN widths {ffn[0]}..{ffn[-1]}, (q heads, KV heads) {heads}, {rep.bytes / 2**20:.1f} MiB, "
          f"tensors {rep.tensor_types}; {rep.tokenizer}; {rep.seconds}s")
    return 0
