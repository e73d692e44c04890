"""Peak memory and time of the fifteen reference detectors with the train split streamed from its file (a
benchmark, not a test).

Writes a train feature file of ``--train`` rows (D = 2048, C = 1000, rectified class centres plus noise, as
bench_detectors.py draws them) block by block, never holding it, plus the fc file, 50,000 ID test rows and four
OOD sets of 10,000, then runs ``ood.run_benchmark`` on them. Peak RSS should be set by the scored splits, not by
the train rows: compare two ``--train`` sizes.

    python benchmarks/bench_stream.py --train 200000 [--dir /tmp/ood_stream] [--keep]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np

import ood
from ood.features import FeatureWriter, write_fc

REFERENCE = ("msp,maxlogit,energy,entropy,gen,react,local_react,gen_react,gen_local_react,vim,residual,"
             "gen_residual,gradnorm,mahalanobis,kl_matching")
C, D = 1000, 2048


def write_split(path, n, centers, rng, labelled=True, shift=0.0, block=20_000):
    w = FeatureWriter(path, n, D, None, overwrite=True)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        y = rng.integers(0, C, hi - lo)
        base = centers[y] * (1.0 if labelled else 0.3) + shift
        x = np.maximum(base + rng.standard_normal((hi - lo, D), dtype=np.float32), 0)
        w.append(x, None, y if labelled else np.full(hi - lo, -1), [str(i) for i in range(lo, hi)])
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=200_000)
    ap.add_argument("--dir", default="/tmp/ood_stream")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centers = (rng.standard_normal((C, D), dtype=np.float32) * 0.6).astype(np.float32)
    t0 = time.perf_counter()
    write_fc(d / "fc.h5", centers / np.linalg.norm(centers, axis=1, keepdims=True) * 3,
             rng.standard_normal(C).astype(np.float32) * 0.1)
    write_split(d / "train.h5", args.train, centers, rng)
    write_split(d / "test.h5", 50_000, centers, rng)
    oods = []
    for k in range(4):
        oods.append(d / f"ood{k}.h5")
        write_split(oods[-1], 10_000, centers, rng, labelled=False, shift=0.1 * k)
    print(f"wrote {args.train} train rows ({(d / 'train.h5').stat().st_size / 2**30:.2f} GiB) and 90,000 scored "
          f"rows in {time.perf_counter() - t0:.0f}s")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    res = ood.run_benchmark(d / "fc.h5", d / "train.h5", d / "test.h5", oods, methods=REFERENCE, device="cpu")
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"fifteen reference detectors, {args.train} streamed train rows x D={D}, C={C}, 90,000 scored rows: "
          f"{elapsed:.1f}s; peak RSS {peak:.2f} GiB (after writing the files: {before:.2f} GiB); scored features "
          f"{90_000 * D * 4 / 2**30:.2f} GiB, train file {args.train * D * 4 / 2**30:.2f} GiB")
    print("mean AUROC per detector:", {m: round(float(np.mean([r['auroc'] for r in res.records if r['method'] == m])),
                                                4) for m in dict.fromkeys(r["method"] for r in res.records)})
    if not args.keep:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
