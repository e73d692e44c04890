"""The HDF5 file of per-pixel outputs (format ``ood-segmentation``, version 1), written by segment_images.py.

Images differ in size, so every per-pixel dataset is one flat array of all images' pixels, row-major, image
after image; ``offsets`` [N+1] says where image i starts and ``shapes`` [N, 2] its height and width.
``scores/<detector>`` float16 (higher = more in-distribution), ``pred`` int16 (predicted class), optional
``gt`` int16 (ground-truth ids as in the masks), ``paths`` [N]. Pixel datasets are chunked and compressed
(shuffle + lzf or gzip), so a Cityscapes frame costs a few MB. As with feature files the file is written under
``<path>.partial``, ``rows_written`` counts the images whose pixels are all in, and the file is renamed when
complete; each score dataset carries ``min`` and ``max`` attributes (the streaming evaluator's default range).
With ``segments=True`` the group ``segments`` holds MetaSeg's segment table, the per-pixel segment ids and the
E, D, V dispersion maps (layout: :mod:`ood.segments.table`; metrics: :mod:`ood.segments.metrics`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import h5py
import numpy as np

from ..features import FeatureFileError, RowFileWriter, open_h5
from ..errors import InputError

FORMAT = "ood-segmentation"
VERSION = 1
CHUNK_PIXELS = 1 << 18
SEGMENTS = "segments"  # the group of the segment table (ood.segments.table)
SEGMENT_MAPS = ("E", "D", "V")
SEGMENT_CHUNK = 4096
_STR = h5py.string_dtype("utf-8")


def _err(path, problem: str) -> FeatureFileError:
    return FeatureFileError(f"{path}: {problem}")


class SegmentationWriter(RowFileWriter):
    """Streams images into ``<path>.partial``; ``resume=True`` continues after the last complete image."""

    format, version = FORMAT, VERSION

    def __init__(self, path, total: int, detectors: Sequence[str], *, with_gt: bool = False,
                 compression: str = "lzf", attrs: Optional[Mapping] = None, resume: bool = False,
                 overwrite: bool = False, segments: bool = False, ignore_ids: Sequence[int] = (255,)):
        if compression not in ("lzf", "gzip"):
            raise InputError(f"compression must be lzf or gzip, got {compression!r}")
        self.detectors = list(detectors)
        self.with_gt = with_gt
        self.segments = segments
        self.ignore_ids = [int(i) for i in ignore_ids]
        super().__init__(path, attrs={**(attrs or {}), "detectors": self.detectors}, resume=resume,
                         overwrite=overwrite)
        self.opts = dict(chunks=(CHUNK_PIXELS,), maxshape=(None,), shuffle=True, compression=compression)
        if self.resumed:
            got = json.loads(self.h5.attrs["detectors"]), len(self.h5["shapes"]), "gt" in self.h5
            has_seg = SEGMENTS in self.h5
            if got != (self.detectors, int(total), with_gt) or has_seg != segments:
                self.h5.close()
                raise _err(self.tmp, f"cannot resume: it holds {got[1]} images with detectors {got[0]} "
                                     f"(gt: {got[2]}, segments: {has_seg}), this run has {total} with "
                                     f"{self.detectors} (gt: {with_gt}, segments: {segments})")
            self.pixels = int(self.h5["offsets"][self.rows])
            self._range = {d: [float(self.h5[f"scores/{d}"].attrs["min"]), float(self.h5[f"scores/{d}"].attrs["max"])]
                           for d in self.detectors}
            if segments:
                self.segment_rows = int(self.h5[f"{SEGMENTS}/offsets"][self.rows])
            return
        n = int(total)
        self.h5.create_dataset("offsets", data=np.zeros(n + 1, np.int64))
        self.h5.create_dataset("shapes", data=np.zeros((n, 2), np.int32))
        self.h5.create_dataset("paths", (n,), dtype=_STR)
        for d in self.detectors:
            self.h5.create_dataset(f"scores/{d}", (0,), dtype="float16", **self.opts)
        self.h5.create_dataset("pred", (0,), dtype="int16", **self.opts)
        if with_gt:
            self.h5.create_dataset("gt", (0,), dtype="int16", **self.opts)
        if segments:
            self._create_segments(n)
        self.pixels = 0
        self._range = {d: [np.inf, -np.inf] for d in self.detectors}

    def _create_segments(self, n: int):
        """The segment table's datasets, empty; ``metrics`` waits for the first image (its width needs C)."""
        g = self.h5.create_group(SEGMENTS)
        g.attrs.update({"ignore_ids": json.dumps(self.ignore_ids), "connectivity": 8,
                        "maps": json.dumps(list(SEGMENT_MAPS)),
                        "definition": "MetaSeg segment metrics and adjusted IoU (ood.segments.metrics)"})
        g.create_dataset("offsets", data=np.zeros(n + 1, np.int64))
        rows = dict(chunks=(SEGMENT_CHUNK,), maxshape=(None,))
        for name in ("image", "segment", "pred_class", "gt_class"):
            g.create_dataset(name, (0,), dtype="int32", **rows)
        g.create_dataset("iou", (0,), dtype="float32", **rows)
        g.create_dataset("bbox", (0, 4), dtype="int32", chunks=(SEGMENT_CHUNK, 4), maxshape=(None, 4))
        g.create_dataset("ids", (0,), dtype="int32", **self.opts)
        for m in SEGMENT_MAPS:
            g.create_dataset(f"maps/{m}", (0,), dtype="float16", **self.opts)
        self.segment_rows = 0

    def _append_segments(self, lo: int, segments: Sequence, columns: Sequence[str]):
        """Write the table rows of images ``lo``.. (a list of :class:`ood.segments.metrics.ImageSegments`)."""
        g = self.h5[SEGMENTS]
        if "metrics" not in g:
            g.create_dataset("metrics", (0, len(columns)), dtype="float32", chunks=(SEGMENT_CHUNK, len(columns)),
                             maxshape=(None, len(columns)))
            g["metrics"].attrs["columns"] = json.dumps(list(columns))
            g.attrs["num_classes"] = sum(c.startswith("cprob") for c in columns)
        elif json.loads(g["metrics"].attrs["columns"]) != list(columns):
            raise _err(self.tmp, "cannot resume: its segment metric columns differ from this run's")
        counts = np.array([len(s) for s in segments], np.int64)
        start, end = self.segment_rows, self.segment_rows + int(counts.sum())
        table = {"image": np.repeat(np.arange(lo, lo + len(segments)), counts),
                 "segment": np.concatenate([np.arange(1, k + 1) for k in counts]) if len(counts) else [],
                 **{name: np.concatenate([getattr(s, name) for s in segments])
                    for name in ("pred_class", "gt_class", "iou", "bbox", "metrics")}}
        for name, values in table.items():
            ds = g[name]
            ds.resize((end,) + ds.shape[1:])
            ds[start:end] = values
        g["offsets"][lo + 1:lo + 1 + len(segments)] = start + np.cumsum(counts)
        self.segment_rows = end

    def append(self, scores: Mapping[str, Sequence[np.ndarray]], pred: Sequence[np.ndarray],
               gt: Optional[Sequence[np.ndarray]] = None, paths: Sequence[str] = (), segments: Sequence = (),
               segment_maps: Optional[Mapping[str, Sequence[np.ndarray]]] = None, columns: Sequence[str] = ()):
        """Write the next images: ``scores[name][i]``, ``pred[i]``, ``gt[i]`` are [H_i, W_i] arrays; with
        segments, ``segments[i]`` is image i's :class:`~ood.segments.metrics.ImageSegments`, ``segment_maps``
        its E, D, V maps and ``columns`` the metric names."""
        shapes = np.array([p.shape for p in pred], np.int64).reshape(-1, 2)
        lo, hi = self.rows, self.rows + len(pred)
        ends = self.pixels + np.cumsum(shapes.prod(1))
        end = int(ends[-1]) if len(ends) else self.pixels
        pixel_columns = {f"scores/{d}": scores[d] for d in self.detectors}
        pixel_columns["pred"] = pred
        if self.with_gt:
            if gt is None:
                raise InputError(f"{self.tmp}: this file stores ground truth, but none was given")
            pixel_columns["gt"] = gt
        if self.segments:
            if len(segments) != len(pred) or segment_maps is None:
                raise InputError(f"{self.tmp}: this file stores segments, but none were given")
            pixel_columns[f"{SEGMENTS}/ids"] = [s.ids for s in segments]
            pixel_columns.update({f"{SEGMENTS}/maps/{m}": segment_maps[m] for m in SEGMENT_MAPS})
            self._append_segments(lo, segments, columns)
        for name, arrays in pixel_columns.items():
            flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays]) if len(arrays) else []
            if name == f"{SEGMENTS}/ids" or name.startswith(f"{SEGMENTS}/maps/"):
                flat = np.asarray(flat, dtype=self.h5[name].dtype)
            elif name.startswith("scores/"):
                flat = np.asarray(flat, dtype=np.float16)
                if not np.isfinite(flat).all():
                    raise InputError(f"{self.tmp}: {name} holds NaN/Inf (or values beyond float16) in "
                                     f"images {lo}..{hi - 1}")
                r = self._range[name[7:]]
                r[:] = [min(r[0], float(flat.min())), max(r[1], float(flat.max()))] if flat.size else r
            else:
                flat = np.asarray(flat)
                if flat.size and (flat.min() < -32768 or flat.max() > 32767):
                    raise InputError(f"{self.tmp}: {name} ids do not fit int16")
            ds = self.h5[name]
            ds.resize((end,))
            ds[self.pixels:end] = flat
        self.h5["shapes"][lo:hi] = shapes
        self.h5["offsets"][lo + 1:hi + 1] = ends
        if len(paths):
            self.h5["paths"][lo:hi] = list(paths)
        for d in self.detectors:
            self.h5[f"scores/{d}"].attrs.update({"min": self._range[d][0], "max": self._range[d][1]})
        self.pixels = end
        self.commit_rows(hi)

    def close(self):
        """Mark complete and rename into place."""
        if self.rows != len(self.h5["shapes"]):
            raise InputError(f"{self.tmp}: {self.rows} of {len(self.h5['shapes'])} images written")
        self.finish()


