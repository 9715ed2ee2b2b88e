#!/usr/bin/env bash
# The GPU checks of the image-DiT issue, as one call for a session that has a CUDA device (a few minutes on one
# H100; run from the repository root, e.g. `bash bench/gpu_check.sh $OUT`):
#   1. bench/train_step.py --gpu: DiT-B/2 at 32x32x4, bf16 autocast, torch.compile, batch 256, MFU against the
#      bf16 matmul peak measured in every round;
#   2. the engine end to end on CUDA: configs/shapes_dit_tiny.toml with compile = true for 300 steps (bf16 by
#      precision = "auto"), then a sample grid from its checkpoint through the CLI.
set -euo pipefail
out=${1:-runs/gpu_check}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
"$python" bench/train_step.py --gpu 2>&1 | tee "$out/train_step.log"
config="$out/shapes_dit_tiny_compiled.toml"
sed 's/^\[train\]$/[train]\ncompile = true/' configs/shapes_dit_tiny.toml > "$config"
"$python" -m minidit train "$config" --steps 300 --out "$out/run" 2>&1 | tail -n 20 | tee "$out/train.log"
"$python" -m minidit sample "$out/run/checkpoint.pt" --n 35 --cfg 3.0 --out "$out/samples.png"
