"""Time to train a MOS group-softmax head on cached features at ImageNet scale (a benchmark, not a test).

200,000 train features of width 2048 (rectified class centres plus noise), 1000 classes in MOS's 8 ImageNet
groups (398, 521, 9, 7, 52, 8, 3, 2 classes), the MOS recipe of ``ood.heads.train`` (BiT schedule: 10,000 steps
of batch 512 for this train-set size). Prints the machine, the schedule, seconds in all and per step, and the
final train group accuracy. ``--steps`` times only the first steps of the schedule and extrapolates.

    python benchmarks/bench_heads.py [--n 200000] [--dim 2048] [--groups mos|none|kmeans:K] [--threads 2]
                                     [--device cpu] [--steps S]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from ood.data import read_groups as read_group_counts
from ood.heads import group_accuracy, kmeans_groups
from ood.heads.groups import layout_from_counts
from ood.heads.train import class_means, schedule, train_head


def make_features(n, C, D, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((C, D), dtype=np.float32) * 0.6
    y = rng.integers(0, C, n)
    x = np.empty((n, D), np.float32)
    for lo in range(0, n, 20000):
        hi = min(n, lo + 20000)
        np.maximum(centers[y[lo:hi]] + rng.standard_normal((hi - lo, D), dtype=np.float32), 0, out=x[lo:hi])
    return x, y


def matmul_gflops(device, n=512, d=2048, c=1008, reps=20) -> float:
    """Throughput of the step's own matrix product shape, to compare a step with its arithmetic."""
    a, b = torch.randn(n, d, device=device), torch.randn(c, d, device=device)
    a @ b.T
    t = time.perf_counter()
    for _ in range(reps):
        a @ b.T
    if device.type == "cuda":
        torch.cuda.synchronize()
    return reps * 2 * n * d * c / (time.perf_counter() - t) / 1e9


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--groups", default="mos", help="mos (8 ImageNet groups of 1000 classes), none, kmeans:K")
    p.add_argument("--classes", type=int, default=1000, help="classes for none / kmeans:K")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, help="time only this many steps of the schedule and extrapolate")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    C = args.classes
    if args.groups == "mos":
        g = layout_from_counts(read_group_counts(None))
        C = g.size
    x, y = make_features(args.n, C, args.dim)
    if args.groups == "none":
        g = None
    elif args.groups.startswith("kmeans:"):
        g = kmeans_groups(class_means(x, y, C), int(args.groups.split(":")[1]))
    print(f"data: {args.n} x {args.dim}, {C} classes, groups {args.groups}; made in {time.perf_counter() - t:.1f}s")
    device = torch.device(args.device)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} on {args.threads} threads, "
          f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))

    gflops = matmul_gflops(device, d=args.dim, c=C + (0 if g is None else int(g.max()) + 1))
    full = schedule(args.n)
    epochs = None if args.steps is None else args.steps * 512 / args.n
    t = time.perf_counter()
    head, recipe = train_head(x, y, C, g, epochs=epochs, seed=0, device=args.device, progress=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - t
    steps = recipe["steps"][-1]
    per_step = took / steps
    bound = 2 * 2 * 512 * args.dim * (C + (0 if g is None else int(g.max()) + 1)) / (gflops * 1e9)
    print(f"schedule {full} (batch 512); ran {steps} steps in {took:.1f}s = {1000 * per_step:.1f} ms/step; "
          f"full schedule {full[-1] * per_step / 60:.1f} min; the two matrix products of a step at the measured "
          f"{gflops:.0f} GFLOP/s take {1000 * bound:.1f} ms ({per_step / bound:.2f}x); load average "
          f"{os.getloadavg()[0]:.1f}")
    if g is not None and args.steps is None:
        print(f"train group accuracy {100 * group_accuracy(head, x, y, args.device):.2f}%")


if __name__ == "__main__":
    main()
