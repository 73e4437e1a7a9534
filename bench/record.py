#!/usr/bin/env python3
"""The regression guard: `nnc bench --json` over a fixed set of models,
recorded, and compared against a recorded baseline.

    python3 bench/record.py                     # measure, print, compare with bench/baseline.json
    python3 bench/record.py --write             # measure and (re)write bench/baseline.json
    python3 bench/record.py --out run.json      # also keep this run
    python3 bench/record.py --against run.json  # compare with another recorded run

Two kinds of numbers are kept per (model, batch, threads):

- *Exact* ones, which only a code change moves: kernels, FLOPs and bytes
  moved per step, arena and live-set bytes. Any increase is reported as a
  regression; a decrease as an improvement (re-record the baseline).
- *Times* (train step, inference, compile), medians of many runs. This
  machine is shared and drifts by up to ~30%, so a time counts as a
  regression only when it is more than `--tolerance` (default 1.3×) the
  baseline's and at least 0.01 ms slower (latencies of 15 µs jitter by
  more than 30%); compare runs made one after the other.

Exit status 1 when anything regressed. Standard library only; needs the
release build (`cargo build --release`).
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (model file, batch, threads, timed runs)
CASES = [
    ("bench/models/mlp.nn", 32, 1, 400),
    ("bench/models/mlp.nn", 128, 1, 300),
    ("bench/models/mlp.nn", 128, 2, 300),
    ("bench/models/lenet.nn", 64, 1, 150),
    ("bench/models/lenet.nn", 64, 2, 150),
    ("bench/models/cifar.nn", 64, 2, 15),
    ("examples/fashion_cnn.nn", 64, 2, 30),
]
EXACT = ["kernels", "flops", "bytes_moved", "arena_bytes", "live_bytes"]
TIMES = ["train_step_ms", "infer_batch_ms", "infer_one_ms", "compile_ms"]
# A time regresses only by at least this much too.
MIN_DELTA_MS = 0.01


def measure(nnc):
    results = {}
    for path, batch, threads, runs in CASES:
        cmd = [nnc, "bench", os.path.join(ROOT, path), "--batch", str(batch),
               "--threads", str(threads), "--runs", str(runs), "--json"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        key = f"{path} b{batch} t{threads}"
        results[key] = {k: row[k] for k in EXACT + TIMES}
        print(f"measured {key}: step {row['train_step_ms']:.3f} ms, "
              f"{row['kernels']} kernels", file=sys.stderr)
    return results


def compare(now, before, tolerance):
    regressions, notes = [], []
    for key, row in now.items():
        old = before.get(key)
        if old is None:
            notes.append(f"{key}: new case")
            continue
        for k in EXACT:
            if row[k] > old[k]:
                regressions.append(f"{key}: {k} {old[k]} -> {row[k]}")
            elif row[k] < old[k]:
                notes.append(f"{key}: {k} {old[k]} -> {row[k]} (better: re-record)")
        for k in TIMES:
            ratio = row[k] / old[k] if old[k] else 1.0
            line = f"{key}: {k} {old[k]:.4f} -> {row[k]:.4f} ms ({ratio:.2f}×)"
            if ratio > tolerance and row[k] - old[k] >= MIN_DELTA_MS:
                regressions.append(line)
            elif ratio < 1 / tolerance:
                notes.append(line + " (faster)")
    return regressions, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nnc", default=os.path.join(ROOT, "target", "release", "nnc"))
    ap.add_argument("--baseline", default=os.path.join(HERE, "baseline.json"))
    ap.add_argument("--against", help="compare with this recorded run instead")
    ap.add_argument("--write", action="store_true", help="write the baseline")
    ap.add_argument("--out", help="also write this run here")
    ap.add_argument("--tolerance", type=float, default=1.3)
    args = ap.parse_args()

    now = measure(args.nnc)
    record = {"cases": now}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
    if args.write:
        with open(args.baseline, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {args.baseline}")
        return 0
    reference = args.against or args.baseline
    with open(reference) as f:
        before = json.load(f)["cases"]
    regressions, notes = compare(now, before, args.tolerance)
    for n in notes:
        print("note:", n)
    for r in regressions:
        print("REGRESSION:", r)
    print(f"{len(regressions)} regression(s) against {os.path.relpath(reference)}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
