"""``python -m ood.segments embed``: the crops of the poorly predicted segments, embedded by an image backbone.

Oberdiek, Rottmann & Fink ("Detection and Retrieval of Out-of-Distribution Objects in Semantic Segmentation",
CVPR-W 2020) take the segments whose predicted IoU (MetaSeg's meta regression) is below 0.5, cut out their
bounding boxes enlarged to at least 128 x 128 pixels, and embed each crop with an ImageNet backbone; retrieval and
clustering then run on those embeddings (:mod:`ood.segments.retrieve`).

Selection: ``--where`` conditions on the segment table, all of which must hold, e.g. ``iou_pred<0.5`` (the
default; needs ``python -m ood.segments meta`` first) or ``score_msp<0.6`` (a stored pixel score averaged over
the segment; higher = more in-distribution), ``pred_class==3``, ``S>=100``. A name is a metric column or one of
``iou_pred``, ``iou``, ``pred_class``, ``gt_class``; NaN never satisfies a condition. ``min_box`` drops
segments whose box is narrower or lower than that many pixels (OODRetrieval's ``min_height``/``min_width``).

Crops (:func:`crop_boxes`): each side of the box shorter than ``min_crop`` grows to ``min_crop`` around its
centre; a box that then crosses the image border is shifted back inside, and an image smaller than ``min_crop``
gives its whole side. (OODRetrieval moves a box at the border the same way; away from the border it leaves the
box as it is, which this rule treats as an oversight and centres instead.) The crop goes through the backbone's
own preprocessing, as extract_features.py applies it, and batching, devices, AMP, threaded decoding and the
partial-file protocol with ``--resume`` are extract_features.py's (:mod:`ood.runtime`, :mod:`ood.features`).

The output is a feature file (``features``, ``logits`` when the backbone has a head, ``labels`` = each segment's
ground-truth class or -1, ``paths`` = its image) plus the group ``segments`` that keys every row to the segment
table: ``row`` (its row in the table), ``image``, ``segment``, ``pred_class``, ``gt_class``, ``iou``,
``iou_pred``, ``bbox`` and the crop ``box`` (y0, x0, y1, x1, end-exclusive). The attribute ``table_sha256``
fingerprints the table (:func:`table_fingerprint`), so a file used with another store is refused.

>>> crop_boxes([[10, 10, 20, 30]], 100, 200, min_size=64).tolist()  # near the top left corner
[[0, 0, 64, 64]]
"""
from __future__ import annotations

import argparse
import hashlib
import operator
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import FeatureFileError, ImageError, InputError, ParameterError

KIND = "ood-segment-embeddings"
DEFAULT_WHERE = ("iou_pred<0.5",)
MIN_CROP = 128
GROUP = "segments"
#: the per-row datasets of the ``segments`` group of an embedding file
KEYS = ("row", "image", "segment", "pred_class", "gt_class", "iou", "iou_pred", "bbox", "box")
#: attributes that must agree between a partial embedding file and the run that resumes it
RESUME_KEYS = ("model", "backend", "weights", "checkpoint_sha256", "random_init_seed", "preprocess", "table_sha256",
               "selection", "min_crop", "min_box", "data_root", "dtype", "amp")
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
        "!=": operator.ne}
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_FIELDS = ("iou_pred", "iou", "pred_class", "gt_class")


# --------------------------------------------------------------------------------------------- selection


def crop_boxes(bbox, height, width, min_size: int = MIN_CROP) -> np.ndarray:
    """Boxes (y0, x0, y1, x1, end-exclusive) grown to at least ``min_size`` a side around their centre and
    shifted back inside a ``height`` x ``width`` image (per box or one for all); a side of an image smaller
    than ``min_size`` is taken whole. Boxes already that large are returned as they are.

    >>> crop_boxes([[40, 40, 50, 60], [0, 190, 5, 200]], 100, 200, min_size=32).tolist()
    [[29, 34, 61, 66], [0, 168, 32, 200]]
    """
    bbox = np.asarray(bbox, dtype=np.int64).reshape(-1, 4)
    out = np.empty_like(bbox)
    if min_size < 1:
        raise ParameterError(f"--min_crop must be at least 1 pixel, got {min_size}")
    for axis, size in ((0, height), (1, width)):
        lo, hi = bbox[:, axis], bbox[:, axis + 2]
        size = np.broadcast_to(np.asarray(size, dtype=np.int64), lo.shape)
        length = np.maximum(hi - lo, np.minimum(min_size, size))
        start = lo - (length - (hi - lo)) // 2
        start = np.clip(start, 0, size - length)
        out[:, axis], out[:, axis + 2] = start, start + length
    return out


