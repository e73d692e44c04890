"""Speed of every detector at ImageNet scale on random features (a benchmark, not a test).

C = 1000 classes, D = 2048, 200,000 train, 50,000 ID test and four OOD sets of 10,000 (rectified class
centres plus noise, so the detectors do real work). Prints seconds per detector, the total, the peak memory
against the size of the input features, and for the heavy detectors the floating-point work divided by the
machine's measured matrix-multiply throughput ("x times the arithmetic lower bound").

    python benchmarks/bench_detectors.py [--scale 1.0] [--methods a,b] [--device cpu] [--logits stored]

``--logits stored`` (the default) gives every split its logits, as extract_features.py writes them, so reading
them is not work; ``--logits head`` leaves them out, so every logit pass is a product with the head.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from ood.engine import run_detectors as run
from ood.inputs import Inputs
from ood.detectors import get_detector_class, list_detectors
from ood.features import Head
from ood.split import Split, resolve_device


def rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def peak_gb() -> float:
    """The peak resident set since the last :func:`reset_peak` (VmHWM), GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak():
    """Start the peak afresh (Linux: writing 5 to clear_refs resets VmHWM), so the data generation's
    temporaries do not count as the run's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def matmul_gflops(device, D=2048) -> float:
    a = torch.randn(8192, D, device=device)
    b = torch.randn(D, 1000, device=device)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 5 * 2 * 8192 * D * 1000 / (time.perf_counter() - t) / 1e9


def make_features(n_train, n_test, n_ood, C, D, seed=0, logits=True):
    """The head and (features, labels, logits or None) of the train, ID test and four OOD splits."""
    rng = np.random.default_rng(seed)
    centers = (rng.standard_normal((C, D), dtype=np.float32) * 0.6).astype(np.float32)
    W = (centers / np.linalg.norm(centers, axis=1, keepdims=True) * 3).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32) * 0.1

    def draw(n, shift=0.0, labelled=True):
        y = rng.integers(0, C, n)
        x = np.empty((n, D), np.float32)
        for lo in range(0, n, 20000):
            hi = min(n, lo + 20000)
            noise = rng.standard_normal((hi - lo, D), dtype=np.float32)
            base = centers[y[lo:hi]] * (0.3 if not labelled else 1.0) + shift
            np.maximum(base + noise, 0, out=x[lo:hi])
        z = None
        if logits:
            z = np.empty((n, C), np.float32)
            for lo in range(0, n, 20000):
                np.add(x[lo:lo + 20000] @ W.T, b, out=z[lo:lo + 20000])
        return x, (y if labelled else np.full(n, -1)), z

    train = draw(n_train)
    test = draw(n_test)
    oods = [draw(n_ood, shift=0.1 * k, labelled=False) for k in range(4)]
    return Head(W, b), train, test, oods


def work(n_tr, n_s, C, D, dim, stored_logits=True) -> dict:
    """The distinct heavy intermediate results of a run and their floating-point work (float32 products and
    eigendecompositions; memory-bound passes are not counted). Stored logits are read, not computed."""
    logits, gram, eig = 2 * n_s * D * C, 1.5 * n_tr * D * D, 9 * D ** 3  # the Gram: three quarters computed
    read = 0 if stored_logits else 1
    return {
        "scored logits": read * logits, "clipped logits (react)": logits, "clipped logits (local_react)": logits,
        "train Gram": gram, "train Gram eigh": eig, "train logit pass": read * 2 * n_tr * D * C,
        "residuals": 2 * (n_tr + n_s) * D * (D - dim),
        "Mahalanobis precision and products": eig + 2 * n_s * D * D + 2 * n_s * D * C,
        "class-mean softmax KL": 2 * n_s * C * C,
        "kNN search": 2 * n_tr * n_s * D, "NNGuide bank search": 2 * -(-n_tr // 100) * n_s * D,
        **{f"{m} product": logits for m in ("ash_p/ash_s", "ash_b", "vra", "dice", "nusa")},
        "NECO PCA and projection": eig + 2 * n_s * D * D,
        "RMD background precision and products": eig + 2 * n_s * D * D,
        "pNML normalised Gram, pinv, projection": gram + eig + 2 * n_s * D * D,
        "OpenMax two train logit passes": read * 2 * 2 * n_tr * D * C,
    }


NEEDS = {
    **{m: ["scored logits"] for m in ("msp", "maxlogit", "energy", "entropy", "gen", "gradnorm", "odin",
                                      "temp_scaling", "she", "nci", "scale", "lts", "grad_uncertainty")},
    "react": ["clipped logits (react)"], "gen_react": ["clipped logits (react)"],
    "local_react": ["clipped logits (local_react)"], "gen_local_react": ["clipped logits (local_react)"],
    "vim": ["scored logits", "train Gram", "train Gram eigh", "train logit pass", "residuals"],
    "residual": ["train Gram", "train Gram eigh", "residuals"],
    "gen_residual": ["scored logits", "train Gram", "train Gram eigh", "train logit pass", "residuals"],
    "mahalanobis": ["train Gram", "Mahalanobis precision and products"],
    "kl_matching": ["scored logits", "train logit pass", "class-mean softmax KL"],
    "knn": ["kNN search"], "nnguide": ["scored logits", "train logit pass", "NNGuide bank search"],
    "ash_p": ["ash_p/ash_s product"], "ash_s": ["ash_p/ash_s product"],
    **{m: [f"{m} product"] for m in ("ash_b", "vra", "dice", "nusa")},
    "fdbd": ["scored logits"],
    "neco": ["scored logits", "train Gram", "NECO PCA and projection"],
    "rmd": ["train Gram", "Mahalanobis precision and products", "RMD background precision and products"],
    "pnml": ["scored logits", "pNML normalised Gram, pinv, projection"],
    "openmax": ["scored logits", "OpenMax two train logit passes"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every split size (0.1 for a quick look)")
    ap.add_argument("--methods", help="comma list (default: every detector the benchmark runs "
                    "by default on feature files: no kNN, no extra heads)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--logits", choices=("stored", "head"), default="stored",
                    help="stored: every split has its logits, as extract_features.py writes them (default); "
                    "head: none has, every logit pass multiplies by the head")
    ap.add_argument("--tune", action="store_true", help="also time the full tuning sweep (ood.tuning) of the "
                    "methods, ID validation = 10%% of the ID test split, OOD validation = the first OOD set")
    args = ap.parse_args()
    device = resolve_device(args.device)
    C, D = 1000, 2048
    n_tr, n_te, n_ood = (int(200_000 * args.scale), int(50_000 * args.scale), int(10_000 * args.scale))
    t0 = time.perf_counter()
    stored = args.logits == "stored"
    head, train, test, oods = make_features(n_tr, n_te, n_ood, C, D, logits=stored)
    print(f"generated features{' and logits' if stored else ''} in {time.perf_counter() - t0:.1f}s")
    input_gb = sum(a.nbytes for s in [train, test, *oods] for a in (s[0], s[2]) if a is not None) / 2**30
    inputs = Inputs(head, Split.from_arrays("train", train[0], head, logits=train[2], labels=train[1], device=device),
                    Split.from_arrays("id", test[0], head, logits=test[2], labels=test[1], device=device),
                    [Split.from_arrays(f"ood{k}", x, head, logits=z, device=device) for k, (x, _, z) in enumerate(oods)])
    inputs.train.keep_logits = False  # as ood.inputs.load_inputs does
    for s in [inputs.train, inputs.test, *inputs.oods]:
        s.source.path = s.path  # in-memory inputs: nothing to read
        s.features
    methods = args.methods.split(",") if args.methods else [
        m for m in list_detectors()
        if get_detector_class(m).default and set(get_detector_class(m).requires) <= {"train_labels"}]
    gflops_before = matmul_gflops(device)
    base = rss_gb()
    reset_peak()
    print(f"device {device}, {torch.get_num_threads()} threads, matmul {gflops_before:.0f} GFLOP/s; "
          f"input features{' and logits' if stored else ''} {input_gb:.2f} GiB, RSS before run {base:.2f} GiB")
    t0 = time.perf_counter()
    result = run(inputs, methods, {}, "vim", log=lambda m: print(f"{m}  peak RSS {peak_gb():.2f} GiB", flush=True))
    total = time.perf_counter() - t0
    peak = peak_gb()
    gflops_after = matmul_gflops(device)
    gflops = max(gflops_before, gflops_after)  # a shared VM's rate varies: the bound takes the better one
    print(f"\nmatmul {gflops_before:.0f} GFLOP/s before the run, {gflops_after:.0f} after: the bound takes "
          f"{gflops:.0f}")
    n_s = n_te + 4 * n_ood
    items = work(n_tr, n_s, C, D, dim=1000, stored_logits=stored)
    done = set()
    print(f"{'method':<16s} {'seconds':>8s} {'GFLOP':>8s} {'bound s':>8s} {'x bound':>8s}  (work first done here)")
    for m in result.timings:  # the order the run took: shared work counts where it was first done
        new = [w for w in NEEDS.get(m, []) if w not in done]
        done.update(new)
        f = sum(items[w] for w in new)
        t = result.timings[m]
        if f:
            bound = f / (gflops * 1e9)
            print(f"{m:<16s} {t:8.2f} {f / 1e9:8.0f} {bound:8.2f} {t / bound:8.2f}  {', '.join(new)}")
        else:
            print(f"{m:<16s} {t:8.2f} {'-':>8s} {'-':>8s} {'-':>8s}")
    union = sum(items[w] for w in done) / (gflops * 1e9)
    unknown = [m for m in methods if m not in NEEDS]
    print(f"\ntotal {total:.1f}s for {len(methods)} detectors; arithmetic bound of the union of their distinct "
          f"heavy work {union:.1f}s ({len(done)} items); whole run / bound = {total / union:.2f}"
          + (f"; no work model for {', '.join(unknown)}" if unknown else ""))
    print(f"peak RSS {peak:.2f} GiB (process), growth during the run {peak - base:.2f} GiB; "
          f"(input + growth) / input = {(input_gb + peak - base) / input_gb:.2f}")
    if args.tune:
        time_tuning(inputs, methods)


def time_tuning(inputs, methods):
    """Seconds of the full grid sweep of every method with a grid, on the train statistics already memoised."""
    from ood import tuning

    id_val, _ = tuning.hold_out(inputs.test)
    ood_val = inputs.oods[0]
    print(f"\ntuning sweep: {id_val.n} ID and {ood_val.n} OOD validation rows")
    t0 = time.perf_counter()
    for m in methods:
        points = tuning.grid_points(m)
        if points == [{}]:
            continue
        t = time.perf_counter()
        c = tuning.tune_method(m, inputs.train, id_val, ood_val)
        print(f"{m:<16s} {time.perf_counter() - t:8.2f}s  {len(points):3d} points  chose {c.params}", flush=True)
    print(f"tuning sweep total {time.perf_counter() - t0:.1f}s; peak RSS {peak_gb():.2f} GiB")


if __name__ == "__main__":
    main()
