#!/bin/bash
# GPU check of the CLI: `fxprune prune tiny:llama --accelerator gpu` against the same job on the CPU
# (fp32 both); prints the largest weight difference and exits non-zero if the checkpoints differ.
#   PYTHONPATH=$PWD bash bench/gpu_cli_check.sh OUTDIR
set -e
out=${1:-/tmp/gpu_cli}
mkdir -p $out
cat > $out/r.yaml <<'R'
calibration: {source: generated, samples: 8, seq_len: 32, batch_size: 4}
steps:
  - structured: {criterion: goa, reconstruction: liar_block, allocation: measured, probe_samples: 4,
                 target: 0.3, kinds: [ffn], channel_multiple: 4}
R
python3 -c "from fxprune.cli import main; raise SystemExit(main(['prune', 'tiny:llama', '--recipe', '$out/r.yaml', '--out', '$out/cpu', '--json']))" > $out/cpu.json
python3 -c "from fxprune.cli import main; raise SystemExit(main(['prune', 'tiny:llama', '--recipe', '$out/r.yaml', '--out', '$out/gpu', '--accelerator', 'gpu', '--json']))" > $out/gpu.json
python3 - "$out" <<'P'
import sys, torch
from safetensors.torch import load_file
a, b = load_file(f"{sys.argv[1]}/cpu/model.safetensors"), load_file(f"{sys.argv[1]}/gpu/model.safetensors")
assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a), "different structure"
d = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
print(f"tensors {len(a)}, same shapes, max |cpu - gpu| = {d:.3g}")
raise SystemExit(0 if d < 1e-4 else 1)
P
