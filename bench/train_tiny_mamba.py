"""Train a tiny byte-level Mamba (hidden 128, 4 layers, HF pure-torch path) on the C4 train head for a
few minutes, so that sparsification methods can be compared on a Mamba that has learnt something.

    PYTHONPATH=$PWD python bench/train_tiny_mamba.py --minutes 6 --out /tmp/fxprune_tiny_mamba

Training text: C4 head documents 0..899 (after a seeded shuffle); documents 900..999 are left for
calibration; evaluation is WikiText-2 test (never seen). Tokens are UTF-8 bytes (vocab 256).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fxprune.data import resolve  # noqa: E402


def c4_texts(split: str) -> list[str]:
    texts = [json.loads(l)["text"] for l in open(resolve("c4"))]
    random.Random(0).shuffle(texts)
    return texts[:900] if split == "train" else texts[900:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--out", default="/tmp/fxprune_tiny_mamba")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import MambaConfig, MambaForCausalLM
    cfg = MambaConfig(vocab_size=256, hidden_size=128, state_size=16, num_hidden_layers=4, expand=2,
                      conv_kernel=4, use_mambapy=False, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = MambaForCausalLM(cfg)
    data = torch.tensor(list("\n\n".join(c4_texts("train")).encode()), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    t0, step = time.time(), 0
    model.train()
    while time.time() - t0 < args.minutes * 60:
        starts = torch.randint(0, data.numel() - args.seqlen - 1, (args.batch,))
        x = torch.stack([data[s:s + args.seqlen] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 20 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    model.save_pretrained(args.out)
    print(f"saved {args.out} after {step} steps, last loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
