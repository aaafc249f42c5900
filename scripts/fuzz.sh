#!/usr/bin/env bash
# Fuzzes the readers of untrusted files with libFuzzer: builds tests/fuzz in build-fuzz (clang,
# ASan + UBSan, CUDA off), makes each target's seed corpus from the project's fixtures, runs
# each target for SECONDS and prints a table of executions, coverage and findings.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     SECONDS per target (default 600); TARGETs of:
#                                             onnx checkpoint tensor index_cache jpeg png
#
# Limits of every run: -rss_limit_mb=2048 -malloc_limit_mb=1024 (an allocation over 1 GiB is a
# finding), -timeout=10 (an input taking over 10 s is one), -max_len of 1 MiB. Runs go on past
# a finding (-fork=1 -ignore_crashes/ooms/timeouts) and keep every one as
# build-fuzz/findings/<target>/{crash,leak,oom,timeout}-<sha1>; the corpus grows in
# build-fuzz/corpus/<target>/ and is reused by the next run. A finding is replayed and shrunk with
#   build-fuzz/tests/fuzz/fuzz_<target> FILE
#   build-fuzz/tests/fuzz/fuzz_<target> -minimize_crash=1 -max_total_time=60 FILE
# and, once fixed, committed under tests/fixtures/fuzz/<target>/, which the normal suite
# replays (tests/test_fuzz_regressions.cc). clang is installed on demand (not needed by CI).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-600}
[ $# -gt 0 ] && shift
case "$seconds" in '' | *[!0-9]*) echo "fuzz.sh: SECONDS must be a number, got '$seconds'" >&2; exit 2 ;; esac
all=(onnx checkpoint tensor index_cache jpeg png)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
  case " ${all[*]} " in *" $t "*) ;; *) echo "fuzz.sh: unknown target '$t' (targets: ${all[*]})" >&2; exit 2 ;; esac
done

build=build-fuzz
start=$(date +%s)

# clang with libFuzzer's runtime (Debian: clang + libclang-rt-dev), llvm-symbolizer for stacks.
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  scripts/install-deps.sh clang libclang-rt-dev llvm
fi
scripts/install-deps.sh

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DOXTRAIN_FUZZ=ON -DOXTRAIN_SANITIZE=address,undefined -DOXTRAIN_CUDA=OFF -DOXTRAIN_TESTS=OFF \
  "${launcher[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" --target oxtrain $(printf 'fuzz_%s ' "${targets[@]}") \
  2>&1 | { grep -E "error|warning:" || true; }
built=$(date +%s)

# ---- seed corpora (build-fuzz/seeds/<target>/, remade every run; small files only) ----
# Only the chosen targets' seeds are remade, so two runs on different targets can share the tree.
seeds=$build/seeds
for t in "${targets[@]}"; do rm -rf "${seeds:?}/$t"; done
mkdir -p "$seeds"
export ASAN_OPTIONS=detect_leaks=0  # the seed-making runs of oxtrain; the fuzz runs set their own
work=$build/seed-work-$$
rm -rf "$work" && mkdir -p "$work"
small() { find "$@" -maxdepth 1 -type f -size -1024k 2>/dev/null; }
for t in "${targets[@]}"; do
  mkdir -p "$seeds/$t"
  [ -d "tests/fixtures/fuzz/$t" ] && cp tests/fixtures/fuzz/"$t"/* "$seeds/$t/" 2>/dev/null || true
done
copy_seeds() {  # target files...
  local t=$1
  shift
  local f
  for f in "$@"; do cp "$f" "$seeds/$t/$(echo "${f#*/}" | tr / _)"; done
}
want() { case " ${targets[*]} " in *" $1 "*) return 0 ;; esac; return 1; }
if want onnx; then
  copy_seeds onnx $(small tests/fixtures tests/fixtures/parity tests/fixtures/external_one tests/fixtures/external_many | grep '\.onnx$')
fi
if want tensor; then
  copy_seeds tensor $(small tests/fixtures tests/fixtures/parity | grep '\.pb$') \
    $(small tests/fixtures/parity/step1 | grep '\.pb$' | head -20)
fi
if want checkpoint; then
  for m in ts_train_op9_basic ts_train_op17_bottleneck; do
    "$build/oxtrain" train --synthetic --model "tests/fixtures/$m.onnx" --steps 1 -p 1 \
      -b 2 --image-size 32 --num-classes 10 --checkpoint-dir "$work/$m" >/dev/null 2>&1 || echo "fuzz.sh: no checkpoint seed from $m" >&2
    [ -f "$work/$m/checkpoint.oxt" ] && cp "$work/$m/checkpoint.oxt" "$seeds/checkpoint/$m.oxt"
  done
