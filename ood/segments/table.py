"""The segment table of a segmentation store: one row per predicted segment, read whole, written back safely.

segment_images.py (with ``--segments``, the default) writes the HDF5 group ``segments`` into its store:

=====================  ==================  =====================================================================
dataset                type, shape         meaning
=====================  ==================  =====================================================================
``image``              int32 [S]           row of the segment's image in the store (``paths[image]``)
``segment``            int32 [S]           the segment's id within its image, 1..n (the value in ``ids``)
``pred_class``         int32 [S]           its predicted class
``bbox``               int32 [S, 4]        (y0, x0, y1, x1), end-exclusive, in the image's pixels
``metrics``            float32 [S, M]      MetaSeg's metrics; attribute ``columns`` = JSON list of M names
``iou``                float32 [S]         MetaSeg's adjusted IoU with the ground truth (NaN without it)
``gt_class``           int32 [S]           ground-truth id with most pixels in the segment (-1: none/ignored)
``iou_pred``           float32 [S]         predicted IoU, written by ``python -m ood.segments meta``
``offsets``            int64 [N+1]         the rows of image i are ``offsets[i]:offsets[i+1]``
``ids``                int32 [pixels]      per-pixel segment id (0 = none), flat like ``pred`` in the store
``maps/E|D|V``         float16 [pixels]    per-pixel normalised entropy, margin 1-(p1-p2), variation ratio 1-p1
=====================  ==================  =====================================================================

Pixel datasets are flat (image after image) and located by the store's ``offsets`` and ``shapes`` (see
:mod:`ood.segmentation.store`); higher E, D, V = more uncertain. Columns are listed in
:func:`ood.segments.metrics.metric_columns`.

>>> import tempfile, pathlib, numpy as np
>>> from ood.segmentation.store import write_segmentation
>>> p = pathlib.Path(tempfile.mkdtemp()) / "s.h5"
>>> probs = np.full((2, 3, 4), 0.2, np.float32); probs[0, :, :2] = 0.9; probs[1] = 1 - probs[0]
>>> write_segmentation(p, {}, [probs.argmax(0)], paths=["a.png"], probs=[probs])
>>> t = read_segments(p)
>>> len(t), t.pred_class.tolist(), t.bbox.tolist()
(2, [0, 1], [[0, 0, 3, 2], [0, 2, 3, 4]])
>>> float(t.column("S")[0]), int(segment_mask(p, 0, 2).sum())
(6.0, 6)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import h5py
import numpy as np

from ..errors import FeatureFileError, InputError
from ..segmentation.store import SEGMENTS, SegmentationFile

PREDICTION = "iou_pred"
_TMP = "_iou_pred_partial"


@dataclass
class SegmentTable:
    """Every segment of a store: arrays indexed by segment row, ``paths`` indexed by ``image``."""

    image: np.ndarray
    segment: np.ndarray
    pred_class: np.ndarray
    bbox: np.ndarray
    metrics: np.ndarray
    columns: List[str]
    iou: Optional[np.ndarray]
    gt_class: Optional[np.ndarray]
    iou_pred: Optional[np.ndarray]
    paths: List[str]
    data_root: str
    store: Path
    offsets: np.ndarray = field(default=None, repr=False)
    num_classes: int = 0

    def __len__(self) -> int:
        return len(self.image)

    def column(self, name: str) -> np.ndarray:
        """One metric column by its name (e.g. ``"E"``, ``"S"``, ``"score_msp"``)."""
        try:
            return self.metrics[:, self.columns.index(name)]
        except ValueError:
            raise InputError(f"{self.store}: the segment table has no column {name!r} "
                             f"(it has {', '.join(self.columns)})") from None


def _open(path) -> SegmentationFile:
    store = SegmentationFile(path)
    if SEGMENTS not in store.h5:
        store.close()
        raise FeatureFileError(f"{path}: has no segment table; run segment_images.py with --segments")
    return store


def read_segments(path) -> SegmentTable:
    """Read the whole segment table of a store (a few hundred bytes per segment)."""
    with _open(path) as store:
        g = store.h5[SEGMENTS]
        has_gt = store.has_gt
        return SegmentTable(
            image=g["image"][()], segment=g["segment"][()], pred_class=g["pred_class"][()], bbox=g["bbox"][()],
            metrics=g["metrics"][()], columns=json.loads(g["metrics"].attrs["columns"]),
            iou=g["iou"][()] if has_gt else None, gt_class=g["gt_class"][()] if has_gt else None,
            iou_pred=g[PREDICTION][()] if PREDICTION in g else None, paths=store.paths(),
            data_root=str(store.h5.attrs.get("data_root", "")), store=Path(path), offsets=g["offsets"][()],
            num_classes=int(g.attrs.get("num_classes", 0)))


def segment_ids(path, image_row: int) -> np.ndarray:
    """The int32 [H, W] segment-id map of one image (0 where no segment)."""
    with _open(path) as store:
        if not 0 <= image_row < store.n:
            raise InputError(f"{path}: image row {image_row} is outside 0..{store.n - 1}")
        return store.image(image_row, f"{SEGMENTS}/ids")


def segment_mask(path, image_row: int, segment_id: int) -> np.ndarray:
    """The bool [H, W] mask of one segment of one image."""
    return segment_ids(path, image_row) == segment_id


def write_predictions(path, iou_pred, **attrs):
    """Add or replace ``segments/iou_pred``: written under a temporary name, then moved into place, so the
    file never holds a half-written prediction; ``attrs`` are stored on the dataset (e.g. the model)."""
    iou_pred = np.asarray(iou_pred, dtype=np.float32).reshape(-1)
    _open(path).close()
    with h5py.File(path, "r+") as h5:
        g = h5[SEGMENTS]
        n = len(g["image"])
        if len(iou_pred) != n:
            raise InputError(f"{path}: {len(iou_pred)} predictions for a table of {n} segments")
        if _TMP in g:
            del g[_TMP]
        ds = g.create_dataset(_TMP, data=iou_pred)
        for key, value in attrs.items():
            ds.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
        h5.flush()
        if PREDICTION in g:
            del g[PREDICTION]
        g.move(_TMP, PREDICTION)
