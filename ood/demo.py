"""The `make demo` data and model: real images from what scikit-learn ships, a small timm model trained on CPU.

``prepare`` writes PNG files in class subfolders and ViM-style list files:
in-distribution = handwritten digits 0-4 (``load_digits``), split into train and test; near OOD = digits 5-9, the
same kind of image with new classes (semantic shift, as in SOOD-ImageNet's hard split); far OOD = crops of the
two bundled photographs (``load_sample_images``) put through the digits' own format (8x8, 17 grey levels), so
only their content differs. Every image is rendered the same way, upscaled to 32x32 grey PNG.

``train`` fits a random-init timm model on the train list with the preprocessing ``extract_features.py --resize``
applies (plain resize to a square, ImageNet mean/std), prints the ID test accuracy and saves the timm state
dict as .safetensors under ``checkpoints/``. Deterministic: a fixed seed, deterministic kernels and a fixed
thread count give a byte-identical checkpoint on every run on the same machine.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .data import read_list
from .errors import InputError, ListFormatError
from .fileio import atomic_path, write_text

ID_CLASSES = (0, 1, 2, 3, 4)
SIZE = 32
LEVELS = 16  # load_digits holds integers 0..16
SPLITS = ("train", "test", "near_ood", "far_ood")


def render(grid: np.ndarray, size: int = SIZE):
    """An 8x8 grid of values 0..16 as a ``size`` x ``size`` grey PIL image (white ink on black, bilinear)."""
    from PIL import Image

    pixels = np.round(np.asarray(grid, dtype=np.float64) * (255.0 / LEVELS)).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR)


def photo_grids(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """``n`` random square crops of the bundled photographs as digit-format grids: grey, 8x8, 0..16, stretched."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    names = [Path(f).stem for f in photos.filenames]
    greys = [Image.fromarray(img).convert("L") for img in photos.images]
    grids, sources = np.empty((n, 8, 8)), []
    for i in range(n):
        k = i % len(greys)
        w, h = greys[k].size
        side = int(rng.integers(24, 161))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = np.asarray(greys[k].crop((x, y, x + side, y + side)).resize((8, 8), Image.BOX), dtype=np.float64)
        lo, hi = crop.min(), crop.max()
        grids[i] = np.round(LEVELS * (crop - lo) / max(hi - lo, 1e-9))
        sources.append(names[k])
    return grids, sources


def _write_split(root: Path, split: str, grids, folders, labels, list_path: Path, size: int):
    """``root/split/<folder>/<i>.png`` for every grid (the split's folder is emptied first) and its list file."""
    shutil.rmtree(root / split, ignore_errors=True)
    lines = []
    for i, (grid, folder, label) in enumerate(zip(grids, folders, labels)):
        rel = f"{split}/{folder}/{i:04d}.png"
        (root / split / str(folder)).mkdir(parents=True, exist_ok=True)
        render(grid, size).save(root / rel)
        lines.append(rel if label is None else f"{rel} {label}")
    list_path.parent.mkdir(parents=True, exist_ok=True)
    write_text(list_path, "\n".join(lines) + "\n")


def prepare(data_root, lists_dir, seed: int = 0, test_fraction: float = 1 / 3, far_count: int = 600,
            limit: Optional[int] = None, size: int = SIZE) -> Dict[str, Path]:
    """Write the four splits under ``data_root`` and ``demo_<split>.txt`` lists; returns the list paths.

    ``limit`` keeps at most that many images per split (tests). OOD lists carry no labels (-1 when extracted).
    """
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    images, target = digits.images, digits.target
    is_id = np.isin(target, ID_CLASSES)
    id_idx = rng.permutation(np.flatnonzero(is_id))
    n_test = int(round(test_fraction * id_idx.size))
    idx = {"test": np.sort(id_idx[:n_test]), "train": np.sort(id_idx[n_test:]),
           "near_ood": np.flatnonzero(~is_id)}
    if limit is not None:
        idx = {k: v[:limit] for k, v in idx.items()}
        far_count = min(far_count, limit)
    far, sources = photo_grids(far_count, rng)

    root, lists_dir = Path(data_root), Path(lists_dir)
    lists = {s: lists_dir / f"demo_{s}.txt" for s in SPLITS}
    for split in ("train", "test"):
        y = target[idx[split]]
        _write_split(root, split, images[idx[split]], y, y, lists[split], size)
    near = idx["near_ood"]
    _write_split(root, "near_ood", images[near], target[near], [None] * near.size, lists["near_ood"], size)
    _write_split(root, "far_ood", far, sources, [None] * far_count, lists["far_ood"], size)
    return lists


