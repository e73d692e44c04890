"""Retrieval over segment embeddings at the issue's size (a benchmark, not a test).

N = 100,000 embeddings of width D = 2,048 (float32; 19 class centres plus noise, so rankings are not trivial),
``--queries`` queries (python -m ood.segments retrieve's default, 2,000, a seeded sample) each ranked against
all N: the full-ranking retrieval mAP in euclidean and cosine distance together (one matrix product per block
of queries serves both), then k-nearest-neighbour lists (k = 10) through faiss and through numpy, then the
whole ``retrieve`` step as the command runs it (mAP, the 2-D map of ``--map_max`` segments, clustering of
``--cluster_max``). Time is linear in the queries; the arithmetic lower bound of the mAP step is the 2 Q N D
flops of the product at the better of two matrix-multiply measurements, taken before and after.

    python benchmarks/bench_retrieval.py [--n 100000] [--dim 2048] [--queries 2000] [--threads 2] [--full]
"""
from __future__ import annotations

import argparse
import os
import time


def peak_gb() -> float:
    """Peak resident memory of this process (VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also time the whole retrieve step (2-D map, clusters)")
    ap.add_argument("--map_max", type=int, default=5000)
    ap.add_argument("--cluster_max", type=int, default=5000)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np
    import torch

    from bench_detectors import matmul_gflops
    from ood.segments import retrieve as rt
    from ood.segments.embed import SegmentEmbeddings

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n, d = args.n, args.dim
    centres = rng.standard_normal((args.classes, d), dtype=np.float32) * 0.35
    labels = rng.integers(0, args.classes, n)
    x = np.empty((n, d), np.float32)
    for lo in range(0, n, 10000):
        hi = min(n, lo + 10000)
        x[lo:hi] = np.maximum(centres[labels[lo:hi]] + rng.standard_normal((hi - lo, d), dtype=np.float32), 0)
    q = rt.sample(n, args.queries, 0)
    cpu = torch.device("cpu")
    g1 = matmul_gflops(cpu)
    tic = time.perf_counter()
    aps = rt.average_precisions_by_metric(x, labels, metrics=rt.METRICS, queries=q)
    t_map = time.perf_counter() - tic
    g2 = matmul_gflops(cpu)
    bound = 2 * len(q) * n * d / (max(g1, g2) * 1e9)
    print(f"full-ranking mAP, euclidean + cosine: {len(q)} queries x {n} embeddings x D={d}: {t_map:.1f} s "
          f"(mAP {100 * np.nanmean(aps['euclidean']):.1f} / {100 * np.nanmean(aps['cosine']):.1f} %, chance "
          f"{100 / args.classes:.1f} %); matmul {g1:.0f} / {g2:.0f} GFLOP/s, product bound {bound:.1f} s; "
          f"{len(q) / t_map:.0f} queries/s, all {n} queries would take {n / len(q) * t_map / 60:.0f} min; "
          f"peak RSS {peak_gb():.2f} GiB (embeddings {x.nbytes / 2**30:.2f} GiB)", flush=True)
    for backend in ("faiss", "numpy"):
        tic = time.perf_counter()
        for metric in rt.METRICS:
            rt.knn(x, 10, metric=metric, queries=q, backend=backend)
        print(f"k-NN lists k=10, {backend}, euclidean + cosine: {time.perf_counter() - tic:.1f} s", flush=True)
    if args.full:
        z = np.zeros(n)
        emb = SegmentEmbeddings(path="synthetic", features=x, paths=[""] * n, data_root="", attrs={},
                                row=np.arange(n), image=np.zeros(n, int), segment=np.ones(n, int),
                                pred_class=labels, gt_class=labels, iou=z, iou_pred=z,
                                bbox=np.zeros((n, 4), int), box=np.zeros((n, 4), int))
        tic = time.perf_counter()
        report = rt.retrieve(emb, queries=args.queries, map_max=args.map_max, cluster_max=args.cluster_max,
                             log=lambda m: print("  " + m, flush=True))
        print(f"whole retrieve step (mAP, 2-D map of {args.map_max}, clustering of {args.cluster_max}): "
              f"{time.perf_counter() - tic:.1f} s; peak RSS {peak_gb():.2f} GiB")
        print("\n".join(rt.format_report(report, "markdown")))


if __name__ == "__main__":
    main()
