"""The HDF5 file of per-pixel outputs (format ``ood-segmentation``, version 1), written by segment_images.py.

Images differ in size, so every per-pixel dataset is one flat array of all images' pixels, row-major, image
after image; ``offsets`` [N+1] says where image i starts and ``shapes`` [N, 2] its height and width.
``scores/<detector>`` float16 (higher = more in-distribution), ``pred`` int16 (predicted class), optional
``gt`` int16 (ground-truth ids as in the masks), ``paths`` [N]. Pixel datasets are chunked and compressed
(shuffle + lzf or gzip), so a Cityscapes frame costs a few MB. As with feature files the file is written under
``<path>.partial``, ``rows_written`` counts the images whose pixels are all in, and the file is renamed when
complete; each score dataset carries ``min`` and ``max`` attributes (the streaming evaluator's default range).
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
_STR = h5py.string_dtype("utf-8")


def _err(path, problem: str) -> FeatureFileError:
    return FeatureFileError(f"{path}: {problem}")


class SegmentationWriter(RowFileWriter):
    """Streams images into ``<path>.partial``; ``resume=True`` continues after the last complete image."""

    format, version = FORMAT, VERSION

    def __init__(self, path, total: int, detectors: Sequence[str], *, with_gt: bool = False,
                 compression: str = "lzf", attrs: Optional[Mapping] = None, resume: bool = False,
                 overwrite: bool = False):
        if compression not in ("lzf", "gzip"):
            raise InputError(f"compression must be lzf or gzip, got {compression!r}")
        self.detectors = list(detectors)
        self.with_gt = with_gt
        super().__init__(path, attrs={**(attrs or {}), "detectors": self.detectors}, resume=resume,
                         overwrite=overwrite)
        if self.resumed:
            got = json.loads(self.h5.attrs["detectors"]), len(self.h5["shapes"]), "gt" in self.h5
            if got != (self.detectors, int(total), with_gt):
                self.h5.close()
                raise _err(self.tmp, f"cannot resume: it holds {got[1]} images with detectors {got[0]} "
                                     f"(gt: {got[2]}), this run has {total} with {self.detectors} (gt: {with_gt})")
            self.pixels = int(self.h5["offsets"][self.rows])
            self._range = {d: [float(self.h5[f"scores/{d}"].attrs["min"]), float(self.h5[f"scores/{d}"].attrs["max"])]
                           for d in self.detectors}
            return
        n = int(total)
        self.h5.create_dataset("offsets", data=np.zeros(n + 1, np.int64))
        self.h5.create_dataset("shapes", data=np.zeros((n, 2), np.int32))
        self.h5.create_dataset("paths", (n,), dtype=_STR)
        opts = dict(chunks=(CHUNK_PIXELS,), maxshape=(None,), shuffle=True, compression=compression)
        for d in self.detectors:
            self.h5.create_dataset(f"scores/{d}", (0,), dtype="float16", **opts)
        self.h5.create_dataset("pred", (0,), dtype="int16", **opts)
        if with_gt:
            self.h5.create_dataset("gt", (0,), dtype="int16", **opts)
        self.pixels = 0
        self._range = {d: [np.inf, -np.inf] for d in self.detectors}

    def append(self, scores: Mapping[str, Sequence[np.ndarray]], pred: Sequence[np.ndarray],
               gt: Optional[Sequence[np.ndarray]] = None, paths: Sequence[str] = ()):
        """Write the next images: ``scores[name][i]``, ``pred[i]``, ``gt[i]`` are [H_i, W_i] arrays."""
        shapes = np.array([p.shape for p in pred], np.int64).reshape(-1, 2)
        lo, hi = self.rows, self.rows + len(pred)
        ends = self.pixels + np.cumsum(shapes.prod(1))
        end = int(ends[-1]) if len(ends) else self.pixels
        columns = {f"scores/{d}": scores[d] for d in self.detectors}
        columns["pred"] = pred
        if self.with_gt:
            if gt is None:
                raise InputError(f"{self.tmp}: this file stores ground truth, but none was given")
            columns["gt"] = gt
        for name, arrays in columns.items():
            flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays]) if len(arrays) else []
            if name.startswith("scores/"):
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


def write_segmentation(path, scores: Mapping[str, Sequence[np.ndarray]], pred, gt=None, paths=(), **attrs):
    """Write a whole file at once (tests, conversions)."""
    w = SegmentationWriter(path, len(pred), list(scores), with_gt=gt is not None, attrs=attrs, overwrite=True)
    w.append(scores, pred, gt, paths)
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
        key = name if name in ("pred", "gt") else f"scores/{name}"
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
