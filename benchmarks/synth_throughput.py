"""Throughput of docray.synth on one core, per kind: full rows, every PNG encode included.

    python benchmarks/synth_throughput.py --n 300
    python benchmarks/synth_throughput.py --n 100 --kinds documents

The process pins itself to one CPU (os.sched_setaffinity, where the OS has it) and asks OpenCV for
one thread, so rows/min here is rows/min per core. Each kind is warmed up first (font, background,
seal and noise caches: a one-off per worker process), then timed over rows [start, start + n).
Prints a table, then, as the last line, one JSON object (keys carry their units). `cpu ms/row` is the
process's own CPU time per row: on a busy machine (cpu_share < 1) it, not wall time, is the per-core cost.
The documents target is >= 1,000 rows/min/core at 256x160 (<= 60 ms a row).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import cv2

from docray.synth import KINDS, generate

WARMUP_ROWS = 10


def pin_one_core() -> str:
    """Pin this process to one CPU; returns a line saying what happened."""
    cv2.setNumThreads(1)
    if not hasattr(os, "sched_setaffinity"):
        return "pinning unavailable on this OS (running unpinned)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu} (os.sched_setaffinity), OpenCV threads = 1"


def measure(kind: str, n: int, start: int, seed: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to generate n rows of `kind`, after a warm-up."""
    generate(kind, 0, WARMUP_ROWS, seed=seed)
    t0, c0 = time.perf_counter(), time.process_time()
    table = generate(kind, start, start + n, seed=seed)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert table.num_rows == n
    return wall, cpu


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300, help="rows timed per kind (default 300)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="kinds to time (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-pin", action="store_true", help="do not pin to one core")
    args = p.parse_args(argv)

    print("docray.synth throughput:", "unpinned (--no-pin)" if args.no_pin else pin_one_core())
    result = {}
    header = f"{'kind':<10} {'rows':>6} {'seconds':>9} {'rows/s':>9} {'rows/min/core':>14} {'ms/row':>8} {'cpu ms/row':>11}"
    print(header)
    print("-" * len(header))
    for kind in args.kinds:
        wall, cpu = measure(kind, args.n, start=1000, seed=args.seed)
        per_s = args.n / wall
        print(f"{kind:<10} {args.n:>6} {wall:>9.2f} {per_s:>9.1f} {per_s * 60:>14.0f} {1000 / per_s:>8.1f} {1000 * cpu / args.n:>11.1f}")
        result.update({f"{kind}_per_s": round(per_s, 2), f"{kind}_per_min_per_core": round(per_s * 60, 1),
                       f"{kind}_ms_per_row": round(1000 / per_s, 2), f"{kind}_cpu_ms_per_row": round(1000 * cpu / args.n, 2),
                       f"{kind}_cpu_share": round(cpu / wall, 3)})
        if cpu < 0.9 * wall:
            print(f"  note: this process got {cpu / wall:.0%} of its core (a busy machine): cpu ms/row is the per-core cost")
    result["rows_per_kind"] = args.n
    result["pinned_cores"] = 0 if args.no_pin else 1
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