def parse_condition(text: str) -> Tuple[str, str, float]:
    """``"iou_pred<0.5"`` -> ``("iou_pred", "<", 0.5)``; a malformed condition is a :class:`ParameterError`.

    >>> parse_condition("score_msp >= 0.25")
    ('score_msp', '>=', 0.25)
    """
    m = _CONDITION.match(text)
    try:
        value = float(m.group(3)) if m else None
    except ValueError:
        value = None
    if value is None:
        raise ParameterError(f"--where {text!r}: expected NAME OP NUMBER with OP one of {' '.join(_OPS)} "
                             f"(e.g. iou_pred<0.5 or score_msp<0.6)")
    return m.group(1), m.group(2), value


def table_values(table, name: str) -> np.ndarray:
    """One column of the segment table by name: a metric column, or ``iou_pred``, ``iou``, ``pred_class``,
    ``gt_class``; a missing one is one line naming the store and what to do."""
    if name in _FIELDS:
        values = getattr(table, name)
        if values is None:
            hint = ("run python -m ood.segments meta on it first, or select with --where on a stored column "
                    "(e.g. score_msp<0.6)" if name == "iou_pred" else "the store has no ground truth")
            raise FeatureFileError(f"{table.store}: its segments have no {name}; {hint}")
        return np.asarray(values)
    return table.column(name)


def select_segments(table, where: Sequence[str] = DEFAULT_WHERE, min_box: int = 0) -> np.ndarray:
    """Rows of the segments that satisfy every condition of ``where`` and whose box is at least ``min_box``
    pixels high and wide; no segment selected is one line naming the store and the rule."""
    if min_box < 0:
        raise ParameterError(f"--min_box must be 0 or more pixels, got {min_box}")
    keep = np.ones(len(table), dtype=bool)
    for text in where:
        name, op, value = parse_condition(text)
        with np.errstate(invalid="ignore"):
            keep &= _OPS[op](table_values(table, name).astype(np.float64), value)
    box = np.asarray(table.bbox).reshape(-1, 4)
    keep &= (box[:, 2] - box[:, 0] >= min_box) & (box[:, 3] - box[:, 1] >= min_box)
    rows = np.flatnonzero(keep)
    if not len(rows):
        rule = " and ".join(list(where) + ([f"box >= {min_box} px"] if min_box else [])) or "(no condition)"
        raise InputError(f"{table.store}: no segment satisfies {rule} (of {len(table)} segments); nothing written")
    return rows


def table_fingerprint(table) -> str:
    """sha256 of what identifies a segment table: every segment's image, id, class and box and the image paths
    (not the predicted IoU, which ``meta`` may rewrite)."""
    digest = hashlib.sha256()
    for name in ("image", "segment", "pred_class", "bbox"):
        digest.update(np.ascontiguousarray(getattr(table, name), dtype="<i4").tobytes())
    digest.update("\n".join(table.paths).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- reading


@dataclass
class SegmentEmbeddings:
    """An embedding file read whole: ``features`` [n, D] and, per row, the keys of its segment (``KEYS``),
    its image path and the file's attributes. ``names`` maps class ids to names where known."""

    path: Path
    features: np.ndarray
    paths: List[str]
    data_root: str
    attrs: dict
    row: np.ndarray
    image: np.ndarray
    segment: np.ndarray
    pred_class: np.ndarray
    gt_class: np.ndarray
    iou: np.ndarray
    iou_pred: np.ndarray
    bbox: np.ndarray
    box: np.ndarray
    names: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)


