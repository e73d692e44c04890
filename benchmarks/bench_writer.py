"""Throughput of the feature-file writer (a benchmark, not a test): rows a second through FeatureWriter.

Every feature file is written through ``ood.features.WriteGuard`` (h5py's fileobj driver, so a full disk stops
cleanly); this measures what that costs against the extraction's own rate. Batches of ``--batch`` rows of D
float32 features, C logits, labels and a path each, committed (flushed) after every batch, then read back once.

    python benchmarks/bench_writer.py [--rows 20000] [--dim 2048] [--classes 1000] [--batch 64] [--dir /tmp]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ood.features import FeatureFile, FeatureWriter


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dir", default=None, help="where the file goes (default: a temporary folder)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.dim)).astype(np.float32)
    z = rng.normal(size=(args.batch, args.classes)).astype(np.float32)
    paths = [f"train/n01440764/n01440764_{i:05d}.JPEG" for i in range(args.batch)]
    best = float("inf")
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            out = Path(d) / "f.h5"
            tic = time.perf_counter()
            w = FeatureWriter(out, args.rows, args.dim, args.classes)
            for lo in range(0, args.rows, args.batch):
                k = min(args.batch, args.rows - lo)
                w.append(x[:k], z[:k], np.zeros(k, np.int64), paths[:k])
            w.close()
            seconds = time.perf_counter() - tic
            size = out.stat().st_size
            with FeatureFile(out) as f:
                assert f.n == args.rows
        best = min(best, seconds)
    print(f"{args.rows} rows x ({args.dim} features + {args.classes} logits), batches of {args.batch}: "
          f"best of {args.repeat} {best:.2f} s, {args.rows / best:,.0f} rows/s, {size / best / 2**20:.0f} MiB/s "
          f"({size / 2**20:.0f} MiB file)")


if __name__ == "__main__":
    main()
