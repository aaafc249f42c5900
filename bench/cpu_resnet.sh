#!/usr/bin/env bash
# CPU training-step benchmark: oxtrain beside PyTorch, same machine, same run, same threads.
#   bench/cpu_resnet.sh            # resnet50 b16 224 and resnet18 b32 112
# Needs python3 with torch and torchvision (PyTorch's baseline is bench/torch_resnet.py);
# builds oxtrain first. Prints a table with the ratio
# oxtrain ms/step : PyTorch ms/step (lower is better for oxtrain).
set -euo pipefail
cd "$(dirname "$0")/.."
baseline=${TORCH_RESNET:-bench/torch_resnet.py}
threads=${THREADS:-$(nproc)}
scripts/build.sh >/dev/null
configs=("resnet50 224 16 ${ITERS50:-3} 1" "resnet18 112 32 ${ITERS18:-10} 2")
printf "%-10s %5s %5s %12s %12s %8s\n" arch image batch "oxtrain ms" "pytorch ms" ratio
for c in "${configs[@]}"; do
  read -r arch size batch iters warmup <<<"$c"
  ox=$(build/oxtrain_step_bench --arch "$arch" --image-size "$size" --batch-size "$batch" \
        --iters "$iters" --warmup "$warmup" --threads "$threads")
  pt=$(OMP_NUM_THREADS=$threads python3 "$baseline" --cpu --arch "$arch" --image-size "$size" \
        --batch-size "$batch" --iters "$iters" --warmup "$warmup" 2>/dev/null | tail -1)
  python3 - "$arch" "$size" "$batch" "$ox" "$pt" <<'PY'
import json, sys
arch, size, batch, ox, pt = sys.argv[1:6]
o, p = json.loads(ox), json.loads(pt)
print(f"{arch:<10} {size:>5} {batch:>5} {o['ms_step']:>12.1f} {p['ms_step']:>12.1f} {o['ms_step']/p['ms_step']:>8.2f}")
PY
done
