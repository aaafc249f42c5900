#!/usr/bin/env bash
# The one prepared run on a GPU machine: a preflight, the CUDA tests, ResNet-50 (synthetic data)
# for oxtrain and PyTorch side by side in the same run, real JPEGs, compute-sanitizer with the
# time left, and one table last. Built here, it builds nothing there.
#
#   scripts/gpu-check.sh bundle          here: build with CUDA and pack .gpu.tar.xz (< 64 MiB)
#   scripts/gpu-check.sh run [OUT]       there, from the repository root with .gpu.tar.xz beside
#                                        it: table.txt and logs.tar.gz (every log) go to OUT
#                                        ($OUT, else gpu-check-out)
#
# .gpu.tar.xz is git-ignored: carry it explicitly (the device tool's carry: [".gpu.tar.xz"]),
# and give the command a time limit above the run's deadline.
#
# The whole run has a deadline (GPU_CHECK_SECONDS, default 480 s): each phase gets its own limit
# cut to the time left, phases run in order of what they tell, and one that no longer fits is
# skipped and named; the table is printed whatever failed, hung or was skipped, with each
# phase's time, so the next run can be sized. PyTorch is taken from $PYTHON, else
# /opt/torch/.venv/bin/python, else python3. Exit status 0 only when the CUDA tests passed and
# the TF32 row ran.
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

