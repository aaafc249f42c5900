#!/usr/bin/env bash
# Data-loading benchmark: oxtrain's loader beside torchvision's ImageFolder + DataLoader on the
# same generated ImageNet-like JPEGs (sides 375-500, quality 90), same worker count, same run.
# Prints img/s per worker for both and the ratio (higher is better for oxtrain), and the
# loader's peak memory at two prefetch depths.
#   bench/loader.sh            # WORKERS="1 2" IMAGES=1500
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
data=${DATA:-build/bench-data}
if [ ! -d "$data/train" ]; then
  build/oxtrain make-dataset "$data" --classes 10 --train-per-class 150 --val-per-class 1 \
    --min-side 375 --max-side 500 --quality 90 >/dev/null
fi
images=${IMAGES:-1500}
printf "%-8s %16s %16s %8s\n" workers "oxtrain img/s/w" "tv img/s/w" ratio
for w in ${WORKERS:-1 2}; do
  ox=$(build/oxtrain_loader_bench "$data/train" --workers "$w" --images "$images")
  tv=$(python3 bench/torchvision_loader.py "$data/train" --workers "$w" --images "$images" 2>/dev/null | tail -1)
  python3 - "$w" "$ox" "$tv" <<'PY'
import json, sys
w, o, t = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"{w:<8} {o['img_s_per_worker']:>16.1f} {t['img_s_per_worker']:>16.1f} {o['img_s_per_worker']/t['img_s_per_worker']:>8.2f}")
PY
done
echo "memory (2 workers, batch 64):"
for depth in 2 8; do
  build/oxtrain_loader_bench "$data/train" --workers 2 --prefetch "$depth" --images "$images" |
    python3 -c "import json,sys; d=json.load(sys.stdin); print(f'  prefetch $depth: batch buffers {d[\"batch_buffer_mib\"]} MiB, peak RSS {d[\"peak_rss_mib\"]} MiB')"
done