def write_segmentation(path, scores: Mapping[str, Sequence[np.ndarray]], pred, gt=None, paths=(), probs=None,
                       ignore_ids: Sequence[int] = (255,), **attrs):
    """Write a whole file at once (tests, conversions); with ``probs`` (softmax [C, H, W] per image) also the
    segment table, its metrics computed from them and ``pred``."""
    w = SegmentationWriter(path, len(pred), list(scores), with_gt=gt is not None, attrs=attrs, overwrite=True,
                           segments=probs is not None, ignore_ids=ignore_ids)
    extra = {}
    if probs is not None:
        from ..segments.metrics import metric_columns, pixel_maps, segment_metrics

        maps = [pixel_maps(np.asarray(p, dtype=np.float32)) for p in probs]
        extra = dict(segment_maps={m: [x[m] for x in maps] for m in SEGMENT_MAPS},
                     columns=metric_columns(len(probs[0]) if len(probs) else 0, list(scores)),
                     segments=[segment_metrics(np.asarray(p, dtype=np.float32), pred=np.asarray(pred[i]), maps=maps[i],
                                               scores={d: scores[d][i] for d in scores},
                                               gt=None if gt is None else gt[i], ignore_ids=ignore_ids)
                               for i, p in enumerate(probs)])
    w.append(scores, pred, gt, paths, **extra)
    w.close()


