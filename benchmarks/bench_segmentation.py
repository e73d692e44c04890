"""Speed of the segmentation evaluators on generated data.

1. ImageNet-S: ``--masks`` gt/prediction PNG pairs of ImageNet-like sizes (12,419 = the ImageNet-S-919
   validation set), 919 classes, evaluated with ``--workers`` processes.
2. Pixel OOD: ``--frames`` frames of 1024x2048 and ``--small_frames`` frames of 96x128 with one stored score
   map, evaluated in streaming mode (pixel histogram), then with components: the component pass is the
   difference (median of ``--repeat`` runs).
Usage: python benchmarks/bench_segmentation.py [--masks 12419] [--frames 1000] [--small_frames 40] [--repeat 3]
       [--workers 2] [--dir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ood.data import encode_imagenet_s_mask
from ood.segmentation import imagenet_s
from ood.segmentation.evaluate import evaluate_ood
from ood.segmentation.store import SegmentationWriter


def make_masks(root: Path, n: int, rng):
    for i in range(n):
        h, w = int(rng.integers(300, 501)), int(rng.integers(300, 501))
        gt = np.zeros((h, w), np.int64)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        gt[y:y + rng.integers(20, h), x:x + rng.integers(20, w)] = rng.integers(1, 920)
        gt[:4] = imagenet_s.IGNORE
        pred = gt.copy()
        pred[pred == imagenet_s.IGNORE] = 0
        pred[y + 10:y + 60, x:x + 80] = rng.integers(0, 920)
        folder = f"n{i % 919:08d}"
        for sub, ids in (("gt", gt), ("pred", pred)):
            (root / sub / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(encode_imagenet_s_mask(ids)).save(root / sub / folder / f"{i}.png")


def make_frames(path: Path, n: int, rng, h=1024, w=2048):
    """Frames with one round OOD object (radius h/13, at least 25 px so it outlives the 500 px component
    filter), the top tenth ignored, Gaussian scores."""
    writer = SegmentationWriter(path, n, ["maxlogit"], with_gt=True, overwrite=True)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        gt = np.zeros((h, w), np.int16)
        cy, cx = rng.integers(h // 5, h - h // 5), rng.integers(w // 10, w - w // 10)
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 < max(h // 13, 25) ** 2] = 1
        gt[:h // 10] = 255
        score = (rng.normal(size=(h, w)).astype(np.float32) - 2.5 * gt).astype(np.float16)
        writer.append({"maxlogit": [score]}, [np.zeros((h, w), np.int16)], [gt], [f"{i}.png"])
    writer.close()


def time_ood(path: Path, n: int, h: int, w: int, repeat: int):
    """Median seconds of the streaming pixel pass alone and with components (default sizes 500 and 100)."""
    runs = []
    for _ in range(repeat):
        tic = time.perf_counter()
        evaluate_ood(path, mode="streaming", bins=10000, components=False)
        pixels = time.perf_counter() - tic
        tic = time.perf_counter()
        rec = evaluate_ood(path, mode="streaming", bins=10000, components=True)[0]
        runs.append((pixels, time.perf_counter() - tic))
    pixels, both = np.median(runs, axis=0)
    print(f"pixel OOD streaming, {n} frames {h}x{w}: {pixels:.2f} s ({1000 * pixels / n:.1f} ms/frame); "
          f"+ components {both:.2f} s, so components {both - pixels:.2f} s ({1000 * (both - pixels) / n:.1f} "
          f"ms/frame); AUROC {rec['auroc']:.4f}, mean F1 {rec['f1_mean']:.3f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--masks", type=int, default=12419)
    p.add_argument("--frames", type=int, default=1000, help="1024x2048 frames")
    p.add_argument("--small_frames", type=int, default=40, help="96x128 frames")
    p.add_argument("--repeat", type=int, default=3, help="runs of each pixel OOD timing (median)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dir", help="work folder (default: a temporary one)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        if args.masks:
            tic = time.perf_counter()
            make_masks(root, args.masks, rng)
            print(f"generated {args.masks} mask pairs in {time.perf_counter() - tic:.1f} s")
            tic = time.perf_counter()
            out = imagenet_s.evaluate(root / "gt", root / "pred", 919, workers=args.workers)
            sec = time.perf_counter() - tic
            print(f"ImageNet-S-919 evaluation, {args.masks} masks, {args.workers} workers: {sec:.1f} s "
                  f"({1000 * sec / args.masks:.1f} ms/mask); mIoU {out['mIoU']:.2f}")
        for n, h, w in ((args.small_frames, 96, 128), (args.frames, 1024, 2048)):
            if not n:
                continue
            path = root / f"frames{h}x{w}.h5"
            tic = time.perf_counter()
            make_frames(path, n, rng, h, w)
            print(f"generated {n} frames {h}x{w} in {time.perf_counter() - tic:.1f} s, "
                  f"{path.stat().st_size / n / 2 ** 20:.2f} MiB/frame (score float16 + pred + gt, lzf)")
            time_ood(path, n, h, w, args.repeat)


if __name__ == "__main__":
    main()
