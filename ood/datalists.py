"""Make and check image lists: ``python -m ood.datalists scan|check|sample``.

``scan ROOT`` writes a ViM-style list (``path [label]``) of every image under a folder; ``check LIST ROOT``
reads a list in any format and reports missing and unreadable images, and the label counts, before a long
extraction starts; ``sample LIST N`` keeps a seeded random N lines of a list (e.g. ViM's 200k train subset).
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from .data import LIST_FORMATS, DataList, ListFormatError, _lines, read_list, scan_folder
from .errors import InputError
from .fileio import check_writable, write_text

SHOWN = 10  # problems listed by name; the rest are counted


def format_list(data: DataList) -> str:
    """A DataList as ViM-style lines: ``path label``, or ``path`` alone where the label is -1."""
    return "".join(f"{p} {y}\n" if y >= 0 else f"{p}\n" for p, y in zip(data.paths, data.labels.tolist()))


def _problem(path: Path, decode: bool) -> Optional[str]:
    """None when the image opens (and decodes, with ``decode``), else the reason."""
    from PIL import Image

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            else:
                im.verify()
    except Exception as e:  # PIL raises many types for broken files
        return f"{e.__class__.__name__}: {e}"
    return None


def find_problems(root, rel_paths, decode: bool = False, workers: int = 8) -> Tuple[List[str], List[tuple]]:
    """(missing paths, [(path, reason)] of unreadable images) of ``rel_paths`` under ``root``."""
    root = Path(root)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(lambda p: _problem(root / p, decode), rel_paths, chunksize=256))
    missing = [p for p, r in zip(rel_paths, reasons) if r == "missing"]
    unreadable = [(p, r) for p, r in zip(rel_paths, reasons) if r not in (None, "missing")]
    return missing, unreadable


def label_summary(labels: np.ndarray) -> str:
    known = labels[labels >= 0]
    if known.size == 0:
        return f"labels: none ({labels.size} unlabelled)"
    counts = np.bincount(known)
    present = np.flatnonzero(counts)
    lo, hi = present[np.argmin(counts[present])], present[np.argmax(counts[present])]
    text = (f"labels: {present.size} classes in [{known.min()}, {known.max()}], {counts[lo]} to {counts[hi]} "
            f"images a class (fewest: class {lo}, most: class {hi})")
    if known.size < labels.size:
        text += f"; {labels.size - known.size} unlabelled"
    return text


def _report(kind: str, missing, unreadable, out) -> int:
    for name, items in (("missing", missing), ("unreadable", [f"{p} ({r})" for p, r in unreadable])):
        if items:
            more = f" ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            print(f"{kind} {name}: {len(items)}: " + ", ".join(items[:SHOWN]) + more, file=out)
        else:
            print(f"{kind} {name}: 0", file=out)
    return len(missing) + len(unreadable)


def check(list_path, root, fmt: str = "auto", mask_root=None, decode: bool = False, workers: int = 8,
          out=None, **options) -> int:
    """Print a report on a list (to stdout by default); the number of problems found (0 = ready to extract)."""
    out = out or sys.stdout
    data = read_list(list_path, fmt, **options)
    if not len(data):
        raise ListFormatError(f"{list_path}: no entries")
    columns = f"; extra columns: {', '.join(data.extra)}" if data.extra else ""
    how = " (auto-detected; --list_format to choose another)" if fmt == "auto" else ""
    print(f"{list_path}: {len(data)} entries, format {data.format}{how}{columns}", file=out)
    print(label_summary(data.labels), file=out)
    problems = _report("images", *find_problems(root, data.paths, decode, workers), out)
    if "mask" in data.extra:
        if mask_root is None:
            print("masks: not checked (give --mask_root)", file=out)
        else:
            problems += _report("masks", *find_problems(mask_root, data.extra["mask"], decode, workers), out)
    print("ok" if problems == 0 else f"{problems} problems", file=out)
    return problems


def sample_lines(list_path, n: int, seed: int = 0) -> List[str]:
    """A seeded random ``n`` of the non-blank lines of a list, in their original order."""
    lines = [line for _, line in _lines(list_path)]
    if not 0 < n <= len(lines):
        raise InputError(f"{list_path}: cannot sample {n} of its {len(lines)} lines")
    keep = np.sort(np.random.default_rng(seed).choice(len(lines), n, replace=False))
    return [lines[i] for i in keep]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood.datalists", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("scan", help="write a ViM-style list of every image under ROOT to stdout")
    s.add_argument("root")
    s.add_argument("--labels", choices=("folders", "none"), default="folders",
                   help="folders: label = index of the sorted top-level class folder; none: no labels")
    s.add_argument("--classes", metavar="FILE", help="also write the class folder names, one a line, in label order")
    c = sub.add_parser("check", help="report missing / unreadable images and label counts of a list")
    c.add_argument("list")
    c.add_argument("root", help="the folder the list's image paths are relative to")
    c.add_argument("--list_format", choices=LIST_FORMATS, default="auto")
    c.add_argument("--mask_root", help="the folder the list's mask paths are relative to (sood_seg, imagenet_s)")
    c.add_argument("--groups", help="MOS group configuration (.npy or text of class counts per group)")
    c.add_argument("--categories", help="ImageNet-S categories file (class id = 1-based sorted position)")
    c.add_argument("--mapping", help="ImageNet-S mapping file (ImageNet-1k path -> ImageNet-S path)")
    c.add_argument("--decode", action="store_true", help="decode every image fully (slower, catches truncation)")
    c.add_argument("--workers", type=int, default=8)
    m = sub.add_parser("sample", help="write a seeded random N lines of a list to stdout")
    m.add_argument("list")
    m.add_argument("n", type=int)
    m.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "scan":
            if args.classes:
                check_writable(args.classes, "--classes file")
            data = scan_folder(args.root, args.labels)
            if not len(data):
                raise ListFormatError(f"{args.root}: no images found")
            sys.stdout.write(format_list(data))
            if args.classes:
                write_text(args.classes, "".join(f"{c}\n" for c in data.classes))
            return 0
        if args.command == "sample":
            sys.stdout.write("".join(f"{line}\n" for line in sample_lines(args.list, args.n, args.seed)))
            return 0
        problems = check(args.list, args.root, args.list_format, args.mask_root, args.decode, args.workers,
                         groups=args.groups, categories=args.categories, mapping=args.mapping)
    except (InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
