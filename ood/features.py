"""The HDF5 feature file (format version 1) and the fc head file: writing, lazy reading, ViM/GEN pickles.

One file per (model, split): ``features`` [N, D], optional ``logits`` [N, C], ``labels`` [N] (-1 = unknown),
``paths`` [N] UTF-8, optional ``fc/weight`` [C, D] and ``fc/bias`` [C]; root attributes say how it was made.
A file is written under ``<path>.partial`` and renamed when every row is in, so a reader never sees half a file;
``complete`` is true only then. Readers read rows by blocks, so a file larger than memory can be scored in pieces.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import h5py
import numpy as np

from .errors import FeatureFileError, InputError
from .fileio import PARTIAL_SUFFIX

FORMAT = "ood-features"
VERSION = 1
CHUNK_ROWS = 1000
_STR = h5py.string_dtype("utf-8")


def _err(path, problem: str) -> FeatureFileError:
    return FeatureFileError(f"{path}: {problem}")


def file_sha256(path) -> str:
    """The sha256 of a file (checkpoints in the file attributes; copies of feature files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> str:
    """JSON of the versions of the libraries that shape the numbers in a file."""
    import importlib.metadata as md

    out = {}
    for name in ("numpy", "h5py", "torch", "torchvision", "timm", "open_clip_torch", "mmpretrain", "ood"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return json.dumps(out, sort_keys=True)


def base_attrs(**attrs) -> dict:
    """The root attributes every file carries, plus the caller's; dicts and lists are stored as JSON."""
    out = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library_versions": library_versions(),
    }
    for key, value in attrs.items():
        if value is None:
            continue
        out[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value
    return out


# --------------------------------------------------------------------------------------------- writing


class RowFileWriter:
    """The write protocol of every file written item by item (feature files, segmentation score maps).

    Writes go to ``<path>.partial``; ``rows_written`` (flushed after each batch) counts the items fully in;
    :meth:`finish` marks the file complete and renames it into place; :meth:`abort` leaves the partial file
    for ``resume=True``, which reopens it (``self.resumed``) so the subclass continues after ``self.rows``.
    """

    format, version = FORMAT, VERSION

    def __init__(self, path, *, attrs: Optional[Mapping] = None, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.tmp = Path(str(self.path) + PARTIAL_SUFFIX)
        if self.path.exists() and not overwrite:
            raise _err(self.path, "exists already; pass --overwrite to replace it")
        self.resumed = bool(resume and self.tmp.exists())
        if self.resumed:
            self.h5 = h5py.File(self.tmp, "r+")
            self.rows = int(self.h5.attrs.get("rows_written", 0))
            return
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.h5 = h5py.File(self.tmp, "w")
        for key, value in base_attrs(**(attrs or {})).items():
            self.h5.attrs[key] = value
        self.h5.attrs.update({"format": self.format, "version": self.version, "complete": False,
                              "rows_written": 0})
        self.rows = 0

    def commit_rows(self, rows: int):
        """Record that the first ``rows`` items are fully written (flushed last, so a crash never counts half)."""
        self.rows = rows
        self.h5.attrs["rows_written"] = rows
        self.h5.flush()

    def set_attrs(self, **attrs):
        for key, value in attrs.items():
            self.h5.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value

    def finish(self):
        """Mark complete and rename into place."""
        self.h5.attrs["complete"] = True
        self.h5.attrs["rows_written"] = self.rows
        self.h5.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        """Close the partial file and leave it for --resume."""
        self.h5.close()


class FeatureWriter(RowFileWriter):
    """Streams rows of a feature file; ``total`` rows are preallocated and trimmed to those written on close.

    ``extra`` names string columns stored next to ``paths`` (e.g. superclass, mask path).
    """

    def __init__(self, path, total: int, dim: int, num_classes: Optional[int] = None, *,
                 dtype: str = "float32", extra: Sequence[str] = (), attrs: Optional[Mapping] = None,
                 resume: bool = False, overwrite: bool = False):
        if dtype not in ("float32", "float16"):
            raise InputError(f"dtype must be float32 or float16, got {dtype!r}")
        super().__init__(path, attrs=attrs, resume=resume, overwrite=overwrite)
        self.total = int(total)
        self.extra = tuple(extra)
        if self.resumed:
            got = (self.h5["features"].shape[1], self.h5["features"].shape[0])
            if got != (dim, self.total):
                self.h5.close()
                raise _err(self.tmp, f"cannot resume: it holds {got[1]} rows of width {got[0]}, "
                                     f"this run has {self.total} rows of width {dim}")
            return
        chunk = max(1, min(CHUNK_ROWS, self.total))
        n = self.total
        self.h5.create_dataset("features", (n, dim), dtype=dtype, maxshape=(None, dim), chunks=(chunk, dim))
        if num_classes:
            self.h5.create_dataset("logits", (n, num_classes), dtype="float32", maxshape=(None, num_classes),
                                   chunks=(chunk, num_classes))
        self.h5.create_dataset("labels", (n,), dtype="int64", maxshape=(None,), chunks=(chunk,), fillvalue=-1)
        for name in ("paths",) + self.extra:
            self.h5.create_dataset(name, (n,), dtype=_STR, maxshape=(None,), chunks=(chunk,))

    def append(self, features, logits=None, labels=None, paths: Sequence[str] = (), **extra):
        """Write the next rows; the row counter is flushed last, so a crash never counts half a batch."""
        features = np.asarray(features)
        k = len(features)
        lo, hi = self.rows, self.rows + k
        if hi > self.total:
            raise InputError(f"{self.tmp}: {hi} rows would exceed the {self.total} preallocated")
        self.h5["features"][lo:hi] = features
        if logits is not None:
            self.h5["logits"][lo:hi] = np.asarray(logits, dtype=np.float32)
        if labels is not None:
            self.h5["labels"][lo:hi] = np.asarray(labels, dtype=np.int64)
        if len(paths):
            self.h5["paths"][lo:hi] = list(paths)
        for name, values in extra.items():
            self.h5[name][lo:hi] = [str(v) for v in values]
        self.commit_rows(hi)

    def close(self):
        """Trim the row datasets to the rows written, mark complete and rename into place."""
        for name in ("features", "logits", "labels", "paths") + self.extra:
            if name in self.h5 and self.h5[name].shape[0] != self.rows:
                self.h5[name].resize(self.rows, axis=0)
        self.finish()


def write_features(path, features, logits=None, labels=None, paths=None, *, dtype="float32",
                   extra: Optional[Mapping[str, Sequence[str]]] = None, overwrite=True, **attrs):
    """Write a whole feature file at once (tests, conversions)."""
    features = np.asarray(features)
    n, d = features.shape
    if labels is None:
        labels = np.full(n, -1, dtype=np.int64)
    if paths is None:
        paths = [f"{i}" for i in range(n)]
    extra = dict(extra or {})
    w = FeatureWriter(path, n, d, None if logits is None else np.shape(logits)[1], dtype=dtype,
                      extra=tuple(extra), attrs=attrs, overwrite=overwrite)
    w.append(features, logits, labels, paths, **extra)
    w.close()


def write_fc(path, weight, bias, class_names: Optional[Sequence[str]] = None, *, overwrite=True, **attrs):
    """Write the fc head file: ``fc/weight`` [C, D], ``fc/bias`` [C], optional ``class_names``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise _err(path, "exists already; pass --overwrite to replace it")
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise InputError(f"fc weight must be [C, D] and bias [C], got {weight.shape} and {bias.shape}")
    tmp = Path(str(path) + PARTIAL_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as h5:
        for key, value in base_attrs(**attrs).items():
            h5.attrs[key] = value
        h5.attrs["complete"] = True
        h5.create_dataset("fc/weight", data=weight)
        h5.create_dataset("fc/bias", data=bias)
        if class_names is not None:
            h5.create_dataset("class_names", data=list(class_names), dtype=_STR)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- reading


def open_h5(path, fmt: str = FORMAT, version: int = VERSION) -> h5py.File:
    """Open a complete file of format ``fmt`` for reading, or raise one line naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        if Path(str(path) + PARTIAL_SUFFIX).exists():
            raise _err(path, "missing; only an incomplete .partial file exists (the run stopped: rerun it with "
                             "--resume)")
        raise _err(path, "no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise _err(path, f"not a readable HDF5 file (truncated or corrupt?): {e.__class__.__name__}") from None
    if h5.attrs.get("format", fmt) != fmt:
        h5.close()
        raise _err(path, f"format attribute is {h5.attrs.get('format')!r}, expected {fmt!r}")
    if int(h5.attrs.get("version", version)) > version:
        h5.close()
        raise _err(path, f"format version {h5.attrs.get('version')} is newer than this reader ({version})")
    if not bool(h5.attrs.get("complete", True)):
        h5.close()
        raise _err(path, "incomplete: its 'complete' attribute is false (the run stopped: rerun it with --resume)")
    return h5


def _load_pickle(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except Exception as e:  # a truncated or foreign pickle has many failure types
        raise _err(path, f"not a readable pickle ({e.__class__.__name__}: {e})") from None


def _is_pickle(path) -> bool:
    return Path(path).suffix.lower() in (".pkl", ".pickle")


class FeatureFile:
    """Lazy reader of one feature file (HDF5, or a ViM/GEN pickle of features).

    Nothing is read until asked: :meth:`read` takes a row range, :meth:`blocks` walks the rows in blocks.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._h5 = None
        self._mem: dict = {}
        if _is_pickle(path):
            arr = _load_pickle(path)
            arr = np.asarray(arr)
            arr = arr.reshape(len(arr), -1) if arr.ndim > 2 else arr
            if arr.ndim != 2:
                raise _err(path, f"expected a pickled [N, D] feature array, got shape {arr.shape}")
            self._mem["features"] = arr
            self.attrs = {}
        else:
            self._h5 = open_h5(path)
            self.attrs = dict(self._h5.attrs)
            if "features" not in self._h5:
                raise _err(path, "has no 'features' dataset (is it an fc head file?)")
            shape = self._h5["features"].shape
            if len(shape) != 2:
                raise _err(path, f"'features' must be [N, D], got shape {shape}")
            for name in ("logits", "labels", "paths"):
                if name in self._h5 and self._h5[name].shape[0] != shape[0]:
                    raise _err(path, f"'{name}' has {self._h5[name].shape[0]} rows, 'features' has {shape[0]}")
        n, d = self._shape("features")
        self.n, self.dim = n, d

    def _shape(self, name):
        return self._mem[name].shape if name in self._mem else self._h5[name].shape

    def has(self, name: str) -> bool:
        return name in self._mem or (self._h5 is not None and name in self._h5)

    @property
    def num_classes(self) -> Optional[int]:
        return self._shape("logits")[1] if self.has("logits") else None

    def read(self, name: str = "features", start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """Rows [start, stop) of one dataset; strings come back as ``str``."""
        if name in self._mem:
            return self._mem[name][start:stop]
        if not self.has(name):
            raise _err(self.path, f"has no '{name}' dataset")
        ds = self._h5[name]
        try:
            if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype):
                return np.asarray(ds.asstr()[start:stop], dtype=object)
            return ds[start:stop]
        except OSError as e:
            raise _err(self.path, f"cannot read '{name}' (truncated or corrupt?): {e}") from None

    def labels(self) -> np.ndarray:
        return self.read("labels").astype(np.int64) if self.has("labels") else np.full(self.n, -1, np.int64)

    def paths(self) -> Optional[np.ndarray]:
        return self.read("paths") if self.has("paths") else None

    def blocks(self, rows: int = 8192, name: str = "features") -> Iterator[tuple[int, int, np.ndarray]]:
        for lo in range(0, self.n, rows):
            hi = min(self.n, lo + rows)
            yield lo, hi, self.read(name, lo, hi)

    def head(self) -> Optional["Head"]:
        if self._h5 is not None and "fc/weight" in self._h5:
            return read_head(self.path)
        return None

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class Head:
    """A linear classifier head: logits = features @ weight.T + bias."""

    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    class_names: Optional[list] = None
    attrs: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]


def read_head(path) -> Head:
    """The fc head from an HDF5 fc (or feature) file, or a ViM/GEN pickled ``[W, b]``."""
    path = Path(path)
    if _is_pickle(path):
        obj = _load_pickle(path)
        try:
            w, b = obj
        except (TypeError, ValueError):
            raise _err(path, "expected a pickled [W, b] pair for the fc head") from None
        w = np.asarray(w, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32).reshape(-1)
        attrs = {}
        names = None
    else:
        with open_h5(path) as h5:
            if "fc/weight" not in h5 or "fc/bias" not in h5:
                raise _err(path, "has no fc/weight and fc/bias (not an fc head file)")
            w = h5["fc/weight"][()].astype(np.float32)
            b = h5["fc/bias"][()].astype(np.float32).reshape(-1)
            names = list(h5["class_names"].asstr()[()]) if "class_names" in h5 else None
            attrs = dict(h5.attrs)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise _err(path, f"fc weight must be [C, D] and bias [C], got {w.shape} and {b.shape}")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise _err(path, "fc weight or bias contains NaN or Inf")
    return Head(w, b, names, attrs)
