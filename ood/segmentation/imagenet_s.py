"""ImageNet-S evaluation (Gao et al., TPAMI 2022, "Large-scale Unsupervised Semantic Segmentation").

The figures of the ImageNet-S toolbox (``evaluation/evaluator.py``), computed the same way so its users get the
same numbers: ids 0..N (0 = "other", a class of its own), 1000 = ignore, removed from both masks before any
count; IoU = TP / (T + P - TP) from counts accumulated over the whole dataset and averaged over all N + 1 classes;
boundary IoU on the pixels within w = round(0.03 * image diagonal) 3x3 erosions of a region's edge or of the
image border (boundaries are taken on the full masks, ignore region included); mIoU by object size, each gt
class of an image bucketed by ceil(100 * its share of the image) into S <= 5, MS <= 25, ML <= 50, L > 50 with
the image's "other" pixels joining every bucket present, averaged over the classes seen in that bucket; image
accuracy (the largest predicted foreground class is in both masks) and the F-measure (beta^2 = 0.3) of
foreground vs "other", averaged over images. Everything is reported in percent.

Matching (``match.py`` there) maps the arbitrary ids of an unsupervised method to gt ids by an optimal
assignment on the image-level co-occurrence of ids: the toolbox's cost matrix (1 - co-occurrence / images, stored
as float32) solved by the same ``munkres`` package (1.1.4, the release of the toolbox's time, pinned in the
dependencies), so that among assignments of equal sum the toolbox's choice is made; scipy's solver and munkres
2.x/3.x break such ties differently.

Predictions come from PNG folders (the toolbox's layout) or straight from the HDF5 store of segment_images.py
(:func:`evaluate_store`), whose ground truth is the list's ImageNet-S masks, so a model is evaluated with no
conversion step.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..data import read_imagenet_s_categories, read_imagenet_s_mask
from ..errors import InputError

IGNORE = 1000
MODES = {"50": 50, "300": 300, "919": 919}
BUCKETS = ("S", "MS", "ML", "L")
BUCKET_LIMITS = (5, 25, 50)  # percent of the image, inclusive upper limits of S, MS, ML
BOUNDARY_RATIO = 0.03
BETA2 = 0.3
MUNKRES_VERSION = "1.1.4"  # the toolbox's (2021-22) munkres; later majors break ties differently


def boundary_width(height: int, width: int, ratio: float = BOUNDARY_RATIO) -> int:
    """Erosion iterations of the toolbox: round(ratio * diagonal), at least 1."""
    return max(1, int(round(ratio * math.sqrt(height ** 2 + width ** 2))))


def boundary_mask(ids: np.ndarray, iterations: int) -> np.ndarray:
    """Pixels that ``iterations`` 3x3 erosions of their own region's mask remove (zero padding outside).

    A pixel survives the erosions iff its (2k+1)^2 window lies inside the image and holds one id only, so a
    min and a max filter find every class's boundary at once instead of one erosion per class.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    k = iterations
    size = 2 * k + 1
    out = minimum_filter(ids, size=size, mode="nearest") != maximum_filter(ids, size=size, mode="nearest")
    out[:k] = out[-k:] = True
    out[:, :k] = out[:, -k:] = True
    return out


