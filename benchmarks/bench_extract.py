"""Speed of extract_features.py against the model's forward alone and a plain ViM-style loop (a benchmark, not a test).

On generated JPEGs (smooth gradients plus noise, 320 x 240 to 500 x 375), with a random-init timm model and
ViM's preprocessing (``--resize``): images/s of

- forward only: the model on ready, preprocessed tensors in memory (the ceiling);
- extraction: ``ood.extract.extract_split`` (DataLoader workers decoding and resizing, inference mode,
  channels-last, rows streamed to HDF5), for several worker counts;
- ViM loop: single process, PIL, one batch at a time, features appended to a list and pickled at the end.

    python benchmarks/bench_extract.py [--model resnet18] [--size 224] [--images 256] [--batch 32] [--repeat 2]
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ood.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone
from ood.data import scan_folder
from ood.extract import extract_split
from ood.runtime import Extractor, load_image


def make_jpegs(root: Path, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = (500, 375) if i % 2 else (320, 240)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
        img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i:05d}.jpg", quality=90)


def forward_only(backbone, extractor, paths, root, batch):
    """The extractor (batch normalisation, forward, head) on decoded, resized images already in memory."""
    x = torch.stack([backbone.transform(load_image(root / p)) for p in paths])
    extractor(x[:batch])  # warm-up
    tic = time.perf_counter()
    for lo in range(0, len(x), batch):
        extractor(x[lo:lo + batch])
    return len(x) / (time.perf_counter() - tic)


def vim_loop(backbone, size, paths, root, batch, out):
    """ViM's extractor as written, minus the DataLoader workers: decode, stack, forward, collect, pickle."""
    from torchvision import transforms as T

    transform = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    model = backbone.model
    tic = time.perf_counter()
    features = []
    with torch.no_grad():
        for lo in range(0, len(paths), batch):
            x = torch.stack([transform(Image.open(root / p).convert("RGB")) for p in paths[lo:lo + batch]])
            features.append(model.forward_head(model.forward_features(x), pre_logits=True).numpy())
    with open(out, "wb") as f:
        pickle.dump(np.concatenate(features), f)
    return len(paths) / (time.perf_counter() - tic)


def extraction(extractor, data, root, batch, workers, out):
    attrs = dict(model="bench", backend="timm", preprocess={}, dtype="float32", amp="off")
    summary = extract_split(out, data, root, extractor, attrs, batch=batch, workers=workers, resume=False,
                            overwrite=True, skip_bad=False, progress=False, log=lambda m: None,
                            threads=len(os.sched_getaffinity(0)))
    return summary["images"] / summary["seconds"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", default="0,1", help="comma list of DataLoader worker counts (0 = threads)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each measurement; the best is kept")
    args = p.parse_args()
    torch.manual_seed(0)
    cpus = len(os.sched_getaffinity(0))
    print(f"{args.model} at {args.size}px, {args.images} JPEGs, batch {args.batch}, CPU, {cpus} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        make_jpegs(root, args.images)
        data = scan_folder(root, "none")
        backbone = create_backbone("timm", args.model, resize=args.size)
        extractor = Extractor(backbone, torch.device("cpu"), "off", "float32", channels_last=True)
        plain = create_backbone("timm", args.model, resize=args.size)  # contiguous, as ViM runs it
        runs = {"forward only (ready tensors)": lambda: forward_only(backbone, extractor, data.paths, root, args.batch)}
        for w in [int(v) for v in args.workers.split(",")]:
            runs[f"extraction, {w} workers" if w else "extraction, threads"] = lambda w=w: extraction(extractor, data, root, args.batch, w,
                                                                      Path(tmp) / "f.h5")
        runs["ViM-style loop (1 process)"] = lambda: vim_loop(plain, args.size, data.paths, root, args.batch,
                                                              Path(tmp) / "f.pkl")
        rates = {name: 0.0 for name in runs}
        for _ in range(args.repeat):  # interleaved, best of each: a shared machine's load hits all alike
            for name, fn in runs.items():
                rates[name] = max(rates[name], fn())
    ceiling = rates["forward only (ready tensors)"]
    for name, rate in rates.items():
        print(f"{name:32s} {rate:8.1f} images/s  {rate / ceiling:5.2f}x forward")


if __name__ == "__main__":
    main()
