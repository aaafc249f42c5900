#!/usr/bin/env python3
"""Training throughput from PyTorch-ImageNet-style logs, computed as DLPerf computes it.

DLPerf (the benchmark suite that drove PyTorch's examples/imagenet/main.py) measures a run
from its progress lines, printed with --print-freq 1:

    Epoch: [0][ 5/53]\tTime  0.362 ( 2.620)\tData  0.106 ( 0.075)\tLoss ...

Its rule, reproduced here for one log:
  * keep the lines that contain 'Epoch: ';
  * read the batch index i from the '[epoch][i/N]' pair (the second bracket);
  * count only lines with i > 5 (the first six steps are warm-up);
  * of the counted lines, skip the first 20 and take the next 100 (counted lines 21..120);
  * on each, take the step time: the first value matching DLPerf's pattern
    r'\\d.\\d{1,3}\\s' (one digit, any character, 1-3 digits, whitespace) from 'Time' on,
    i.e. the current value of the Time meter, not its average in parentheses;
  * throughput = total batch size * 100 / (sum of those 100 step times).
Over several logs (repeated runs) the median is reported (the mean of the middle two for an
even count, as DLPerf).

Differences from DLPerf's script, none of which changes a number it would produce:
  * the batch size comes from --batch-size-total, not from the log's file name;
  * the step time is searched from 'Time' on rather than from the start of the line;
  * throughputs are not rounded to 2 decimals;
  * a log with fewer than 120 counted lines is an error (DLPerf silently reports 0).
Like DLPerf, a step time of 10 s or more is misread (' 12.345' gives 2.345); a warning is
printed to stderr when that happens.

Usage:  extract_dlperf.py --batch-size-total 128 LOG [LOG...]
Prints one JSON line:
  {"throughput": <median>, "median": <median>,
   "runs": [{"log": path, "throughput": x, "time_sum": s, "counted_lines": n}, ...]}
Exits with 1 (message on stderr) when a log cannot be read or is too short, 2 on bad usage.
Standard library only.
"""

import argparse
import json
import re
import statistics
import sys

WARMUP_INDEX = 5        # lines with batch index <= 5 are not counted
SKIP_COUNTED = 20       # counted lines 1..20 are skipped
TAKE_COUNTED = 100      # counted lines 21..120 are measured

# '[epoch][i/N]': i is read from the second bracket.
BATCH_RE = re.compile(r"\[[^\]]*\]\[\s*(-?\d+)\s*/\s*\d+\s*\]")
# DLPerf's step-time pattern, kept as it is ('.' matches any character).
TIME_RE = re.compile(r"(\d.\d{1,3})\s")


class LogError(Exception):
    pass


def step_time(line, path, lineno):
    at = line.find("Time")
    if at < 0:
        raise LogError(f"{path}:{lineno}: no 'Time' field in a measured line: {line.strip()!r}")
    m = TIME_RE.search(line, at)
    if not m:
        raise LogError(f"{path}:{lineno}: no step time after 'Time': {line.strip()!r}")
    if m.start() > 0 and line[m.start() - 1].isdigit():
        print(f"extract_dlperf: warning: {path}:{lineno}: step time of 10 s or more, read as "
              f"{m.group(1)} as DLPerf would", file=sys.stderr)
    return float(m.group(1))


def extract_run(path, batch_size_total):
    counted = 0
    time_sum = 0.0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if "Epoch: " not in line:
                    continue
                m = BATCH_RE.search(line)
                if not m:
                    print(f"extract_dlperf: warning: {path}:{lineno}: 'Epoch: ' line without "
                          f"'[epoch][i/N]', ignored", file=sys.stderr)
                    continue
                if int(m.group(1)) <= WARMUP_INDEX:
                    continue
                counted += 1
                if counted > SKIP_COUNTED:
                    time_sum += step_time(line, path, lineno)
                if counted == SKIP_COUNTED + TAKE_COUNTED:
                    break
    except OSError as e:
        raise LogError(f"{path}: cannot read: {e.strerror or e}")
    need = SKIP_COUNTED + TAKE_COUNTED
    if counted < need:
        raise LogError(f"{path}: only {counted} progress lines with batch index > {WARMUP_INDEX} "
                       f"('Epoch: [e][i/N]' lines); {need} are needed (train at least "
                       f"{need + WARMUP_INDEX + 1} steps with --print-freq 1)")
    if time_sum <= 0:
        raise LogError(f"{path}: the measured step times sum to {time_sum}")
    return {
        "log": path,
        "throughput": batch_size_total * TAKE_COUNTED / time_sum,
        "time_sum": time_sum,
        "counted_lines": counted,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Training throughput (img/s) of PyTorch-ImageNet-style logs, as DLPerf "
                    "computes it; the median over several logs.")
    parser.add_argument("--batch-size-total", type=int, required=True,
                        help="images per step over all devices (nodes x GPUs x batch per GPU)")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="training log(s), one per run")
    args = parser.parse_args(argv)
    if args.batch_size_total <= 0:
        parser.error("--batch-size-total must be positive")
    try:
        runs = [extract_run(p, args.batch_size_total) for p in args.logs]
    except LogError as e:
        print(f"extract_dlperf: error: {e}", file=sys.stderr)
        return 1
    median = statistics.median(r["throughput"] for r in runs)
    print(json.dumps({"throughput": median, "median": median, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