def load_split(data_root, list_file, size: int = SIZE, limit: Optional[int] = None):
    """(images [N, 3, size, size] float32, labels [N] int64) of a list, through the extractor's own
    ``--resize`` preprocessing (decode, resize, ImageNet mean/std), so training and extraction see the same."""
    import torch

    from .backbones import resize_transform
    from .runtime import load_image

    items = read_list(list_file)
    n = len(items) if limit is None else min(limit, len(items))
    transform, mean, std, _ = resize_transform(size)
    images = torch.stack([transform(load_image(Path(data_root) / path)) for path in items.paths[:n]])
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (mean, std))
    return (images.float() / 255 - mean) / std, torch.as_tensor(items.labels[:n], dtype=torch.long)


@contextmanager
def deterministic(seed: int, threads: int):
    """Inside: torch's RNG seeded, deterministic kernels, a fixed CPU thread count; outside, the caller's state."""
    import torch

    was_deterministic, was_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was_deterministic)
            torch.set_num_threads(was_threads)


def shift(x, pad: int, generator):
    """Each image moved by a random offset of up to ``pad`` pixels each way; the edge pixels fill the gap."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(n, h, w)
    flat = (rows * (w + 2 * pad) + cols).reshape(n, 1, -1).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, flat).reshape_as(x)


def train(data_root, train_list, test_list, out, model_name: str = "resnet18", epochs: int = 12,
          batch: int = 64, lr: float = 2e-3, seed: int = 0, threads: int = 1, size: int = SIZE,
          limit: Optional[int] = None, log=print) -> float:
    """Train ``model_name`` from scratch, save its state dict to ``out``, return the ID test accuracy."""
    import timm
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from .features import file_sha256
    from .progress import Progress

    with deterministic(seed, threads):
        x_train, y_train = load_split(data_root, train_list, size, limit)
        x_test, y_test = load_split(data_root, test_list, size, limit)
        if (y_train < 0).any():
            raise ListFormatError(f"{train_list}: every train line needs an integer label")
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        steps = epochs * -(-len(x_train) // batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
        g = torch.Generator().manual_seed(seed)
        log(f"training {model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters) on "
            f"{len(x_train)} images, {num_classes} classes, {epochs} epochs, {threads} threads")
        bar = Progress(total=steps, desc="train", unit="batch")
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(x_train), generator=g)
            for start in range(0, len(order), batch):
                i = order[start:start + batch]
                loss = F.cross_entropy(model(shift(x_train[i], 3, g)), y_train[i])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.set_postfix_str(f"epoch {epoch + 1} loss {loss.item():.3f}")
                bar.update()
        bar.close()
        model.eval()
        with torch.inference_mode():
            pred = torch.cat([model(x_test[i:i + 256]).argmax(1) for i in range(0, len(x_test), 256)])
        accuracy = float((pred == y_test).float().mean())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    log(f"ID test accuracy: {accuracy:.4f} ({len(y_test)} images); checkpoint {out} (sha256 {file_sha256(out)[:12]})")
    return accuracy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood.demo", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="write the demo images and list files")
    pp.add_argument("--data_root", default="runs/demo/data")
    pp.add_argument("--lists", default="datalists", help="folder for demo_{train,test,near_ood,far_ood}.txt")
    pp.add_argument("--far_count", type=int, default=600, help="number of photograph crops")
    pp.add_argument("--limit", type=int, help="at most this many images per split (quick checks)")
    pp.add_argument("--seed", type=int, default=0)
    tp = sub.add_parser("train", help="train the demo model and save its checkpoint")
    tp.add_argument("--data_root", default="runs/demo/data")
    tp.add_argument("--train_list", default="datalists/demo_train.txt")
    tp.add_argument("--test_list", default="datalists/demo_test.txt")
    tp.add_argument("--model", default="resnet18", help="timm model name")
    tp.add_argument("--out", default="checkpoints/demo_resnet18.safetensors")
    tp.add_argument("--epochs", type=int, default=12)
    tp.add_argument("--batch", type=int, default=64)
    tp.add_argument("--lr", type=float, default=2e-3)
    tp.add_argument("--threads", type=int, default=1,
                    help="CPU threads, fixed so that runs repeat exactly (one is as fast for this small model and "
                         "does not stall when other processes share the cores)")
    tp.add_argument("--limit", type=int, help="at most this many train and test images (quick checks)")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--min_accuracy", type=float, default=0.0, help="fail (exit 1) below this ID test accuracy")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            lists = prepare(args.data_root, args.lists, args.seed, far_count=args.far_count, limit=args.limit)
            for split, path in lists.items():
                print(f"{split:<9s} {sum(1 for _ in open(path)):5d} images  {path}")
            return 0
        accuracy = train(args.data_root, args.train_list, args.test_list, args.out, args.model, args.epochs,
                         args.batch, args.lr, args.seed, args.threads, limit=args.limit)
    except (InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if accuracy < args.min_accuracy:
        print(f"error: ID test accuracy {accuracy:.4f} is below --min_accuracy {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
