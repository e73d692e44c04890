"""Time of the report outputs (a benchmark, not a test): one figure per detector, the overview figure, and the
bootstrap intervals, on synthetic scores of the sizes given.

The scores mix the three axis kinds the figures choose (linear, symmetric-log, ranks), so every drawing path is
timed. CPU time of this process is shown next to wall time: on a shared machine the wall time includes waiting
for a core.

    python benchmarks/bench_plots.py [--detectors 30] [--sets 2] [--n_id 50000] [--n_ood 10000] [--formats png,pdf,svg]
    python benchmarks/bench_plots.py --bootstrap 1000 --detectors 0
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from types import SimpleNamespace

import numpy as np

from ood import bootstrap, plots
from ood.metrics import evaluate


def synthetic_result(detectors: int, sets: int, n_id: int, n_ood: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    names = [f"ood_{i}" for i in range(sets)]
    scores, records = {}, []
    for d in range(detectors):
        kind = d % 3
        if kind == 0:  # overlapping normals: a linear axis
            s = {"id": rng.normal(1, 1, n_id), **{n: rng.normal(-0.3 * i, 1.3, n_ood) for i, n in enumerate(names)}}
        elif kind == 1:  # a narrow ID group and a heavy OOD tail: symmetric-log
            s = {"id": rng.normal(-3, 0.5, n_id), **{n: -np.exp(rng.normal(4 + i, 1, n_ood)) for i, n in enumerate(names)}}
        else:  # a spike on an offset inside a wide group: ranks
            s = {"id": 1000 + rng.normal(0, 0.01, n_id), **{n: 1000 + rng.normal(0, 30, n_ood) for n in names}}
        method = f"det{d:02d}"
        scores[method] = s
        records += [{"method": method, "dataset": n, **evaluate(s["id"], s[n])} for n in names]
    return SimpleNamespace(records=records, scores=scores, datasets=names, fpr="vim")


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", type=int, default=30)
    ap.add_argument("--sets", type=int, default=2)
    ap.add_argument("--n_id", type=int, default=50_000)
    ap.add_argument("--n_ood", type=int, default=10_000)
    ap.add_argument("--formats", default="png,pdf,svg")
    ap.add_argument("--bootstrap", type=int, default=0, help="also time N resamples per (detector, set)")
    ap.add_argument("--bootstrap_detectors", type=int, default=3)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; {args.detectors} detectors, {args.sets} "
          f"OOD sets, {args.n_id} ID + {args.n_ood} OOD scores each")
    if args.detectors:
        res = synthetic_result(args.detectors, args.sets, args.n_id, args.n_ood)
        plots.write_plots(synthetic_result(1, args.sets, 200, 100), tempfile.mkdtemp())  # imports, font cache
        print("| format | figures | wall s | CPU s | wall s per detector figure | CPU s per detector figure | "
              "overview wall s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for fmt in args.formats.split(","):
            out = tempfile.mkdtemp()
            _, wall, cpu = timed(lambda: plots.write_plots(res, out, fmt=fmt))
            _, ow, oc = timed(lambda: plots.write_plots(SimpleNamespace(**{**vars(res), "scores": {}}), out, fmt=fmt))
            per_w, per_c = (wall - ow) / args.detectors, (cpu - oc) / args.detectors
            print(f"| {fmt} | {args.detectors + 1} | {wall:.2f} | {cpu:.2f} | {per_w:.3f} | {per_c:.3f} | {ow:.2f} |")
    if args.bootstrap:
        res = synthetic_result(args.bootstrap_detectors, args.sets, args.n_id, args.n_ood, seed=1)
        print(f"\n| bootstrap ({args.bootstrap} resamples) | convention | wall s per (detector, set) | CPU s |")
        print("|---|---|---:|---:|")
        for fpr in ("vim", "oe", "openood"):
            res.fpr = fpr
            _, wall, cpu = timed(lambda: bootstrap.result_intervals(res, args.bootstrap, 0))
            k = args.bootstrap_detectors * args.sets
            print(f"| {args.n_id} ID + {args.n_ood} OOD | {fpr} | {wall / k:.2f} | {cpu / k:.2f} |")


if __name__ == "__main__":
    main()