def read_embeddings(path, store=None) -> SegmentEmbeddings:
    """Read an embedding file written by :func:`embed_segments`. With ``store``, check that the file was made
    from that store's segment table (fingerprint, rows, ids) and take the classes and IoUs from the table as it
    is now; a mismatch is one line naming both files."""
    from ..features import FeatureFile

    with FeatureFile(path) as f:
        if f.attrs.get("kind") != KIND or not f.has(GROUP):
            raise FeatureFileError(f"{path}: not a segment embedding file (no '{GROUP}' group; it is written by "
                                   f"python -m ood.segments embed)")
        missing = [k for k in KEYS if not f.has(f"{GROUP}/{k}")]
        if missing:
            raise FeatureFileError(f"{path}: its '{GROUP}' group lacks {', '.join(missing)}")
        keys = {k: f.read(f"{GROUP}/{k}") for k in KEYS}
        bad = [k for k, v in keys.items() if len(v) != f.n]
        if bad:
            raise FeatureFileError(f"{path}: '{GROUP}/{bad[0]}' has {len(keys[bad[0]])} rows, 'features' {f.n}")
        emb = SegmentEmbeddings(path=Path(path), features=f.read("features"), paths=list(f.read("paths")),
                                data_root=str(f.attrs.get("data_root", "")), attrs=dict(f.attrs), **keys)
    if store is not None:
        check_match(emb, store)
    return emb


def check_match(emb: SegmentEmbeddings, store):
    """Refuse an embedding file that was not made from ``store``'s segment table; refresh its classes and IoUs
    from the table."""
    from .table import read_segments

    table = read_segments(store)
    made_from = emb.attrs.get("store", "?")
    if emb.attrs.get("table_sha256") != table_fingerprint(table):
        raise FeatureFileError(f"{emb.path}: does not match the segment table of {store} (it was embedded from "
                               f"the table of {made_from}: other segments or images)")
    rows = emb.row
    if len(rows) and (rows.min() < 0 or rows.max() >= len(table) or (table.image[rows] != emb.image).any()
                      or (table.segment[rows] != emb.segment).any()):
        raise FeatureFileError(f"{emb.path}: its segment rows do not match the segment table of {store}")
    emb.pred_class = table.pred_class[rows]
    if table.gt_class is not None:
        emb.gt_class, emb.iou = table.gt_class[rows], table.iou[rows]
    if table.iou_pred is not None:
        emb.iou_pred = table.iou_pred[rows]


# --------------------------------------------------------------------------------------------- embedding


class CropDataset:
    """Item i = (i, the crop ``boxes[i]`` of image ``paths[i]`` through ``transform``, None) or (i, None, error):
    :class:`ood.runtime.ImageDataset`'s protocol, so its ``collate``, ``threaded_batches`` and DataLoader apply.
    Decoded images are kept in a small cache, so the segments of one image (consecutive rows) decode it once."""

    def __init__(self, root, paths: Sequence[str], boxes: np.ndarray, transform, start: int = 0, cache: int = 8):
        from ..runtime import ImageDataset

        self.items = ImageDataset(root, list(paths), transform, start)
        self.boxes = boxes
        self._cache: OrderedDict = OrderedDict()
        self._size = cache
        self._lock = threading.Lock()

    def __len__(self):
        return len(self.items)

    def _image(self, path: str):
        from ..runtime import load_image

        with self._lock:
            if path in self._cache:
                self._cache.move_to_end(path)
                return self._cache[path]
        img = load_image(path)
        with self._lock:
            self._cache[path] = img
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return img

    def __getitem__(self, i):
        import os

        row = self.items.start + i
        path = os.path.join(self.items.root, self.items.paths[row])
        try:
            y0, x0, y1, x1 = (int(v) for v in self.boxes[row])
            img = self._image(path)
            if x1 > img.width or y1 > img.height:
                raise ValueError(f"the crop box {(y0, x0, y1, x1)} exceeds its {img.width}x{img.height} image "
                                 f"(another image than the store's?)")
            return row, self.items.transform(img.crop((x0, y0, x1, y1))), None
        except Exception as e:  # any decoder or transform failure is reported with the image's path
            return row, None, f"{path}: cannot read image ({e.__class__.__name__}: {e})"


