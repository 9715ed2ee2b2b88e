#!/usr/bin/env bash
# The whole GPU check, as one call for a session that has CUDA devices (under 8 minutes on one H100-class GPU; run
# from the repository root, e.g. `bash bench/gpu_check.sh $OUT`):
#   1. bench/train_step.py --gpu: training images/s and MFU of DiT-B/2 (batch 256) and DiT-XL/2 (batch 128) on
#      32x32x4 latents, bf16 autocast, torch.compile, against the bf16 matmul peak measured in every round
#      (target: MFU >= 45% on an H100-class GPU for DiT-B/2 and above);
#   2. the engine end to end on CUDA: configs/shapes_dit_tiny.toml with compile = true for 300 steps (bf16 by
#      precision = "auto"), then a sample grid from its checkpoint through the CLI;
#   3. FSDP2 on every GPU present: the same config under torchrun with parallel = "fsdp" (bf16 parameters, fp32
#      reduction) for 300 steps, its steps/s from metrics.jsonl, and the export of its sharded checkpoint;
#   4. sampling images/s: 256 samples of the step-2 checkpoint at 50 Euler steps, timed after one warm-up batch.
set -euo pipefail
out=${1:-runs/gpu_check}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count(), 'GPU(s)')"
"$python" bench/train_step.py --gpu 2>&1 | tee "$out/train_step.log"

config="$out/shapes_dit_tiny_compiled.toml"
sed 's/^\[train\]$/[train]\ncompile = true/' configs/shapes_dit_tiny.toml > "$config"
"$python" -m minidit train "$config" --steps 300 --out "$out/run" 2>&1 | tail -n 20 | tee "$out/train.log"
"$python" -m minidit sample "$out/run/checkpoint.pt" --n 35 --cfg 3.0 --out "$out/samples.png"

gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
fsdp="$out/shapes_dit_tiny_fsdp.toml"
sed "s/^\[train\]$/[train]\nparallel = \"fsdp\"/; s/^batch_size = .*/batch_size = $((64 / gpus * gpus))/" "$config" > "$fsdp"
"$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" -m minidit train "$fsdp" --steps 300 \
    --out "$out/fsdp" 2>&1 | tail -n 20 | tee "$out/fsdp.log"
"$python" -c "import json, sys; r = [json.loads(l) for l in open(sys.argv[1])]; print(f'RESULT fsdp_gpus=$gpus fsdp_steps_per_s={r[-1][\"steps_per_s\"]:.2f} fsdp_loss={r[-1][\"loss\"]:.4f}')" \
    "$out/fsdp/metrics.jsonl" | tee -a "$out/fsdp.log"
"$python" -m minidit export "$out/fsdp/checkpoint" "$out/fsdp_export.pt"

"$python" - "$out/run/checkpoint.pt" <<'PY' | tee "$out/sampling.log"
import sys, time, torch
from minidit.__main__ import load_stored_model
from minidit.generate import sample_images
experiment, model = load_stored_model(sys.argv[1], "ema", {"sample": {"n": 256, "steps": 50, "method": "euler", "cfg": 1.0}})
model = model.cuda()
sample_images(model, experiment.train, experiment.sample, "cuda")  # warm-up
torch.cuda.synchronize()
start = time.perf_counter()
sample_images(model, experiment.train, experiment.sample, "cuda")
torch.cuda.synchronize()
seconds = time.perf_counter() - start
print(f"RESULT sample_images_per_s={256 / seconds:.1f} (256 samples, 50 Euler steps, {seconds:.2f} s)")
PY
