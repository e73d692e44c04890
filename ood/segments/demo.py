"""The data and the segmentation model of ``make demo-segments``: scenes built from what scikit-learn ships.

``scenes`` splits the handwritten digits of ``load_digits`` in two halves (every class in both). The *scene*
half is pasted, rendered as in ``make demo`` (white ink on a black square, upscaled), onto textured backgrounds
cut from the two sample photographs (``load_sample_images``): training scenes hold only in-distribution digits
0-4, test scenes hold ID digits and out-of-distribution digits 5-9, five OOD kinds the segmentation model never
sees. Masks hold class ids: 0 background, 1 + d for digit d (1-5 ID, 6-10 OOD); lists are ``image mask`` lines
(``--list_format imagenet_s``), ``classes.txt`` names the ids. The *backbone* half becomes crops of all ten
digits on the same kind of backgrounds (``backbone/<digit>/*.png``, ``backbone_{train,test}.txt``), the training
data of the embedding backbone: it plays the part of the paper's ImageNet backbone, which knows many more kinds
of object than the segmentation network's label set (Oberdiek et al. embed Cityscapes / A2D2 OOD segments with
ImageNet classifiers), while never seeing a digit of the scenes.

``train`` fits a torchvision segmentation model (segment_images.py's ``build_model``, random init) on the
training scenes on the CPU with a fixed seed and thread count, recalibrates its BatchNorm statistics, reports
the mean IoU of the six ID classes on the ID pixels of the test scenes and saves the state dict for
``segment_images.py --checkpoint``.

``report`` reads the JSON of ``python -m ood.segments retrieve`` and prints the retrieval mAP of each OOD kind
next to chance (the share of that kind among the segments retrieved from), failing when the mean over the OOD
kinds is not at least ``--min_ratio`` times chance.

>>> class_names()[:2], ood_ids()
(['background', 'digit 0'], [6, 7, 8, 9, 10])
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..fileio import atomic_path, write_text

ID_DIGITS = (0, 1, 2, 3, 4)
OOD_DIGITS = (5, 6, 7, 8, 9)
NUM_CLASSES = 1 + len(ID_DIGITS)  # background + the ID digits: what the segmentation model predicts
SIZE = 64


def class_names() -> list:
    """Names of the mask ids 0..10."""
    return ["background"] + [f"digit {d}" for d in ID_DIGITS] + [f"OOD digit {d}" for d in OOD_DIGITS]


def ood_ids() -> list:
    """The mask ids of the OOD kinds."""
    return [1 + d for d in OOD_DIGITS]


def _backgrounds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` random square crops (side size..3 size) of the sample photographs, resized to ``size``."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(img) for img in load_sample_images().images]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(size, 3 * size + 1))
        x, y = int(rng.integers(0, photo.width - side + 1)), int(rng.integers(0, photo.height - side + 1))
        out[i] = np.asarray(photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR))
    return out


def _place(rng, size: int, sides: Sequence[int], gap: int = 3) -> list:
    """Top-left corners for squares of ``sides`` that do not touch (rejection sampling; a square that finds no
    room after 100 tries is left out: None)."""
    taken, corners = [], []
    for s in sides:
        corner = None
        for _ in range(100):
            y, x = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
            if all(y + s + gap <= ty or ty + ts + gap <= y or x + s + gap <= tx or tx + ts + gap <= x
                   for ty, tx, ts in taken):
                corner = (y, x)
                taken.append((y, x, s))
                break
        corners.append(corner)
    return corners


def _paste(image: np.ndarray, mask: Optional[np.ndarray], grid: np.ndarray, value: int, corner, side: int):
    from ..demo import render

    y, x = corner
    image[y:y + side, x:x + side] = np.asarray(render(grid, side))[..., None]
    if mask is not None:
        mask[y:y + side, x:x + side] = value


def _save(path: Path, array: np.ndarray, mode: str = "RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode=mode).save(tmp, format="png")


def make_scenes(out, n_train: int = 500, n_test: int = 150, size: int = SIZE, seed: int = 0, min_side: int = 18,
                max_side: int = 28, crops_per_digit: int = 1, test_fraction: float = 0.15,
                backbone_limit: Optional[int] = None) -> Dict[str, Path]:
    """Write the scenes (``images/``, ``masks/``, ``train.txt``, ``test.txt``, ``classes.txt``) and the backbone
    crops (``backbone/``, ``backbone_{train,test}.txt``; at most ``backbone_limit``) under ``out``; returns the
    paths of the lists."""
    from sklearn.datasets import load_digits

    if min_side < 8 or max_side < min_side or max_side > size // 2:
        raise InputError(f"digit sides must satisfy 8 <= min <= max <= {size // 2}, got {min_side}..{max_side}")
    rng = np.random.default_rng(seed)
    digits = load_digits()
    halves = [[], []]
    for d in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == d))
        halves[0].append(rows[:len(rows) // 2])
        halves[1].append(rows[len(rows) // 2:])
    scene_half, backbone_half = np.concatenate(halves[0]), np.concatenate(halves[1])
    id_rows = rng.permutation(scene_half[np.isin(digits.target[scene_half], ID_DIGITS)])
    cut = 2 * len(id_rows) // 3
    pools = {"train": id_rows[:cut], "test_id": id_rows[cut:],
             "test_ood": scene_half[np.isin(digits.target[scene_half], OOD_DIGITS)]}
    out = Path(out)
    result = {}
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for i, background in enumerate(_backgrounds(rng, n, size)):
            if split == "train":
                rows = rng.choice(pools["train"], int(rng.integers(2, 5)))
            else:
                rows = np.concatenate([rng.choice(pools["test_id"], int(rng.integers(1, 3))),
                                       rng.choice(pools["test_ood"], int(rng.integers(1, 3)))])
            image, mask = background.copy(), np.zeros((size, size), np.uint8)
            sides = [int(rng.integers(min_side, max_side + 1)) for _ in rows]
            for r, side, corner in zip(rows, sides, _place(rng, size, sides)):
                if corner is not None:
                    _paste(image, mask, digits.images[r], 1 + digits.target[r], corner, side)
            name = f"{split}/{i:04d}.png"
            _save(out / "images" / name, image)
            _save(out / "masks" / name, mask, "L")
            lines.append(f"images/{name} masks/{name}")
        result[split] = out / f"{split}.txt"
        write_text(result[split], "\n".join(lines) + "\n")
    result["classes"] = out / "classes.txt"
    write_text(result["classes"], "\n".join(class_names()) + "\n")
    result.update(make_backbone_crops(out, digits, backbone_half, rng, crops_per_digit, min_side, max_side,
                                      test_fraction, backbone_limit))
    return result


def make_backbone_crops(out: Path, digits, rows: np.ndarray, rng, per_digit: int, min_side: int, max_side: int,
                        test_fraction: float, limit: Optional[int] = None) -> Dict[str, Path]:
    """``per_digit`` crops of each digit of ``rows`` (at most ``limit``): the digit square at a random place on
    a background patch a little larger than it (as a segment's crop), in class folders, with ``path label``
    lists."""
    lines = []
    rows = rng.permutation(rows)
    n = len(rows) * per_digit if limit is None else min(limit, len(rows) * per_digit)
    sides = rng.integers(min_side, max_side + 1, n)
    margins = rng.integers(0, 9, n)
    backgrounds = _backgrounds(rng, n, max_side + 8)
    for i in range(n):
        r, side = rows[i % len(rows)], int(sides[i])
        size = side + int(margins[i])
        image = backgrounds[i][:size, :size].copy()
        corner = (int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1)))
        _paste(image, None, digits.images[r], 0, corner, side)
        name = f"backbone/{digits.target[r]}/{i:05d}.png"
        _save(out / name, image)
        lines.append(f"{name} {digits.target[r]}")
    order = rng.permutation(len(lines))
    cut = int(round(test_fraction * len(lines)))
    lists = {"backbone_train": out / "backbone_train.txt", "backbone_test": out / "backbone_test.txt"}
    write_text(lists["backbone_test"], "\n".join(lines[i] for i in sorted(order[:cut])) + "\n")
    write_text(lists["backbone_train"], "\n".join(lines[i] for i in sorted(order[cut:])) + "\n")
    return lists


def _load(data_root, list_file, limit: Optional[int] = None):
    """Normalised images [N, 3, H, W] (segment_images.py's transform) and masks [N, H, W] of a scene list."""
    import torch

    from ..data import read_list
    from ..runtime import load_image
    from ..segmentation.runner import read_label_mask, transform

    items = read_list(list_file, "imagenet_s")
    n = len(items) if limit is None else min(limit, len(items))
    root = Path(data_root)
    x = torch.stack([transform(load_image(root / p)) for p in items.paths[:n]])
    y = torch.stack([torch.from_numpy(read_label_mask(root / m).astype(np.int64)) for m in items.extra["mask"][:n]])
    return x, y


def mean_iou(pred: np.ndarray, gt: np.ndarray, classes: int) -> float:
    """Mean over ``classes`` of |pred = c and gt = c| / |pred = c or gt = c|, over the pixels with gt < classes
    (classes absent from both are skipped)."""
    keep = gt < classes
    p, g = pred[keep], gt[keep]
    ious = []
    for c in range(classes):
        union = np.sum((p == c) | (g == c))
        if union:
            ious.append(np.sum((p == c) & (g == c)) / union)
    return float(np.mean(ious))


def recalibrate_batchnorm(model, x, batch: int = 16):
    """Recompute every BatchNorm's running mean and variance as the average over the batches of ``x`` with the
    final weights, then switch to eval mode. torchvision's MobileNetV3 uses momentum 0.01, so after a few hundred
    steps the running statistics still mostly reflect the random initial network and eval mode predicts
    nothing but background."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            model(x[lo:lo + batch])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def train_segmenter(data_root, train_list, test_list, out, model_name: str = "lraspp_mobilenet_v3_large",
                    epochs: int = 6, batch: int = 16, lr: float = 3e-3, seed: int = 0, threads: int = 1,
                    limit: Optional[int] = None, log=print) -> float:
    """Train the segmentation model from scratch on the training scenes, save its state dict to ``out`` and
    return the mean IoU of the ID classes on the ID pixels of the test scenes."""
    import torch
    import torch.nn.functional as F

    from ..demo import deterministic
    from ..progress import Progress
    from ..segmentation.runner import build_model

    tic = time.perf_counter()
    with deterministic(seed, threads):
        x, y = _load(data_root, train_list, limit)
        xt, yt = _load(data_root, test_list, limit)
        model = build_model(model_name, NUM_CLASSES).train().to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps = epochs * -(-len(x) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
        g = torch.Generator().manual_seed(seed)
        log(f"training {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) on "
            f"{len(x)} scenes of {x.shape[2]}x{x.shape[3]}, {NUM_CLASSES} classes, {epochs} epochs, "
            f"{threads} threads")
        with Progress(total=steps, desc="train", unit="batch") as bar:
            for _ in range(epochs):
                order = torch.randperm(len(x), generator=g)
                for lo in range(0, len(order), batch):
                    i = order[lo:lo + batch]
                    loss = F.cross_entropy(model(x[i])["out"], y[i])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    bar.set_postfix_str(f"loss {loss.item():.3f}")
                    bar.update()
        recalibrate_batchnorm(model, x, batch)
        with torch.inference_mode():
            pred = torch.cat([model(xt[i:i + 32])["out"].argmax(1) for i in range(0, len(xt), 32)]).numpy()
    miou = mean_iou(pred, yt.numpy(), NUM_CLASSES)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    log(f"ID mean IoU on the test scenes: {100 * miou:.1f} % ({len(xt)} scenes); checkpoint {out}; "
        f"{time.perf_counter() - tic:.0f} s")
    return miou


def report(retrieval_json, kinds: Sequence[int], space: str = "embedding/euclidean", fmt: str = "markdown"):
    """Lines of the per-kind table (segments, mAP, chance, mAP / chance) and the mean over the kinds; the mean
    mAP and mean chance."""
    from ..report import render

    try:
        doc = json.loads(Path(retrieval_json).read_text())
        rows = {r["class"]: r for r in doc["retrieval"][space]["classes"]}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{retrieval_json}: not a retrieval report with {space!r} ({e.__class__.__name__})") from None
    body, maps, chances = [], [], []
    for c in kinds:
        r = rows.get(c)
        if r is None:
            body.append([str(c), "0", "-", "-", "-"])
            continue
        maps.append(r["map"])
        chances.append(r["chance"])
        body.append([r["name"], str(r["segments"]), f"{100 * r['map']:.1f}", f"{100 * r['chance']:.1f}",
                     f"{r['map'] / r['chance']:.1f}x" if r["chance"] else "-"])
    if not maps:
        raise InputError(f"{retrieval_json}: none of the OOD kinds {list(kinds)} has a query")
    m, ch = float(np.mean(maps)), float(np.mean(chances))
    body.append(["mean over OOD kinds", "", f"{100 * m:.1f}", f"{100 * ch:.1f}", f"{m / ch:.1f}x"])
    lines = [f"retrieval of the OOD kinds among the {doc['with_class']} embedded segments with a ground-truth "
             f"class ({space}; chance = share of the kind among the other segments)"]
    lines += render(["OOD kind", "segments", "mAP %", "chance %", "mAP / chance"], body, fmt)
    return lines, m, ch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood.segments.demo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scenes", help="write the scenes, masks, lists, class names and the backbone crops")
    s.add_argument("out", help="folder for images/, masks/, backbone/, train.txt, test.txt, classes.txt, "
                               "backbone_{train,test}.txt")
    s.add_argument("--train", type=int, default=500, help="training scenes (ID digits only)")
    s.add_argument("--test", type=int, default=150, help="test scenes (ID and OOD digits)")
    s.add_argument("--size", type=int, default=SIZE, help="scene side in pixels")
    s.add_argument("--crops_per_digit", type=int, default=1, help="backbone crops of each digit of its half")
    s.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="train the segmentation model on the training scenes")
    t.add_argument("data_root")
    t.add_argument("out", help="checkpoint (state dict) for segment_images.py --checkpoint")
    t.add_argument("--model", default="lraspp_mobilenet_v3_large")
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--threads", type=int, default=1,
                   help="CPU threads, fixed so that runs repeat exactly (one does not stall when other processes "
                        "share the cores)")
    t.add_argument("--limit", type=int, help="at most this many scenes (quick checks)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--min_miou", type=float, default=0.0, help="fail (exit 1) below this ID mean IoU")
    r = sub.add_parser("report", help="retrieval mAP of each OOD kind against chance")
    r.add_argument("retrieval_json", help="--json of python -m ood.segments retrieve")
    r.add_argument("--space", default="embedding/euclidean")
    r.add_argument("--format", choices=("table", "markdown"), default="table")
    r.add_argument("--min_ratio", type=float, default=0.0, help="fail (exit 1) when the mean mAP over the OOD "
                                                                "kinds is below this multiple of chance")
    return p




def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import run_main

    args = build_parser().parse_args(argv)

    def go():
        if args.command == "scenes":
            paths = make_scenes(args.out, args.train, args.test, args.size, args.seed,
                                crops_per_digit=args.crops_per_digit)
            print(f"{args.train} training and {args.test} test scenes of {args.size}x{args.size} under {args.out} "
                  f"({paths['train']}, {paths['test']}); backbone crops of all ten digits "
                  f"({paths['backbone_train']}, {paths['backbone_test']})")
            return 0
        if args.command == "train":
            miou = train_segmenter(args.data_root, Path(args.data_root) / "train.txt",
                                   Path(args.data_root) / "test.txt", args.out, args.model, args.epochs, args.batch,
                                   args.lr, args.seed, args.threads, args.limit,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
            if miou < args.min_miou:
                print(f"error: ID mean IoU {miou:.3f} is below --min_miou {args.min_miou}", file=sys.stderr)
                return 1
            return 0
        lines, m, ch = report(args.retrieval_json, ood_ids(), args.space, args.format)
        print("\n".join(lines))
        if m < args.min_ratio * ch:
            print(f"error: mean mAP over the OOD kinds {100 * m:.1f} % is below {args.min_ratio} x chance "
                  f"({100 * ch:.1f} %)", file=sys.stderr)
            return 1
        return 0
    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