def embed_segments(store, out, spec, *, where: Sequence[str] = DEFAULT_WHERE, min_crop: int = MIN_CROP,
                   min_box: int = 0, data_root=None, batch: int = 64, workers: Optional[int] = None,
                   dtype: str = "float32", device="auto", amp: str = "auto", channels_last: bool = True,
                   resume: bool = False, overwrite: bool = False, progress: bool = True, log=None) -> dict:
    """Embed the crops of the segments of ``store`` selected by ``where`` into the feature file ``out`` with the
    backbone of ``spec`` (an :class:`ood.extract.ModelSpec`); returns a summary (rows, dim, seconds)."""
    import time

    import torch

    from ..extract import check_run, check_space
    from ..features import PARTIAL_SUFFIX, FeatureWriter
    from ..fileio import check_writable
    from ..runtime import Dist, Extractor, collate, cpus_per_rank, default_workers, resolve_device, threaded_batches
    from ..segmentation.store import SegmentationFile
    from .table import read_segments

    log = log or (lambda msg: None)
    out = Path(out)
    check_run(out, "embedding file", spec, batch, workers, overwrite)
    table = read_segments(store)
    rows = select_segments(table, where, min_box)
    with SegmentationFile(store) as seg:
        shapes = seg.shapes[table.image[rows]]
    boxes = crop_boxes(table.bbox[rows], shapes[:, 0], shapes[:, 1], min_crop).astype(np.int32)
    root = str(data_root if data_root is not None else table.data_root)
    n = len(rows)
    log(f"{store}: {n} of {len(table)} segments selected ({' and '.join(where) or 'all'}"
        f"{f', box >= {min_box} px' if min_box else ''}) in {len(np.unique(table.image[rows]))} images")

    dist = Dist()
    device = resolve_device(device, dist)
    backbone = spec.build()
    extractor = Extractor(backbone, device, amp, dtype, channels_last)
    attrs = dict(**spec.attrs(), kind=KIND, preprocess=backbone.preprocess, feature_source=backbone.feature_source,
                 data_root=root, store=str(store), table_sha256=table_fingerprint(table),
                 selection=list(where), min_crop=int(min_crop), min_box=int(min_box), dtype=dtype, amp=extractor.amp)
    gt = table.gt_class[rows] if table.gt_class is not None else np.full(n, -1, np.int32)
    keys = {"row": rows.astype(np.int64), "image": table.image[rows], "segment": table.segment[rows],
            "pred_class": table.pred_class[rows], "gt_class": gt,
            "iou": table.iou[rows] if table.iou is not None else np.full(n, np.nan, np.float32),
            "iou_pred": table.iou_pred[rows] if table.iou_pred is not None else np.full(n, np.nan, np.float32),
            "bbox": table.bbox[rows], "box": boxes}
    dim, num_classes = extractor.dims(backbone.transform)
    partial = Path(str(out) + PARTIAL_SUFFIX)
    if partial.exists() and not resume:
        log(f"{partial}: starting over (pass --resume to continue it)")
    writer = FeatureWriter(out, n, dim, num_classes, dtype=dtype, attrs=attrs, resume=resume, overwrite=overwrite,
                           resume_keys=RESUME_KEYS)
    bar = None
    try:
        if writer.resumed:
            if GROUP not in writer.h5 or not np.array_equal(writer.h5[f"{GROUP}/row"][()], keys["row"]):
                raise FeatureFileError(f"{writer.tmp}: cannot resume: its segments are not this selection (rerun "
                                       f"without --resume to start over)")
            log(f"{partial}: resuming after {writer.rows} of {n} segments")
        else:
            check_space(out, n, dim, num_classes, dtype, log)
            for name, values in keys.items():
                writer.h5.create_dataset(f"{GROUP}/{name}", data=values)
            writer.commit_rows(0)
        start = writer.rows
        image_paths = [table.paths[i] for i in keys["image"]]
        dataset = CropDataset(root, image_paths, boxes, backbone.transform, start)
        workers = default_workers(dist, device) if workers is None else workers
        if workers:
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                                 collate_fn=collate, pin_memory=device.type == "cuda")
        else:
            loader = threaded_batches(dataset, batch, cpus_per_rank(dist))
        if progress:
            from ..progress import Progress
            bar = Progress(total=n, initial=start, unit="crop", desc=out.name)
        tic = time.perf_counter()
        for idx, x, bad in loader:
            if bad:
                raise ImageError(f"{bad[0][1]}; fix it (or point --data_root at the images), then rerun with "
                                 f"--resume")
            features, logits = extractor(x)
            i = idx.numpy()
            writer.append(features.cpu().numpy(), None if logits is None else logits.cpu().numpy(), gt[i],
                          [image_paths[j] for j in i])
            if bar is not None:
                bar.update(len(i))
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - tic
        writer.close()
    except BaseException:
        if bar is not None:
            bar.close()
        if writer.h5:
            writer.abort()
        raise
    log(f"{out}: {n} segment crops x {dim} features; {(n - start) / max(seconds, 1e-9):.1f} crops/s")
    return {"rows": n, "dim": dim, "num_classes": num_classes, "seconds": seconds, "crops": n - start}


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from ..cli import add_run_options

    p = argparse.ArgumentParser(
        prog="python -m ood.segments embed",
        description="Embed the crops of a store's poorly predicted segments (predicted IoU < 0.5 by default, or "
                    "any --where rule) with an extract_features.py backbone, into a feature file keyed to the "
                    "segment table.")
    p.add_argument("store", help="segmentation store with a segment table (segment_images.py; meta for iou_pred)")
    p.add_argument("out_file", help="output .h5 embedding file")
    p.add_argument("model", help="backbone: a timm / open_clip / mmpretrain model name, as extract_features.py")
    p.add_argument("--where", action="append", metavar="COND",
                   help="selection condition NAME OP NUMBER (OP: < <= > >= == !=), repeatable, all must hold; "
                        "NAME: a metric column (e.g. score_msp, E, S) or iou_pred, iou, pred_class, gt_class "
                        "(default: iou_pred<0.5)")
    p.add_argument("--min_crop", type=int, default=MIN_CROP, help="crop boxes grow to at least this many pixels "
                                                                  "a side (default 128, as OODRetrieval)")
    p.add_argument("--min_box", type=int, default=0, help="skip segments whose box is smaller than this a side")
    p.add_argument("--data_root", help="image folder (default: the store's data_root)")
    p.add_argument("--backend", default="timm", help="timm (default), mmpretrain or open_clip")
    p.add_argument("--checkpoint", help="local weights (.pth, .safetensors, .npz; for open_clip also a tag)")
    p.add_argument("--pretrained", action="store_true", help="timm: load timm's own pretrained weights")
    p.add_argument("--random_init", action="store_true", help="random weights on purpose (tests, smoke runs)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random_init")
    p.add_argument("--num_classes", type=int, help="timm: classes of the checkpoint's head (0 = no head)")
    p.add_argument("--resize", type=int, metavar="N", help="plain resize of each crop to N x N, ImageNet mean/std "
                                                           "(default: the model's own preprocessing)")
    p.add_argument("--mean", type=float, nargs=3, help="override the normalisation mean (0-1 scale)")
    p.add_argument("--std", type=float, nargs=3, help="override the normalisation std (0-1 scale)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, help="DataLoader worker processes; 0 = decode on threads (default: 0 "
                                               "on CPU, one a CPU up to 8 on GPU)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored features")
    add_run_options(p)
    return p


def main(argv=None) -> int:
    from ..cli import run_main, stderr_log

    args = build_parser().parse_args(argv)
    log = stderr_log(args.quiet)

    def go():
        from ..extract import ModelSpec

        spec = ModelSpec(args.model, args.backend, args.checkpoint, args.pretrained, args.random_init, args.seed,
                         args.num_classes, resize=args.resize,
                         mean=None if args.mean is None else tuple(args.mean),
                         std=None if args.std is None else tuple(args.std))
        embed_segments(args.store, args.out_file, spec, where=args.where or DEFAULT_WHERE, min_crop=args.min_crop,
                       min_box=args.min_box, data_root=args.data_root, batch=args.batch, workers=args.workers,
                       dtype=args.dtype, device=args.device, amp=args.amp, channels_last=args.channels_last,
                       resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, log=log)
        return 0
    return run_main(go, interrupted=f"rerun with --resume to continue {args.out_file}")
