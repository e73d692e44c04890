"""Speed of the segmentation evaluators on generated data.

1. ImageNet-S: ``--masks`` gt/prediction PNG pairs of ImageNet-like sizes (12,419 = the ImageNet-S-919
   validation set), 919 classes, evaluated with ``--workers`` processes.
2. Pixel OOD: ``--frames`` frames of 1024x2048 with one stored score map, evaluated in streaming mode
   (pixel histogram and components).
Usage: python benchmarks/bench_segmentation.py [--masks 12419] [--frames 1000] [--workers 2] [--dir DIR]
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
    writer = SegmentationWriter(path, n, ["maxlogit"], with_gt=True, overwrite=True)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        gt = np.zeros((h, w), np.int16)
        cy, cx = rng.integers(200, h - 200), rng.integers(200, w - 200)
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 < 80 ** 2] = 1
        gt[:100] = 255
        score = (rng.normal(size=(h, w)).astype(np.float32) - 2.5 * gt).astype(np.float16)
        writer.append({"maxlogit": [score]}, [np.zeros((h, w), np.int16)], [gt], [f"{i}.png"])
    writer.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--masks", type=int, default=12419)
    p.add_argument("--frames", type=int, default=1000)
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
        if args.frames:
            tic = time.perf_counter()
            make_frames(root / "frames.h5", args.frames, rng)
            size = (root / "frames.h5").stat().st_size
            print(f"generated {args.frames} frames 1024x2048 in {time.perf_counter() - tic:.1f} s, "
                  f"{size / args.frames / 2 ** 20:.1f} MiB/frame (score float16 + pred + gt, lzf)")
            for components in (False, True):
                tic = time.perf_counter()
                rec = evaluate_ood(root / "frames.h5", mode="streaming", bins=10000, components=components,
                                   min_pred_size=500, min_gt_size=100)[0]
                sec = time.perf_counter() - tic
                print(f"pixel OOD streaming{' + components' if components else ''}, {args.frames} frames: "
                      f"{sec:.1f} s ({1000 * sec / args.frames:.0f} ms/frame); AUROC {rec['auroc']:.4f}"
                      + (f", mean F1 {rec['f1_mean']:.3f}" if components else ""))


if __name__ == "__main__":
    main()