started=$(date +%s)
deadline=$((started + ${GPU_CHECK_SECONDS:-480}))
out=${2:-${OUT:-gpu-check-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
python=${PYTHON:-/opt/torch/.venv/bin/python}
[ -x "$python" ] || python=python3
[ -f "$archive" ] || { echo "gpu-check: no $archive here; make it with 'scripts/gpu-check.sh bundle' and carry it" >&2; exit 2; }
box=$(mktemp -d /tmp/oxtrain-gpu.XXXXXX)
tar -xJf "$archive" -C "$box" 2>/dev/null ||
  "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$archive" "$box" ||
  { echo "gpu-check: cannot unpack $archive" >&2; exit 2; }
logs=$box/logs
mkdir -p "$logs" "$box/ck"
system_library_path=${LD_LIBRARY_PATH:-}
# shellcheck disable=SC1091
source "$box/env.sh"
export OXTRAIN_FIXTURES=$PWD/tests/fixtures OXTRAIN_BINARY=$box/bin/oxtrain
rows=()   # lines of the table
notes=()  # one line per phase that did not run cleanly
times=()  # "phase seconds exit"

phase() {  # phase NAME SECONDS COMMAND... : runs with a limit (cut to the deadline), output to $logs/NAME.log
  local name=$1 seconds=$2 left rc t0
  shift 2
  left=$((deadline - $(date +%s) - 15))
  if [ "$left" -lt 20 ]; then
    notes+=("$name: skipped, the run's time was spent")
    : >"$logs/$name.log"
    times+=("$name skipped")
    return 125
  fi
  [ "$seconds" -gt "$left" ] && seconds=$left
  echo "== $name (limit ${seconds}s): $*" >&2
  t0=$(date +%s)
  timeout --kill-after=5 "$seconds" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  times+=("$name $(($(date +%s) - t0))s exit $rc")
  case $rc in 124 | 137) notes+=("$name: stopped after ${seconds}s (see $name.log)") ;; esac
  return $rc
}
python_phase() {  # as phase, with the machine's own library path for PyTorch
  LD_LIBRARY_PATH=$system_library_path phase "$@"
}
# A failed GPU run once more with every launch waited for (CUDA_LAUNCH_BLOCKING=1): an
# asynchronous CUDA error is then reported by the check after the launch that caused it, which
# names the node. Only the first failure is diagnosed (its time is the benchmarks').
diagnosed=0
diagnose() {  # NAME COMMAND...
  local name=$1
  shift
  [ "$diagnosed" = 1 ] && return 0
  diagnosed=1
  CUDA_LAUNCH_BLOCKING=1 phase "$name-blocking" 120 "$@"
  notes+=("$name again with CUDA_LAUNCH_BLOCKING=1: $(grep -m1 -i 'error' "$logs/$name-blocking.log" | cut -c1-240)")
}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$logs/gpu.txt" 2>&1
  gpu=$(head -1 "$logs/gpu.txt")
else
  gpu="none seen (no nvidia-smi)"
fi
echo "gpu-check: $gpu" >&2

# 0. Preflight: the libraries the bundle found, and one tiny step on the GPU. Without it working
#    the benchmarks would all fail the same way, so they are skipped.
{
  echo "oxtrain: $("$box/bin/oxtrain" --version 2>&1 | head -1)"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$box/bin/oxtrain" | grep -E 'not found|cudnn|nccl|cublas|cudart' || true
} >"$logs/preflight-libraries.log" 2>&1
preflight_ok=1
# --seed: the heuristics' first plan that runs, none timed, so the session builds sooner (cuDNN
# compiles the batch-norm engines at run time, which alone takes seconds each).
preflight=(oxtrain train --synthetic -a resnet18 --image-size 32 --num-classes 10 -b 8 --steps 2 -p 1
  --seed 0 --device cuda --checkpoint-dir "$box/ck")
phase preflight 150 "${preflight[@]}" || {
  preflight_rc=$?
  preflight_ok=0
  notes+=("preflight: a resnet18 step on the GPU failed: $(grep -m1 -i 'error' "$logs/preflight.log" | cut -c1-240)")
  notes+=("preflight: $(grep -m3 -E '=> not found|libcudnn[^ ]* =>' "$logs/preflight-libraries.log" | tr '\n' ' ' | cut -c1-240)")
  # Not worth a second look where there is no GPU to run on at all.
  if [ "$preflight_rc" != 124 ] && [ "$preflight_rc" != 137 ] && ! grep -q 'no NVIDIA driver\|no GPU' "$logs/preflight.log"; then
    diagnose preflight "${preflight[@]}"
  fi
}

# 1. The CUDA tests (every kernel against its CPU twin, the session tests, NCCL, cuDNN's plans).
#    Beside them, on cores the tests leave idle, the data-parallel overlap benchmark on the CPU
#    (Gloo, 2 ranks of ResNet-18 with 2 threads each): the share of the allreduce left exposed
#    after backward, which a development machine's two busy cores cannot show. It is waited for
#    before the timed runs.
overlap_limit=$((deadline - $(date +%s) - 60))
[ "$overlap_limit" -gt 170 ] && overlap_limit=170
overlap_pid=
if [ "$overlap_limit" -ge 30 ]; then
  timeout --kill-after=5 "$overlap_limit" oxtrain_dp_overlap --ranks 2 --arch resnet18 --image-size 64 \
    --batch-size 8 --threads 2 --iters 20 >"$logs/dp-overlap.log" 2>&1 &
  overlap_pid=$!
fi
phase cuda-tests 180 oxtrain_tests --gtest_filter='*Cuda*:Cudnn*'
tests_rc=$?
overlap=-
if [ -n "$overlap_pid" ]; then
  wait "$overlap_pid"
  overlap_rc=$?
  overlap=$(grep -m1 '^{' "$logs/dp-overlap.log" || echo "no result (exit $overlap_rc, see dp-overlap.log)")
fi
count() { sed -n "s/^\[  $1 *\] \([0-9]*\) tests\{0,1\}[,.].*/\1/p" "$logs/cuda-tests.log" | tail -1; }
passed=$(count PASSED)
failed=$(count FAILED)
skipped=$(count SKIPPED)
if [ -z "$passed$failed" ]; then  # no summary: the run crashed or was stopped; count what finished
  passed=$(grep -c '^\[       OK \]' "$logs/cuda-tests.log")
  failed=$(grep -c '^\[  FAILED  \] .* ms)$' "$logs/cuda-tests.log")
  running=$(grep '^\[ RUN      \]' "$logs/cuda-tests.log" | tail -1 | sed 's/^\[ RUN      \] //')
  [ -n "$running" ] && ! grep -q "\] $running (" "$logs/cuda-tests.log" &&
    notes+=("cuda-tests: ended (exit $tests_rc) inside $running")
fi
passed=${passed:-0} failed=${failed:-0} skipped=${skipped:-0}
[ "$tests_rc" -ne 0 ] && [ "$failed" -eq 0 ] && notes+=("cuda-tests: exit $tests_rc (see cuda-tests.log)")
# The on-disk cuDNN plan cache, for the benchmarks, once its GPU test passed: each graph's plan is
# then built and timed by the first run that has it and loaded by the later ones.
if grep -q '^\[       OK \] CudaConv.PlanCacheLoadsThePlanItWrote' "$logs/cuda-tests.log"; then
  export OXTRAIN_PLAN_CACHE="$box/plans"
  plan_cache="on (OXTRAIN_PLAN_CACHE: plans built and timed once, loaded by later runs)"
else
  plan_cache="off (CudaConv.PlanCacheLoadsThePlanItWrote did not pass)"
fi
grep '^\[  FAILED  \] [A-Za-z]' "$logs/cuda-tests.log" | grep -v ' ms)$' | sort -u | sed 's/^/  /' >"$logs/failed-tests.txt"

# 2. ResNet-50, batch 128, synthetic data: oxtrain in TF32, strict fp32 and mixed precision
#    (bf16, fp16 with loss scaling), PyTorch beside it (AMP in channels-last for the mixed rows);
#    then bf16 on real JPEGs through the loader, against the synthetic bf16 row.
bench_oxtrain() {  # NAME PRECISION BATCH DATA [FLAGS...]: sets ${NAME_}img, _ms, _mem (NAME with - as _); DATA - is synthetic
  local name=$1 var=${1//-/_} precision=$2 batch=$3 line img=- ms=- mem=- unit data_args=(--synthetic --num-classes 1000)
  [ "$4" != - ] && data_args=("$4" -j 16)
  shift 4
  local rc=125
  line=
  if [ "$preflight_ok" = 1 ]; then
    phase "$name" 120 oxtrain train "${data_args[@]}" -a resnet50 -b "$batch" --steps 50 -p 10 \
      --device cuda --precision "$precision" --checkpoint-dir "$box/ck" "$@"
    rc=$?
    line=$(grep -m1 '^oxtrain: .* img/s' "$logs/$name.log")
    rm -f "$box/ck"/*.oxt
  fi
  if [ -n "$line" ]; then
    img=$(sed -n 's/.* \([0-9.]*\) img\/s.*/\1/p' <<<"$line")
    ms=$(awk -v i="$img" -v b="$batch" 'BEGIN { if (i + 0 > 0) printf "%.1f", 1000 * b / i; else print "-" }')
    mem=$(sed -n 's/.*peak memory \([0-9.]*\) \([GM]i\)B.*/\1 \2/p' <<<"$line")
    unit=${mem#* }
    mem=${mem% *}
    [ "$unit" = Mi ] && mem=$(awk -v m="$mem" 'BEGIN { printf "%.2f", m / 1024 }')
  elif [ "$rc" != 125 ]; then
    notes+=("$name: no summary line: $(grep -m1 -i 'error' "$logs/$name.log" | cut -c1-200)")
    if [ "$rc" != 124 ] && [ "$rc" != 137 ]; then
      diagnose "$name" oxtrain train "${data_args[@]}" -a resnet50 -b "$batch" --steps 3 -p 1 --device cuda \
        --precision "$precision" --checkpoint-dir "$box/ck" "$@"
      rm -f "$box/ck"/*.oxt
    fi
  fi
  printf -v "${var}_img" '%s' "${img:--}"
  printf -v "${var}_ms" '%s' "${ms:--}"
  printf -v "${var}_mem" '%s' "${mem:--}"
}
bench_oxtrain oxtrain-tf32 tf32 128 -
bench_oxtrain oxtrain-bf16-nhwc bf16 128 - --channels-last
python_phase pytorch 200 "$python" bench/torch_resnet.py --config fp32_nchw --config tf32_nhwc --config strict_fp32_nchw \
  --config amp_bf16_nhwc --config amp_fp16_nhwc --iters 40 --warmup 15 ||
  notes+=("pytorch: $(grep -v '^ ' "$logs/pytorch.log" | grep -v '^{' | tail -1 | cut -c1-200)")
bench_oxtrain oxtrain-bf16 bf16 128 -
bench_oxtrain oxtrain-fp16-nhwc fp16 128 - --channels-last
# fp16 fuses each convolution with its batch norm (cuDNN's conv + genstats and scale-bias-ReLU
# prologue graphs); the same step without that fusion, beside it.
bench_oxtrain oxtrain-fp16-unfused fp16 128 - --channels-last --conv-bn-fusion off
bench_oxtrain oxtrain-fp32 fp32 128 -
# Real JPEGs (photo-sized, decoded and augmented by 16 loader threads) against the synthetic row;
# the train folder alone, so no evaluation session is built.
if phase make-dataset 60 oxtrain make-dataset "$box/data" --classes 10 --train-per-class 700 --val-per-class 1 \
  --min-side 256 --max-side 500; then
  bench_oxtrain oxtrain-bf16-jpeg bf16 128 "$box/data/train" --channels-last
  # The same with nvJPEG decoding on the GPU (the loader's threads only read the files).
  bench_oxtrain oxtrain-bf16-nvjpeg bf16 128 "$box/data/train" --channels-last --decode gpu
  nvjpeg_counts=$(grep -E '^(=> decoding JPEGs on the GPU|oxtrain: nvJPEG decoded)' "$logs/oxtrain-bf16-nvjpeg.log" 2>/dev/null |
    head -2 | cut -c1-160 | tr '\n' ' ')
else
  oxtrain_bf16_jpeg_img=- oxtrain_bf16_jpeg_ms=- oxtrain_bf16_jpeg_mem=-
  oxtrain_bf16_nvjpeg_img=- oxtrain_bf16_nvjpeg_ms=- oxtrain_bf16_nvjpeg_mem=-
  notes+=("make-dataset did not run through (see make-dataset.log)")
fi
# A job of one rank over NCCL (main.py's --multiprocessing-distributed on one GPU: the bucketed
# allreduce runs, over one rank) against the TF32 row alone.
bench_oxtrain oxtrain-tf32-nccl1 tf32 128 - --multiprocessing-distributed --dist-backend nccl \
  --dist-url tcp://127.0.0.1:29517 --world-size 1 --rank 0
bench_oxtrain oxtrain-bf16-b256 bf16 256 - --channels-last
python_phase pytorch-b256 100 "$python" bench/torch_resnet.py --batch-size 256 --config amp_bf16_nhwc --config amp_fp16_nhwc \
  --iters 30 --warmup 10 || notes+=("pytorch batch 256: $(grep -v '^ ' "$logs/pytorch-b256.log" | grep -v '^{' | tail -1 | cut -c1-200)")
# What recomputing the fused batch norms' outputs costs in speed and saves in memory.
bench_oxtrain oxtrain-bf16-kept bf16 128 - --channels-last --no-recompute
bench_oxtrain oxtrain-fp16-b256 fp16 256 - --channels-last
bench_oxtrain oxtrain-fp16 fp16 128 -
# Last, with the time left: what each kernel of the fp16 channels-last step chose on this GPU
# (cuDNN's engines, the convolutions fused with their batch norms and the fused batch norms as one
# cuDNN graph or composed), and the device plan's arenas.
kernels="not run (preflight failed)"
if [ "$preflight_ok" = 1 ]; then
  phase zoo-export 30 oxtrain zoo resnet50 -o "$box/resnet50.onnx"
  rc=$?
  if [ "$rc" = 0 ]; then
    phase kernels 90 oxtrain graph "$box/resnet50.onnx" --training -b 128 --precision fp16 --channels-last \
      --device cuda
    rc=$?
    if [ "$rc" = 0 ]; then
      kernels=$(grep -E '^  (arenas|BatchNorm|ConvStats|ConvGradFilterScale)' "$logs/kernels.log" | sed 's/^  //' | cut -c1-150)
    elif [ "$rc" = 125 ]; then
      kernels="skipped: the run's time was spent"
    else
      kernels="failed (exit $rc): $(grep -m1 -i 'error' "$logs/kernels.log" | cut -c1-200) (see kernels.log)"
    fi
  elif [ "$rc" = 125 ]; then
    kernels="skipped: the run's time was spent"
  else
    kernels="not run: exporting resnet50 failed (exit $rc, see zoo-export.log)"
  fi
  rm -f "$box/resnet50.onnx"
fi

# 3. compute-sanitizer (memcheck) on a short bf16 channels-last run of a small ResNet (the
#    half, layout, normalisation kernels, the CUDA graph), with the time left; with the
#    convolution and batch-norm fusion on, which in bf16 runs on the own kernels (cuDNN has no
#    fused engines there): the prologue, the channel sums, finalize, the ReLU mask, grad apply.
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ ! -x "$sanitizer" ]; then
  san="compute-sanitizer not found"
elif [ "$preflight_ok" != 1 ]; then
  san="not run (preflight failed)"
else
  phase sanitizer 150 "$sanitizer" --tool memcheck --error-exitcode 3 \
    oxtrain train --synthetic -a resnet18 --image-size 64 --num-classes 10 -b 8 --steps 4 -p 1 --device cuda \
    --precision bf16 --channels-last --conv-bn-fusion on --checkpoint-dir "$box/ck"
  san_rc=$?
  san=$(grep -m1 'ERROR SUMMARY' "$logs/sanitizer.log" || echo "no summary (exit $san_rc)")
fi

torch_field() {  # CONFIG FIELD [LOG]
  "$python" - "$logs/${3:-pytorch}.log" "$1" "$2" <<'PY' 2>/dev/null || echo -
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
row "bf16 NHWC vs PyTorch AMP bf16 NHWC" "$oxtrain_bf16_nhwc_img" "$oxtrain_bf16_nhwc_ms" "$oxtrain_bf16_nhwc_mem" amp_bf16_nhwc
row "bf16 NCHW vs AMP bf16 NHWC" "$oxtrain_bf16_img" "$oxtrain_bf16_ms" "$oxtrain_bf16_mem" amp_bf16_nhwc
row "bf16 NHWC no-recompute vs AMP bf16" "$oxtrain_bf16_kept_img" "$oxtrain_bf16_kept_ms" "$oxtrain_bf16_kept_mem" amp_bf16_nhwc
row "fp16 NHWC vs PyTorch AMP fp16 NHWC" "$oxtrain_fp16_nhwc_img" "$oxtrain_fp16_nhwc_ms" "$oxtrain_fp16_nhwc_mem" amp_fp16_nhwc
row "fp16 NHWC no conv+BN fusion vs AMP" "$oxtrain_fp16_unfused_img" "$oxtrain_fp16_unfused_ms" "$oxtrain_fp16_unfused_mem" amp_fp16_nhwc
row "fp16 NCHW vs AMP fp16 NHWC" "$oxtrain_fp16_img" "$oxtrain_fp16_ms" "$oxtrain_fp16_mem" amp_fp16_nhwc
row "b256 bf16 NHWC vs PyTorch AMP bf16" "$oxtrain_bf16_b256_img" "$oxtrain_bf16_b256_ms" "$oxtrain_bf16_b256_mem" \
  amp_bf16_nhwc pytorch-b256
row "b256 fp16 NHWC vs PyTorch AMP fp16" "$oxtrain_fp16_b256_img" "$oxtrain_fp16_b256_ms" "$oxtrain_fp16_b256_mem" \
  amp_fp16_nhwc pytorch-b256

{
  echo
  echo "GPU: $gpu   ($(($(date +%s) - started)) s of ${GPU_CHECK_SECONDS:-480})"
  echo "CUDA tests: $passed passed, $failed failed, $skipped skipped"
  echo "cuDNN plan cache for the benchmarks: $plan_cache"
  [ -s "$logs/failed-tests.txt" ] && cat "$logs/failed-tests.txt"
  echo "compute-sanitizer (resnet18 bf16 channels-last, conv+BN fusion composed, 4 steps): $san"
  echo "kernels of the fp16 channels-last step (oxtrain graph --device cuda; all in kernels.log):"
  sed 's/^/  /' <<<"$kernels"
  echo "data-parallel overlap on the CPU (Gloo, 2 ranks x 2 threads, ResNet-18 64px b8; goal exposed_share < 0.2): $overlap"
  for n in "${notes[@]}"; do echo "note: $n"; done
  echo "phases: ${times[*]}"
  echo
  echo "ResNet-50, batch 128 (b256: 256), synthetic data, SGD momentum  oxtrain            |          PyTorch            |  ratio (oxtrain / PyTorch)"
  printf '%-34s %9s %8s %8s | %9s %8s %8s | %7s %7s\n' config img/s ms/step GiB img/s ms/step GiB img/s memory
  for r in "${rows[@]}"; do echo "$r"; done
  echo "bf16 NHWC on real JPEGs: $oxtrain_bf16_jpeg_img img/s, $(ratio "$oxtrain_bf16_jpeg_img" "$oxtrain_bf16_nhwc_img") of synthetic"
  echo "bf16 NHWC on real JPEGs, nvJPEG (--decode gpu): $oxtrain_bf16_nvjpeg_img img/s," \
    "$(ratio "$oxtrain_bf16_nvjpeg_img" "$oxtrain_bf16_nhwc_img") of synthetic; ${nvjpeg_counts:-no decoder line}"
  echo "tf32 as a job of one rank over NCCL: $oxtrain_tf32_nccl1_img img/s, $(ratio "$oxtrain_tf32_nccl1_img" "$oxtrain_tf32_img") of alone" \
    "(same weights: CudaCollective.NcclJobOfOneTrainsAResNetLikeOneProcess)"
  echo "(oxtrain copies each synthetic batch's pixels from the host and reads the loss every 10 steps;"
  echo " PyTorch keeps its batch on the GPU and reads the loss every step)"
} >"$logs/table.txt"
cp "$logs/table.txt" "$out/table.txt"
tar -C "$logs" -czf "$out/logs.tar.gz" . 2>/dev/null || cp "$logs/cuda-tests.log" "$out/" 2>/dev/null
cat "$out/table.txt"
[ "$tests_rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$oxtrain_tf32_img" != - ]