class SegmentationFile:
    """Lazy reader: :meth:`image` returns one image's maps, :meth:`blocks` walks the flat pixels."""

    def __init__(self, path):
        self.path = Path(path)
        self.h5 = open_h5(path, FORMAT, VERSION)
        self.detectors = json.loads(self.h5.attrs["detectors"])
        self.offsets = self.h5["offsets"][()]
        self.shapes = self.h5["shapes"][()]
        self.n = len(self.shapes)

    @property
    def has_gt(self) -> bool:
        return "gt" in self.h5

    def dataset(self, name: str) -> h5py.Dataset:
        key = name if name in ("pred", "gt") or name.startswith(f"{SEGMENTS}/") else f"scores/{name}"
        if key not in self.h5:
            raise _err(self.path, f"has no '{key}' (detectors stored: {', '.join(self.detectors)})")
        return self.h5[key]

    def score_range(self, detector: str) -> tuple:
        a = self.dataset(detector).attrs
        return float(a["min"]), float(a["max"])

    def paths(self) -> list:
        return list(self.h5["paths"].asstr()[()])

    def image(self, i: int, name: str) -> np.ndarray:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.dataset(name)[lo:hi].reshape(self.shapes[i])

    def images(self, names: Sequence[str], pixels: int = 1 << 24, start: int = 0,
               stop: Optional[int] = None) -> Iterator[tuple]:
        """``(i, [map of each name])`` for images ``start``..``stop - 1`` in order, reading whole images in
        blocks of about ``pixels`` (at least one image), so each compressed chunk is decoded about once, not
        once per image that shares it."""
        stop = self.n if stop is None else min(stop, self.n)
        ends = self.offsets[1:stop + 1]
        i = start
        while i < stop:
            j = max(i + 1, int(np.searchsorted(ends, self.offsets[i] + pixels, side="right")))
            lo = int(self.offsets[i])
            flat = [self.dataset(name)[lo:int(self.offsets[j])] for name in names]
            for k in range(i, j):
                a, b = int(self.offsets[k]) - lo, int(self.offsets[k + 1]) - lo
                yield k, [f[a:b].reshape(self.shapes[k]) for f in flat]
            i = j

    def blocks(self, names: Sequence[str], pixels: int = 1 << 24) -> Iterator[list]:
        """The flat pixels of ``names`` in aligned blocks of about ``pixels``."""
        total = int(self.offsets[-1])
        step = max(CHUNK_PIXELS, pixels // CHUNK_PIXELS * CHUNK_PIXELS)
        for lo in range(0, total, step):
            yield [self.dataset(n)[lo:min(total, lo + step)] for n in names]

    def close(self):
        self.h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
