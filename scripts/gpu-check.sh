#!/usr/bin/env bash
# The one prepared run on a GPU machine: the CUDA tests, compute-sanitizer on a short training
# run, then ResNet-50 (batch 128, synthetic data) for oxtrain and PyTorch side by side in the
# same run, and one table last. Built here, it builds nothing there.
#
#   scripts/gpu-check.sh bundle          here: build with CUDA and pack .gpu.tar.xz (< 64 MiB)
#   scripts/gpu-check.sh run [OUT]       there, from the repository root with .gpu.tar.xz beside
#                                        it: logs and table.txt go to OUT ($OUT, else gpu-check-out)
#
# Each phase has its own time limit, so the whole run stays under 9 minutes and the table is
# printed even when a phase fails or hangs. PyTorch is taken from $PYTHON, else
# /opt/torch/.venv/bin/python, else python3. A phase that cannot run says why in the table.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
archive=.gpu.tar.xz

if [ "$mode" = bundle ]; then
  exec scripts/gpu-bundle.sh "$archive"
fi
if [ "$mode" != run ]; then
  echo "usage: scripts/gpu-check.sh bundle | run [OUT]" >&2
  exit 2
fi

out=${2:-${OUT:-gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -f "$archive" ] || { echo "gpu-check: no $archive here; make it with 'scripts/gpu-check.sh bundle' and carry it" >&2; exit 2; }
box=$(mktemp -d /tmp/oxtrain-gpu.XXXXXX)
tar -xJf "$archive" -C "$box" || { echo "gpu-check: cannot unpack $archive" >&2; exit 2; }
# shellcheck disable=SC1091
source "$box/env.sh"
export OXTRAIN_FIXTURES=$PWD/tests/fixtures OXTRAIN_BINARY=$box/bin/oxtrain
python=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$python" ] || python=python3
rows=()   # lines of the table
notes=()  # one line per phase that did not run cleanly
started=$(date +%s)

phase() {  # phase NAME SECONDS COMMAND... : runs with a limit, output to $out/NAME.log
  local name=$1 seconds=$2
  shift 2
  echo "== $name (limit ${seconds}s): $*" >&2
  timeout --kill-after=10 "$seconds" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && notes+=("$name: stopped after ${seconds}s (see $name.log)")
  return $rc
}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/gpu.txt" 2>&1
  gpu=$(head -1 "$out/gpu.txt")
else
  gpu="none seen (no nvidia-smi)"
fi
echo "gpu-check: $gpu" >&2

# 1. The CUDA tests (every kernel against its CPU twin, the session tests, cuDNN's plans).
phase cuda-tests 200 oxtrain_tests --gtest_filter='Cuda*:Cudnn*'
tests_rc=$?
count() { sed -n "s/^\[  $1 *\] \([0-9]*\) tests\{0,1\}[,.].*/\1/p" "$out/cuda-tests.log" | tail -1; }
passed=$(count PASSED)
failed=$(count FAILED)
skipped=$(count SKIPPED)
passed=${passed:-0} failed=${failed:-0} skipped=${skipped:-0}
[ $tests_rc -ne 0 ] && [ "$failed" -eq 0 ] && notes+=("cuda-tests: exit $tests_rc (see cuda-tests.log)")
grep '^\[  FAILED  \] [A-Za-z]' "$out/cuda-tests.log" | grep -v ' ms)$' | sort -u | sed 's/^/  /' >"$out/failed-tests.txt"

# 2. compute-sanitizer (memcheck) on a short training run of a small ResNet, CUDA graph included.
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ -x "$sanitizer" ]; then
  phase sanitizer 150 "$sanitizer" --tool memcheck --error-exitcode 3 \
    oxtrain train --synthetic -a resnet18 --image-size 64 --num-classes 10 -b 8 --steps 4 -p 1 --device cuda
  san_rc=$?
  san=$(grep -m1 'ERROR SUMMARY' "$out/sanitizer.log" || echo "no summary (exit $san_rc)")
  # The same in bf16 channels-last: the half, layout and normalisation kernels.
  phase sanitizer-nhwc 120 "$sanitizer" --tool memcheck --error-exitcode 3 \
    oxtrain train --synthetic -a resnet18 --image-size 64 --num-classes 10 -b 8 --steps 4 -p 1 --device cuda \
    --precision bf16 --channels-last
  san_rc=$?
  san="$san; bf16 channels-last: $(grep -m1 'ERROR SUMMARY' "$out/sanitizer-nhwc.log" || echo "no summary (exit $san_rc)")"