fi
if want jpeg; then
  "$build/oxtrain" make-dataset "$work/data" --classes 3 --train-per-class 2 --val-per-class 1 \
    --min-side 8 --max-side 64 >/dev/null 2>&1 || echo "fuzz.sh: make-dataset failed" >&2
  copy_seeds jpeg $(find "$work/data" -type f -iname '*.jpeg' -o -type f -iname '*.jpg' | sort | head -9)
fi
if want png; then
  # Tiny PNGs of every colour type and bit depth libpng turns into RGB, one interlaced.
  python3 - "$seeds/png" <<'PY'
import struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
def png(name, w, h, depth, ctype, channels, interlace=0, plte=None):
    bpp = max(1, depth * channels // 8)
    row = (w * depth * channels + 7) // 8
    raw = b"".join(bytes([0]) + bytes((x * 37 + y * 11) % 256 for x in range(row)) for y in range(h))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace))
    if plte: out += chunk(b"PLTE", plte)
    out += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    open(sys.argv[1] + "/" + name, "wb").write(out)
png("rgb8.png", 7, 5, 8, 2, 3)
png("rgba8.png", 4, 4, 8, 6, 4)
png("gray8.png", 9, 3, 8, 0, 1)
png("gray1.png", 16, 2, 1, 0, 1)
png("graya16.png", 3, 3, 16, 4, 2)
png("rgb16.png", 2, 3, 16, 2, 3)
png("palette4.png", 8, 4, 4, 3, 1, plte=bytes(range(48)))
png("interlaced.png", 11, 9, 8, 2, 3, interlace=1)
PY
fi
if want index_cache; then
  # The index ImageFolder writes (io/dataset.cc), over the harness's tree of classes a and b.
  # @ROOT@, @A@, @B@: the root and the class folders' stamps (tests/fuzz/targets.h).
  head='oxtrain-index 1\nroot @ROOT@\nclasses 2\na\nb\ndirs 2\n@A@ a\n@B@ b\n'
  printf "${head}samples 2\n0 a/x.jpg\n1 b/y.png\nend\n" >"$seeds/index_cache/valid"
  printf "${head}samples 4\n0 a/x.jpg\n0 a/x.jpg\n1 b/y.png\n1 b/../a/x.jpg\nend\n" >"$seeds/index_cache/repeats"
  printf 'oxtrain-index 1\nroot @ROOT@\nclasses 2\na\nb\ndirs 2\n1 2 3 a\n4 5 6 b\nsamples 1\n0 a/x.jpg\nend\n' \
    >"$seeds/index_cache/stale"
fi
rm -rf "$work"
unset ASAN_OPTIONS
seeded=$(date +%s)

# ---- the runs ----
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:print_stacktrace=1:allocator_may_return_null=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
mkdir -p "$build/logs"
rows=()
for t in "${targets[@]}"; do
  findings=$build/findings/$t
  corpus=$build/corpus/$t
  scratch=$build/tmp/$t
  mkdir -p "$findings" "$corpus" "$scratch"
  before=$(find "$findings" -type f | wc -l)
  echo "fuzz.sh: fuzz_$t for ${seconds} s ($(ls "$seeds/$t" | wc -l) seeds)"
  # TMPDIR: the harness's scratch files, removed below even when a job died mid-input.
  TMPDIR=$PWD/$scratch "$build/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -timeout=10 -max_len=1048576 -fork=1 -ignore_crashes=1 -ignore_ooms=1 \
    -ignore_timeouts=1 -artifact_prefix="$findings/" "$corpus" "$seeds/$t" \
    >"$build/logs/$t.log" 2>&1 || true
  rm -rf "$scratch"
  # The last status line: "#EXECS: cov: C ft: F corp: ..." (fork mode) or "#EXECS <event> cov: ...".
  last=$(grep -E '^#[0-9]+:? .*cov: [0-9]+ ft: [0-9]+' "$build/logs/$t.log" | tail -1 || true)
  execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
  cov=$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$last")
  after=$(find "$findings" -type f | wc -l)
  rows+=("$(printf '%-12s %12s %8s %8s %9s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$((after - before))")")
done
done_at=$(date +%s)

echo
printf '%-12s %12s %8s %8s %9s\n' target executions cov ft findings
printf '%s\n' "${rows[@]}"
echo "fuzz.sh: build $((built - start)) s, seeds $((seeded - built)) s, runs $((done_at - seeded)) s;" \
  "logs in $build/logs/, findings in $build/findings/<target>/"
