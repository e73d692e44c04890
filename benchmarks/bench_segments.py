"""What MetaSeg's segment metrics add to segment_images.py (a benchmark, not a test).

On generated 1024 x 2048 frames (smooth colour gradients plus noise, JPEG) with generated masks (19 classes,
the top rows 255 = ignore), a random-init torchvision model with 19 classes, plus a fixed smooth logit field
so that its class map has many segments, runs segment_images.py's loop (``ood.segmentation.runner.segment``)
without and with segments (alternating, ``--repeat`` times each, all five pixel detectors); the seconds per
frame of each, their ratio, the segments per frame and the segment metrics alone on one frame are printed.

    python benchmarks/bench_segments.py [--model deeplabv3_mobilenet_v3_large] [--frames 4] [--repeat 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ood.runtime import Dist, default_workers
from ood.segmentation import runner
from ood.segments.metrics import pixel_maps, segment_metrics
from ood.segments.table import read_segments


def make_frames(root: Path, n: int, h: int = 1024, w: int = 2048, classes: int = 19, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder = root / "img" / "n00"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:h, 0:w]
    lines = []
    for i in range(n):
        base = np.stack([(xx // (i + 2)) % 256, (yy // 3) % 256, ((xx + yy) // 5) % 256], -1)
        img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
        mask = ((yy // 128) * 3 + (xx // 256) + i) % classes
        mask[:64] = 255
        Image.fromarray(mask.astype(np.uint8)).save(folder / f"{i}.png")
        lines.append(f"n00/{i}.jpg n00/{i}.png")
    (root / "list.txt").write_text("\n".join(lines) + "\n")


class Structured(torch.nn.Module):
    """The model plus a fixed smooth random logit field, so that its class map has segments of many sizes (a
    random-init model alone predicts nearly one class everywhere, and the labelling would cost nothing)."""

    def __init__(self, model, classes: int, grid: int, seed: int = 0):
        super().__init__()
        self.model, self.classes, self.grid, self.seed = model, classes, grid, seed
        self.field = None

    def forward(self, x):
        out = self.model(x)
        if self.field is None or self.field.shape[-2:] != x.shape[-2:]:
            g = torch.Generator().manual_seed(self.seed)
            coarse = 4 * torch.randn(1, self.classes, self.grid, 2 * self.grid, generator=g)
            self.field = torch.nn.functional.interpolate(coarse, size=x.shape[-2:], mode="bicubic")
        return {"out": out["out"] + self.field}


def run(root: Path, segmenter, batch: int) -> float:
    data = runner.load_inputs(root / "img", root / "list.txt", "imagenet_s", "none")
    out = root / ("seg.h5" if segmenter.segments else "plain.h5")
    tic = time.perf_counter()
    runner.segment(out, data, root / "img", segmenter, batch=batch, workers=default_workers(Dist()),
                   overwrite=True)
    return time.perf_counter() - tic


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="deeplabv3_mobilenet_v3_large", choices=runner.MODELS)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--grid", type=int, default=12, help="rows of the coarse logit field (more = more segments)")
    p.add_argument("--dir", help="work folder (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        make_frames(root, args.frames)
        torch.manual_seed(0)
        model = Structured(runner.build_model(args.model, 19), 19, args.grid).eval()
        detectors = list(runner.PIXEL_DETECTORS)
        segmenters = {s: runner.Segmenter(model, torch.device("cpu"), detectors, amp="off", segments=s)
                      for s in (False, True)}
        times = {False: [], True: []}
        for _ in range(args.repeat):
            for segments in (False, True):
                times[segments].append(run(root, segmenters[segments], args.batch) / args.frames)
        plain, seg = statistics.median(times[False]), statistics.median(times[True])
        sizes = {s: (root / ("seg.h5" if s else "plain.h5")).stat().st_size / args.frames / 2 ** 20
                 for s in (False, True)}
        table = read_segments(root / "seg.h5")
        x = runner.transform(Image.open(root / "img" / "n00" / "0.jpg").convert("RGB"))[None]
        with torch.inference_mode():
            probs = torch.softmax(model(x)["out"], 1)[0].numpy()
        gt = np.asarray(Image.open(root / "img" / "n00" / "0.png")).astype(np.int64)
        tic = time.perf_counter()
        maps = pixel_maps(probs)
        t_maps = time.perf_counter() - tic
        tic = time.perf_counter()
        segment_metrics(probs, maps=maps, gt=gt)
        t_metrics = time.perf_counter() - tic
        print(f"{args.model} + logit field (grid {args.grid}), {args.frames} frames 1024x2048, 19 classes, "
              f"batch {args.batch}, {torch.get_num_threads()} torch threads, five pixel detectors, "
              f"median of {args.repeat}")
        print(f"segments per frame: {len(table) / args.frames:.0f}")
        print(f"segment_images --no-segments: {plain:.2f} s/frame ({sizes[False]:.1f} MiB/frame)")
        print(f"segment_images --segments:    {seg:.2f} s/frame ({sizes[True]:.1f} MiB/frame)")
        print(f"added by segments: {100 * (seg / plain - 1):+.1f} %")
        print(f"alone on frame 0: E/D/V maps {t_maps:.2f} s, segment metrics + IoU {t_metrics:.2f} s")


if __name__ == "__main__":
    main()