else
  san="compute-sanitizer not found"
fi

# 3. ResNet-50, batch 128, synthetic data: oxtrain in TF32, strict fp32 and mixed precision
#    (bf16, fp16 with loss scaling), PyTorch beside it (AMP in channels-last for the mixed rows);
#    then bf16 on real JPEGs through the loader, against the synthetic bf16 row.
bench_oxtrain() {  # NAME PRECISION BATCH DATA [FLAGS...]: sets ${NAME_}img, _ms, _mem (NAME with - as _); DATA - is synthetic
  local name=$1 var=${1//-/_} precision=$2 batch=$3 line img=- ms=- mem=- unit data_args=(--synthetic --num-classes 1000)
  [ "$4" != - ] && data_args=("$4" -j 16)
  shift 4
  phase "$name" 120 oxtrain train "${data_args[@]}" -a resnet50 -b "$batch" --steps 50 -p 10 \
    --device cuda --precision "$precision" "$@"
  line=$(grep -m1 '^oxtrain: .* img/s' "$out/$name.log")
  if [ -n "$line" ]; then
    img=$(sed -n 's/.* \([0-9.]*\) img\/s.*/\1/p' <<<"$line")
    ms=$(sed -n 's/.*mean step \([0-9.]*\) s.*/\1/p' <<<"$line")
    ms=$(awk -v s="$ms" 'BEGIN { printf "%.1f", 1000 * s }')
    mem=$(sed -n 's/.*peak memory \([0-9.]*\) \([GM]i\)B.*/\1 \2/p' <<<"$line")
    unit=${mem#* }
    mem=${mem% *}
    [ "$unit" = Mi ] && mem=$(awk -v m="$mem" 'BEGIN { printf "%.2f", m / 1024 }')
  else
    notes+=("$name: no summary line: $(grep -m1 -i 'error' "$out/$name.log" | cut -c1-200)")
  fi
  printf -v "${var}_img" '%s' "${img:--}"
  printf -v "${var}_ms" '%s' "${ms:--}"
  printf -v "${var}_mem" '%s' "${mem:--}"
}
bench_oxtrain oxtrain-tf32 tf32 128 -
bench_oxtrain oxtrain-fp32 fp32 128 -
bench_oxtrain oxtrain-bf16 bf16 128 -
bench_oxtrain oxtrain-fp16 fp16 128 -
# What recomputing the fused batch norms' outputs costs in speed and saves in memory, and what
# channels-last gains (cuDNN with NHWC strides; pooling still transposed around).
bench_oxtrain oxtrain-bf16-kept bf16 128 - --no-recompute
bench_oxtrain oxtrain-bf16-nhwc bf16 128 - --channels-last
bench_oxtrain oxtrain-fp16-nhwc fp16 128 - --channels-last
bench_oxtrain oxtrain-fp16-b256 fp16 256 -
bench_oxtrain oxtrain-bf16-b256 bf16 256 -
# Real JPEGs (photo-sized, decoded and augmented by 16 loader threads) against the synthetic row.
if phase make-dataset 90 oxtrain make-dataset "$box/data" --classes 10 --train-per-class 700 --val-per-class 2 \
  --min-side 256 --max-side 500; then
  bench_oxtrain oxtrain-bf16-jpeg bf16 128 "$box/data"
else
  oxtrain_bf16_jpeg_img=- oxtrain_bf16_jpeg_ms=- oxtrain_bf16_jpeg_mem=-
  notes+=("make-dataset failed (see make-dataset.log)")
fi

phase pytorch 240 "$python" bench/torch_resnet.py --config fp32_nchw --config tf32_nhwc --config strict_fp32_nchw \
  --config amp_bf16_nhwc --config amp_fp16_nhwc --iters 40 --warmup 15 || notes+=("pytorch: $(grep -v '^ ' "$out/pytorch.log" | grep -m1 -i 'error' | cut -c1-200)")
phase pytorch-b256 120 "$python" bench/torch_resnet.py --batch-size 256 --config amp_bf16_nhwc --config amp_fp16_nhwc \
  --iters 30 --warmup 10 || notes+=("pytorch batch 256: $(grep -m1 -i 'error' "$out/pytorch-b256.log" | cut -c1-200)")
torch_field() {  # CONFIG FIELD [LOG]
  "$python" - "$out/${3:-pytorch}.log" "$1" "$2" <<'PY' 2>/dev/null || echo -
import json, sys
for line in open(sys.argv[1]):
    try:
        row = json.loads(line)
    except ValueError:
        continue
    if row.get("config") == sys.argv[2]:
        print(row.get(sys.argv[3]) if row.get(sys.argv[3]) is not None else "-")
        break
else:
    print("-")
PY
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.3f", a / b; else print "-" }'; }
row() {  # CONFIG OX_IMG OX_MS OX_MEM TORCH_CONFIG [TORCH_LOG]
  local t_img t_ms t_mem
  t_img=$(torch_field "$5" img_s "${6:-}")
  t_ms=$(torch_field "$5" ms_step "${6:-}")
  t_mem=$(torch_field "$5" peak_mem_gib "${6:-}")
  rows+=("$(printf '%-34s %9s %8s %8s | %9s %8s %8s | %7s %7s' "$1" "$2" "$3" "$4" "$t_img" "$t_ms" "$t_mem" \
    "$(ratio "$2" "$t_img")" "$(ratio "$4" "$t_mem")")")
}
row "tf32 NCHW vs PyTorch default" "$oxtrain_tf32_img" "$oxtrain_tf32_ms" "$oxtrain_tf32_mem" fp32_nchw
row "tf32 NCHW vs PyTorch channels-last" "$oxtrain_tf32_img" "$oxtrain_tf32_ms" "$oxtrain_tf32_mem" tf32_nhwc
row "strict fp32 vs PyTorch strict fp32" "$oxtrain_fp32_img" "$oxtrain_fp32_ms" "$oxtrain_fp32_mem" strict_fp32_nchw
row "bf16 vs PyTorch AMP bf16 NHWC" "$oxtrain_bf16_img" "$oxtrain_bf16_ms" "$oxtrain_bf16_mem" amp_bf16_nhwc
row "fp16 vs PyTorch AMP fp16 NHWC" "$oxtrain_fp16_img" "$oxtrain_fp16_ms" "$oxtrain_fp16_mem" amp_fp16_nhwc
row "bf16 --no-recompute vs AMP bf16" "$oxtrain_bf16_kept_img" "$oxtrain_bf16_kept_ms" "$oxtrain_bf16_kept_mem" amp_bf16_nhwc
row "bf16 --channels-last vs AMP bf16" "$oxtrain_bf16_nhwc_img" "$oxtrain_bf16_nhwc_ms" "$oxtrain_bf16_nhwc_mem" amp_bf16_nhwc
row "fp16 --channels-last vs AMP fp16" "$oxtrain_fp16_nhwc_img" "$oxtrain_fp16_nhwc_ms" "$oxtrain_fp16_nhwc_mem" amp_fp16_nhwc
row "b256 bf16 vs PyTorch AMP bf16 NHWC" "$oxtrain_bf16_b256_img" "$oxtrain_bf16_b256_ms" "$oxtrain_bf16_b256_mem" \
  amp_bf16_nhwc pytorch-b256
row "b256 fp16 vs PyTorch AMP fp16 NHWC" "$oxtrain_fp16_b256_img" "$oxtrain_fp16_b256_ms" "$oxtrain_fp16_b256_mem" \
  amp_fp16_nhwc pytorch-b256

{
  echo
  echo "GPU: $gpu   ($(($(date +%s) - started)) s)"
  echo "CUDA tests: $passed passed, $failed failed, $skipped skipped"
  [ -s "$out/failed-tests.txt" ] && cat "$out/failed-tests.txt"
  echo "compute-sanitizer (resnet18, 4 steps): $san"
  for n in "${notes[@]}"; do echo "note: $n"; done
  echo
  echo "ResNet-50, batch 128 (b256: 256), synthetic data, SGD momentum  oxtrain            |          PyTorch            |  ratio (oxtrain / PyTorch)"
  printf '%-34s %9s %8s %8s | %9s %8s %8s | %7s %7s\n' config img/s ms/step GiB img/s ms/step GiB img/s memory
  for r in "${rows[@]}"; do echo "$r"; done
  echo "bf16 on real JPEGs: $oxtrain_bf16_jpeg_img img/s, $(ratio "$oxtrain_bf16_jpeg_img" "$oxtrain_bf16_img") of synthetic"
} | tee "$out/table.txt"
[ "$failed" -eq 0 ] && [ "$oxtrain_tf32_img" != - ]
