"""Peak memory and time of the fifteen reference detectors with the train split streamed from its file (a
benchmark, not a test).

Writes a train feature file of ``--train`` rows (D = 2048, C = 1000, rectified class centres plus noise, as
bench_detectors.py draws them) block by block, never holding it, plus the fc file, 50,000 ID test rows and four
OOD sets of 10,000, then runs ``ood.run_benchmark`` on them. Peak RSS should be set by the scored splits, not by
the train rows: compare two ``--train`` sizes.

    python benchmarks/bench_stream.py --train 200000 [--dir /tmp/ood_stream] [--keep] [--no_logits]
        [--methods default|a,b]

Every file stores its logits, as extract_features.py writes them (``--no_logits``: features only, so every
logit pass multiplies by the head). ``--methods default`` runs every default detector instead of the fifteen.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import h5py
import numpy as np

import ood
from bench_detectors import peak_gb, reset_peak, rss_gb
from ood.features import FeatureWriter, write_fc

REFERENCE = ("msp,maxlogit,energy,entropy,gen,react,local_react,gen_react,gen_local_react,vim,residual,"
             "gen_residual,gradnorm,mahalanobis,kl_matching")
C, D = 1000, 2048


def write_split(path, n, centers, rng, head=None, labelled=True, shift=0.0, block=20_000):
    """n rows of rectified class centres plus noise, with the logits W h + b of ``head`` (W, b) when given."""
    w = FeatureWriter(path, n, D, None if head is None else C, overwrite=True)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        y = rng.integers(0, C, hi - lo)
        base = centers[y] * (1.0 if labelled else 0.3) + shift
        x = np.maximum(base + rng.standard_normal((hi - lo, D), dtype=np.float32), 0)
        z = None if head is None else x @ head[0].T + head[1]
        w.append(x, z, y if labelled else np.full(hi - lo, -1), [str(i) for i in range(lo, hi)])
    w.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=200_000)
    ap.add_argument("--dir", default="/tmp/ood_stream")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--reuse", action="store_true", help="run on the files a --keep run left in --dir")
    ap.add_argument("--no_logits", action="store_true", help="store features only")
    ap.add_argument("--methods", default=REFERENCE, help="comma list, or 'default' for every default detector")
    args = ap.parse_args()
    d = Path(args.dir)
    oods = [d / f"ood{k}.h5" for k in range(4)]
    if not args.reuse:
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        centers = (rng.standard_normal((C, D), dtype=np.float32) * 0.6).astype(np.float32)
        W = (centers / np.linalg.norm(centers, axis=1, keepdims=True) * 3).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32) * 0.1
        head = None if args.no_logits else (W, b)
        t0 = time.perf_counter()
        write_fc(d / "fc.h5", W, b)
        write_split(d / "train.h5", args.train, centers, rng, head)
        write_split(d / "test.h5", 50_000, centers, rng, head)
        for k, path in enumerate(oods):
            write_split(path, 10_000, centers, rng, head, labelled=False, shift=0.1 * k)
        print(f"wrote {args.train} train rows ({(d / 'train.h5').stat().st_size / 2**30:.2f} GiB) and 90,000 scored "
              f"rows in {time.perf_counter() - t0:.0f}s")
    with h5py.File(d / "train.h5", "r") as f:
        n_train, stored = len(f["features"]), "logits" in f
    methods = None if args.methods == "default" else args.methods
    before = rss_gb()
    reset_peak()
    t0 = time.perf_counter()
    res = ood.run_benchmark(d / "fc.h5", d / "train.h5", d / "test.h5", oods, methods=methods, device="cpu",
                            log=lambda m: print(f"{m}  peak RSS {peak_gb():.2f} GiB", flush=True))
    elapsed = time.perf_counter() - t0
    peak = peak_gb()
    scored = 90_000 * (D + (C if stored else 0)) * 4 / 2**30
    print(f"{len(res.timings)} detectors, {n_train} streamed train rows x D={D}, C={C}"
          f"{', logits stored' if stored else ', no stored logits'}, 90,000 scored rows: {elapsed:.1f}s; "
          f"peak RSS {peak:.2f} GiB, {before:.2f} GiB before the run, growth {peak - before:.2f} GiB; scored "
          f"features{' and logits' if stored else ''} {scored:.2f} GiB, growth / scored = "
          f"{(peak - before) / scored:.2f}; train file {(d / 'train.h5').stat().st_size / 2**30:.2f} GiB")
    print("seconds per detector:", {m: round(t, 1) for m, t in res.timings.items()})
    print("mean AUROC per detector:", {m: round(float(np.mean([r['auroc'] for r in res.records if r['method'] == m])),
                                                4) for m in dict.fromkeys(r["method"] for r in res.records)})
    if not args.keep:
        shutil.rmtree(d)


if __name__ == "__main__":
    main()