@dataclass
class Counts:
    """Pixel counts summed over images: rows predicted (T), ground truth (P), intersection (TP) per class."""

    num_classes: int  # N; arrays have N + 1 columns (0 = other)
    area: np.ndarray = None  # [3, N+1]
    boundary: np.ndarray = None  # [3, N+1]
    bucket_area: np.ndarray = None  # [4, 3, N+1]
    bucket_boundary: np.ndarray = None  # [4, 3, N+1]
    fmeasure: float = 0.0
    correct: int = 0
    images: int = 0

    def __post_init__(self):
        k = self.num_classes + 1
        for name, shape in (("area", (3, k)), ("boundary", (3, k)),
                            ("bucket_area", (4, 3, k)), ("bucket_boundary", (4, 3, k))):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, np.int64))

    def __iadd__(self, other: "Counts") -> "Counts":
        for name in ("area", "boundary", "bucket_area", "bucket_boundary"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.fmeasure += other.fmeasure
        self.correct += other.correct
        self.images += other.images
        return self


def _tally(pred: np.ndarray, gt: np.ndarray, hits: np.ndarray, length: int) -> np.ndarray:
    return np.stack([np.bincount(pred, minlength=length), np.bincount(gt, minlength=length),
                     np.bincount(hits, minlength=length)])


def _iou(c: np.ndarray) -> np.ndarray:
    t, p, tp = c[..., 0, :], c[..., 1, :], c[..., 2, :]
    return tp / (t + p - tp + 1e-10)


def image_counts(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                 lookup: Optional[np.ndarray] = None) -> Counts:
    """The counts of one image from its id masks [H, W]; ``lookup`` maps prediction ids through a matching."""
    k = num_classes + 1
    width = boundary_width(*gt.shape)
    gt_edge = boundary_mask(gt, width)
    pred_edge = boundary_mask(pred, width)
    if lookup is not None:
        pred = lookup[pred]
    valid = gt != IGNORE
    g, p, ge, pe = gt[valid], pred[valid], gt_edge[valid], pred_edge[valid]
    hit = g == p
    both = ge & pe & hit
    c = Counts(num_classes)
    c.area[:] = _tally(p, g, g[hit], k)
    c.boundary[:] = _tally(p[pe], g[ge], g[both], k)

    share = -(-100 * c.area[1] // max(1, g.size))  # ceil(100 * class pixels / image pixels), exact
    bucket = np.searchsorted(BUCKET_LIMITS, share, side="left")
    fg = g > 0
    key = bucket[g] * k + g
    pkey = bucket[g] * k + p
    c.bucket_area[:] = _tally(pkey[fg], key[fg], key[fg & hit], 4 * k).reshape(3, 4, k).transpose(1, 0, 2)
    c.bucket_boundary[:] = _tally(pkey[fg & pe], key[fg & ge], key[fg & both],
                                  4 * k).reshape(3, 4, k).transpose(1, 0, 2)
    present = np.unique(bucket[1:][c.area[1, 1:] > 0])
    if present.size:
        bg = ~fg
        c.bucket_area[present] += _tally(p[bg], g[bg], g[bg & hit], k)
        c.bucket_boundary[present] += _tally(p[bg & pe], g[bg & ge], g[bg & both], k)

    t, pp = np.count_nonzero(fg), np.count_nonzero(p > 0)
    tp = np.count_nonzero(fg & (p > 0))
    recall, precision = tp / (t + 1e-20), tp / (pp + 1e-20)
    c.fmeasure = (1 + BETA2) * precision * recall / (BETA2 * precision + recall + 1e-20)
    top = int(np.argmax(c.area[0, 1:])) + 1
    c.correct = int(c.area[1, top] > 0 and c.area[0, top] > 0)
    c.images = 1
    return c


def summarize(c: Counts, classes: Optional[Sequence[str]] = None) -> dict:
    """The toolbox's figures in percent: Acc, mIoU, mBIoU, S/MS/ML/L, BS/BMS/BML/BL, FMeasure, IoUs, BIoUs."""
    iou, biou = 100 * _iou(c.area), 100 * _iou(c.boundary)
    out = {"images": c.images, "Acc": 100 * c.correct / max(1, c.images), "mIoU": float(iou.mean()),
           "mBIoU": float(biou.mean())}
    for prefix, counts in (("", c.bucket_area), ("B", c.bucket_boundary)):
        for name, b in zip(BUCKETS, counts):
            seen = b[1] > 0
            out[prefix + name] = float(100 * _iou(b)[seen].mean()) if seen.any() else float("nan")
    out["FMeasure"] = 100 * c.fmeasure / max(1, c.images)
    out["IoUs"] = iou.tolist()
    out["BIoUs"] = biou.tolist()
    if classes is not None:
        out["classes"] = list(classes)
    return out


# --------------------------------------------------------------------------------------------- files


def read_mask(path) -> np.ndarray:
    try:
        return read_imagenet_s_mask(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such mask file") from None
    except OSError as e:
        raise InputError(f"{path}: not a readable PNG mask ({e})") from None


def check_ids(gt: np.ndarray, pred: np.ndarray, num_classes: int, lookup: Optional[np.ndarray] = None,
              gt_name="ground truth", pred_name="prediction"):
    """Refuse gt ids outside 0..N (and 1000), prediction ids outside 0..N or missing from the matching."""
    bad = gt[((gt > num_classes) | (gt < 0)) & (gt != IGNORE)]
    if bad.size:
        raise InputError(f"{gt_name}: id {int(bad.max())} is outside 0..{num_classes} (and {IGNORE} = ignore)")
    if pred.size and (pred.max() > num_classes or pred.min() < 0):
        worst = int(pred.max()) if pred.max() > num_classes else int(pred.min())
        raise InputError(f"{pred_name}: id {worst} is outside the category range 0..{num_classes}")
    if lookup is not None:
        ids = np.unique(pred)
        missing = ids[lookup[ids] < 0]
        if missing.size:
            raise InputError(f"{pred_name}: id {int(missing[0])} has no entry in the matching")


def read_pair(gt_path, pred_path, num_classes: int, lookup: Optional[np.ndarray] = None):
    """The gt and prediction id masks of one image, checked: same size, ids in range."""
    gt, pred = read_mask(gt_path), read_mask(pred_path)
    if gt.shape != pred.shape:
        raise InputError(f"{pred_path}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
                         f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]}")
    check_ids(gt, pred, num_classes, lookup, gt_path, pred_path)
    return gt, pred


def list_masks(gt_dir, predict_dir) -> List[str]:
    """Relative paths of every gt PNG under ``gt_dir``, each checked to have a prediction."""
    gt_dir, predict_dir = Path(gt_dir), Path(predict_dir)
    for d, what in ((gt_dir, "ground-truth"), (predict_dir, "prediction")):
        if not d.is_dir():
            raise InputError(f"{d}: {what} folder does not exist")
    names = sorted(p.relative_to(gt_dir).as_posix() for p in gt_dir.rglob("*.png"))
    if not names:
        raise InputError(f"{gt_dir}: holds no .png masks")
    missing = [n for n in names if not (predict_dir / n).is_file()]
    if missing:
        raise InputError(f"{predict_dir / missing[0]}: missing prediction "
                         f"({len(missing)} of {len(names)} ground-truth masks have none)")
    return names


def _chunk_counts(args) -> Counts:
    gt_dir, predict_dir, names, num_classes, lookup = args
    total = Counts(num_classes)
    for name in names:
        gt, pred = read_pair(os.path.join(gt_dir, name), os.path.join(predict_dir, name), num_classes, lookup)
        total += image_counts(gt, pred, num_classes, lookup)
    return total


def _presence(gt: np.ndarray, pred: np.ndarray, co: np.ndarray):
    """Count one image in the co-occurrence of ids: pairs (prediction id, gt id) both present outside ignore."""
    valid = gt != IGNORE
    co[np.ix_(np.unique(pred[valid]), np.unique(gt[valid]))] += 1


def _chunk_presence(args) -> np.ndarray:
    gt_dir, predict_dir, names, num_classes, _ = args
    co = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for name in names:
        gt, pred = read_pair(os.path.join(gt_dir, name), os.path.join(predict_dir, name), num_classes)
        _presence(gt, pred, co)
    return co


def _store_images(path, lo: int, hi: int, num_classes: int, lookup):
    """Checked (gt, pred) of images lo..hi-1 of a segment_images.py store."""
    from .store import SegmentationFile

    with SegmentationFile(path) as f:
        if not f.has_gt:
            raise InputError(f"{path}: has no ground truth ('gt'); segment_images.py stores it when the list "
                             "names masks (an ImageNet-S list with masks and --mask_root)")
        names = f.paths()
        for i, (gt, pred) in f.images(["gt", "pred"], start=lo, stop=hi):
            gt, pred = gt.astype(np.int64), pred.astype(np.int64)
            where = f"{path}: image {i} ({names[i]})"
            check_ids(gt, pred, num_classes, lookup, f"{where}: ground truth", f"{where}: prediction")
            yield gt, pred


def _store_counts(args) -> Counts:
    path, lo, hi, num_classes, lookup = args
    total = Counts(num_classes)
    for gt, pred in _store_images(path, lo, hi, num_classes, lookup):
        total += image_counts(gt, pred, num_classes, lookup)
    return total


def _store_presence(args) -> np.ndarray:
    path, lo, hi, num_classes, _ = args
    co = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    for gt, pred in _store_images(path, lo, hi, num_classes, None):
        _presence(gt, pred, co)
    return co


def _folder_chunks(gt_dir, predict_dir, names, num_classes, lookup, workers) -> list:
    """(arguments, images) of each chunk of PNG pairs."""
    size = max(1, min(64, len(names) // max(1, 4 * workers)))
    return [((str(gt_dir), str(predict_dir), names[i:i + size], num_classes, lookup), len(names[i:i + size]))
            for i in range(0, len(names), size)]


def _store_chunks(path, n: int, num_classes: int, lookup, workers) -> list:
    """(arguments, images) of each chunk of a store's images."""
    size = max(1, min(64, n // max(1, 4 * workers)))
    return [((str(path), i, min(n, i + size), num_classes, lookup), min(n, i + size) - i) for i in range(0, n, size)]


def _map_chunks(fn, chunks, workers, progress, total):
    """Apply ``fn`` to chunks of images in ``workers`` processes and sum the results, with a progress bar."""
    from ..progress import Progress

    bar = Progress(total=sum(k for _, k in chunks), desc="imagenet_s", unit="img", quiet=not progress)
    try:
        if workers <= 1:
            for args, k in chunks:
                total += fn(args)
                bar.update(k)
        else:
            with get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
                for (_, k), part in zip(chunks, pool.imap(fn, [args for args, _ in chunks])):
                    total += part
                    bar.update(k)
    finally:
        bar.close()
    return total


def munkres_cost(cooccurrence: np.ndarray, images: int) -> list:
    """The toolbox's cost matrix (``hungarian.py``): 1 - co-occurrence / images over ids 1..N, computed in
    float64 and stored as float32, as nested lists for ``Munkres.compute``."""
    return (1.0 - cooccurrence[1:, 1:] / images).astype(np.float32).tolist()


def match_ids(cooccurrence: np.ndarray, images: int) -> Dict[int, int]:
    """Prediction id -> gt id maximising the summed image-level co-occurrence; 0 (other) stays 0.

    ``cooccurrence[i, j]`` counts the images whose prediction holds id i and whose ground truth holds id j, over
    ``images`` images. Solved as the toolbox does, with munkres on its float32 cost matrix
    (:func:`munkres_cost`), so among equally good matchings the toolbox's is chosen.

    >>> match_ids(np.array([[0, 0, 0], [0, 1, 3], [0, 2, 1]]), images=4)
    {0: 0, 1: 2, 2: 1}
    """
    from munkres import Munkres, __version__ as version

    if version != MUNKRES_VERSION:
        warnings.warn(f"munkres {version} is installed; the ImageNet-S toolbox's matching used {MUNKRES_VERSION}, "
                      f"and other releases choose differently among equally good matchings")
    pairs = Munkres().compute(munkres_cost(np.asarray(cooccurrence), max(1, int(images))))
    return {0: 0, **{int(r) + 1: int(c) + 1 for r, c in pairs}}


def compute_matching(gt_dir, predict_dir, num_classes: int, workers: int = 1, progress: bool = False,
                     names: Optional[List[str]] = None) -> Dict[int, int]:
    """The toolbox's matching of prediction ids to gt ids over the PNG pairs (see :func:`match_ids`)."""
    names = names or list_masks(gt_dir, predict_dir)
    co = _map_chunks(_chunk_presence, _folder_chunks(gt_dir, predict_dir, names, num_classes, None, workers),
                     workers, progress, np.zeros((num_classes + 1, num_classes + 1), np.int64))
    return match_ids(co, len(names))


def _store_size(path) -> int:
    from .store import SegmentationFile

    with SegmentationFile(path) as f:
        if not f.has_gt:
            raise InputError(f"{path}: has no ground truth ('gt'); segment_images.py stores it when the list "
                             "names masks (an ImageNet-S list with masks and --mask_root)")
        return f.n


def compute_store_matching(path, num_classes: int, workers: int = 1, progress: bool = False) -> Dict[int, int]:
    """:func:`compute_matching` over the predicted class maps and ground truth of a segment_images.py store."""
    n = _store_size(path)
    co = _map_chunks(_store_presence, _store_chunks(path, n, num_classes, None, workers), workers, progress,
                     np.zeros((num_classes + 1, num_classes + 1), np.int64))
    return match_ids(co, n)


def read_matching(path) -> Dict[int, int]:
    """A matching JSON ``{"pred id": gt id}`` (the toolbox's format)."""
    try:
        raw = json.loads(Path(path).read_text())
        return {int(k): int(v) for k, v in raw.items()}
    except FileNotFoundError:
        raise InputError(f"{path}: no such matching file") from None
    except (ValueError, AttributeError, TypeError) as e:
        raise InputError(f"{path}: not a matching JSON of id -> id ({e})") from None


def write_matching(matching: Dict[int, int], path):
    from ..fileio import write_text

    write_text(path, json.dumps({str(k): v for k, v in sorted(matching.items())}, indent=0))


def lookup_table(matching: Dict[int, int], num_classes: int) -> np.ndarray:
    """An array mapping prediction ids 0..N through ``matching``; -1 where it has no entry."""
    table = np.full(num_classes + 1, -1, np.int64)
    for k, v in matching.items():
        if not (0 <= k <= num_classes and 0 <= v <= num_classes):
            raise InputError(f"matching {k} -> {v} leaves the category range 0..{num_classes}")
        table[k] = v
    return table


def class_names(categories, num_classes: int) -> List[str]:
    """``other`` followed by the wnids of an ImageNet-S categories file in class-id order."""
    ids = read_imagenet_s_categories(categories)
    if len(ids) != num_classes:
        raise InputError(f"{categories}: lists {len(ids)} categories, the mode has {num_classes}")
    return ["other"] + sorted(ids, key=ids.get)


def evaluate(gt_dir, predict_dir, num_classes: int, workers: int = 1, matching: Optional[Dict[int, int]] = None,
             classes: Optional[Sequence[str]] = None, progress: bool = False) -> dict:
    """The toolbox's figures over every gt mask under ``gt_dir`` and the prediction of the same name."""
    names = list_masks(gt_dir, predict_dir)
    lookup = None if matching is None else lookup_table(matching, num_classes)
    counts = _map_chunks(_chunk_counts, _folder_chunks(gt_dir, predict_dir, names, num_classes, lookup, workers),
                         workers, progress, Counts(num_classes))
    return summarize(counts, classes)


def evaluate_store(path, num_classes: int, workers: int = 1, matching: Optional[Dict[int, int]] = None,
                   classes: Optional[Sequence[str]] = None, progress: bool = False) -> dict:
    """The toolbox's figures from a segment_images.py store: its ``pred`` maps (the model's class ids, or ids
    mapped through ``matching``) against its ``gt`` (the list's ImageNet-S masks), image by image."""
    n = _store_size(path)
    lookup = None if matching is None else lookup_table(matching, num_classes)
    counts = _map_chunks(_store_counts, _store_chunks(path, n, num_classes, lookup, workers), workers, progress,
                         Counts(num_classes))
    return summarize(counts, classes)
