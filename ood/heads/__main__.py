"""python -m ood.heads: train a flat or group-softmax (MOS) head on cached train features; make a CLIP zero-shot head.

  python -m ood.heads train TRAIN.h5 OUT_HEAD.h5 --groups GROUPS [--seed 0] [--epochs E] [--device auto]
  python -m ood.heads zeroshot MODEL --checkpoint PATH --class_names FILE OUT_FC.h5

GROUPS is ``none`` (flat softmax), ``mos`` (MOS's ImageNet-1k taxonomy: 8 groups), ``kmeans:K`` (k-means on the
class-mean train features), or a file: the class count of each group (MOS's form, classes in class order) or
one group index per class, as .npy or integers in text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..cli import add_device_option, run_main
from ..checks import check_finite_rows, check_labels
from ..data import read_groups as read_group_counts, read_labels
from ..features import FeatureFile, FeatureFileError, write_fc
from ..errors import InputError

PROVENANCE = ("model", "backend", "checkpoint", "checkpoint_sha256", "preprocess")


def load_train(path, train_label=None):
    """Features [N, D] float32, labels [N], the number of logits (None without) and the file's attributes."""
    with FeatureFile(path) as f:
        x = np.ascontiguousarray(f.read("features"), dtype=np.float32)
        y = f.labels() if train_label is None else read_labels(train_label)
        width, attrs = f.num_classes, dict(f.attrs)
    if len(x) == 0:
        raise FeatureFileError(f"{path}: has no rows")
    if y.size != len(x):
        raise InputError(f"{train_label or path}: {y.size} labels for {len(x)} rows")
    check_finite_rows(x, path)
    return x, y, width, attrs


def flat_accuracy(head, x, y, rows: int = 8192) -> float:
    right = sum(int((np.argmax(x[lo:lo + rows] @ head.weight.T + head.bias, 1) == y[lo:lo + rows]).sum())
                for lo in range(0, len(x), rows))
    return right / len(x)


def resolve_groups(spec: str, x, y, num_classes, seed):
    """(group_of_class or None, number of classes) from the --groups spec."""
    from .groups import kmeans_groups, layout_from_counts, read_groups
    from .train import class_means

    if spec == "none":
        return None, num_classes
    if spec == "mos":
        g = layout_from_counts(read_group_counts(None))
        return g, g.size
    if spec.startswith("kmeans:"):
        try:
            k = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(f"--groups {spec}: expected kmeans:K with an integer K") from None
        return kmeans_groups(class_means(x, y, num_classes), k, seed), num_classes
    g = read_groups(spec)
    return g, g.size


def cmd_train(args) -> str:
    x, y, width, attrs = load_train(args.train, args.train_label)
    from .groups import FLAT_HEAD, group_accuracy, write_group_head  # torch: only once the inputs are read
    from .train import train_head

    C = args.num_classes or width or int(y.max()) + 1
    check_labels(y, len(y), C, args.train_label or args.train)
    g, C = resolve_groups(args.groups, x, y, C, args.seed)
    if width is not None and width != C:
        raise InputError(f"{args.train}: has {width} logits per row, the groups describe {C} classes")
    check_labels(y, len(y), C, args.train_label or args.train)
    head, recipe = train_head(x, y, C, g, epochs=args.epochs, seed=args.seed, device=args.device,
                              progress=not args.quiet)
    meta = {k: attrs[k] for k in PROVENANCE if k in attrs}
    meta.update(train_file=str(args.train), groups=args.groups, recipe=recipe)
    if g is None:
        write_fc(args.out, head.weight, head.bias, overwrite=args.overwrite, head_type=FLAT_HEAD, **meta)
        acc = flat_accuracy(head, x, y)
        return f"wrote {args.out}: flat softmax, {C} classes; train accuracy {100 * acc:.2f}%"
    write_group_head(args.out, head, overwrite=args.overwrite, **meta)
    acc = group_accuracy(head, x, y, args.device)
    return (f"wrote {args.out}: group softmax, {head.num_groups} groups of {np.bincount(g).tolist()} classes; "
            f"train group accuracy {100 * acc:.2f}%")


def cmd_zeroshot(args) -> str:
    from .zeroshot import write_zeroshot_head

    return write_zeroshot_head(args.model, args.checkpoint, args.class_names, args.out, templates=args.templates,
                               device=args.device, overwrite=args.overwrite)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood.heads", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a flat or group-softmax (MOS) head on stored train features")
    t.add_argument("train", help="ID train feature file (HDF5, or a ViM/GEN .pkl with --train_label)")
    t.add_argument("out", help="head file to write (.h5)")
    t.add_argument("--groups", required=True,
                   help="none | mos | kmeans:K | a group file (class counts per group, or a group index per class)")
    t.add_argument("--train_label", help="ViM-style list 'path label' overriding the train file's labels")
    t.add_argument("--num_classes", type=int, help="number of classes (default: logits width or max label + 1)")
    t.add_argument("--epochs", type=float,
                   help="passes over the data (default: MOS's BiT schedule by train-set size)")
    t.add_argument("--seed", type=int, default=0)
    add_device_option(t)
    t.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=cmd_train)
    z = sub.add_parser("zeroshot", help="CLIP zero-shot fc head (open_clip) for a class list")
    z.add_argument("model", help="open_clip model name, e.g. ViT-B-32")
    z.add_argument("out", help="fc file to write (.h5)")
    z.add_argument("--checkpoint", required=True, help="local open_clip weights")
    z.add_argument("--class_names", required=True, help="text file, one class name a line, in class order")
    z.add_argument("--templates", help="text file of prompt templates with {} for the class name "
                                       "(default: the extraction's templates)")
    add_device_option(z)
    z.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    z.set_defaults(run=cmd_zeroshot)
    return p


def main(argv=None) -> int:
    from ..fileio import check_writable

    args = build_parser().parse_args(argv)

    def go():
        check_writable(args.out, "head file")  # before any training
        if Path(args.out).exists() and not args.overwrite:
            raise InputError(f"{args.out}: exists already; pass --overwrite to replace it")
        print(args.run(args))
        return 0
    return run_main(go)


if __name__ == "__main__":
    sys.exit(main())
