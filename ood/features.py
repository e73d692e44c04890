"""The HDF5 feature file (format version 1) and the fc head file: writing, lazy reading, ViM/GEN pickles.

One file per (model, split): ``features`` [N, D], optional ``logits`` [N, C], ``labels`` [N] (-1 = unknown),
``paths`` [N] UTF-8, optional ``fc/weight`` [C, D] and ``fc/bias`` [C]; root attributes say how it was made.
A file is written under ``<path>.partial`` and renamed when every row is in, so a reader never sees half a file;
``complete`` is true only then. Readers read rows by blocks, so a file larger than memory can be scored in pieces.

Writes go through :class:`WriteGuard`: the first failed write (a full disk) stops every later write to the file and
is raised as one ``OSError`` at the next commit, so HDF5 never sees a failing disk (it cannot close such a file
cleanly) and the ``.partial`` keeps the rows committed before. ViM/GEN pickles are read by a restricted
unpickler (:func:`load_pickle`) that builds numpy arrays, dtypes and plain containers only.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import importlib
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
#: chunk cache of a file being written: the chunk of rows being filled stays in memory between batches
CHUNK_CACHE = 64 * 2**20
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


class WriteGuard:
    """A binary file for h5py's ``fileobj`` driver that stops writing at the first failed write.

    HDF5 cannot close a file once a write has failed (h5py then crashes the interpreter), so the failure never
    reaches it: the first ``OSError`` (ENOSPC, EFBIG, EIO) is kept in ``error``, that write and every later one
    are dropped, and :meth:`check` raises it where the caller can stop cleanly. The file on disk stays as it
    was at the failure, like a file whose writer was killed then. An exclusive ``flock`` keeps a second writer
    off the same file (the ``sec2`` driver's locking, which this driver lacks).

    >>> import tempfile, os
    >>> g = WriteGuard(os.path.join(tempfile.mkdtemp(), "x.bin"), "w+b")
    >>> g.write(b"abc"), g.seek(0), g.read(3)
    (3, 0, b'abc')
    >>> g.close()
    """

    def __init__(self, path, mode: str = "r+b"):
        import fcntl

        self.path = Path(path)
        self.error: Optional[OSError] = None
        self.f = open(self.path, mode, buffering=0)
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise _err(self.path, "another process is writing this file (wait for it, or stop it)") from None

    def _fail(self, e: OSError):
        if self.error is None:
            self.error = e

    def read(self, size: int = -1) -> bytes:
        return self.f.read(size)

    def readinto(self, buf) -> int:
        return self.f.readinto(buf)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += self.f.write(view[done:])
            except OSError as e:
                self._fail(e)
        return len(view)

    def truncate(self, size: Optional[int] = None) -> int:
        if self.error is None:
            try:
                return self.f.truncate(size)
            except OSError as e:
                self._fail(e)
        return self.f.tell() if size is None else size

    def flush(self):
        pass

    def check(self, rows: Optional[int] = None):
        """Raise the first failed write as one ``OSError`` naming the file (and the rows it keeps)."""
        e = self.error
        if e is None:
            return
        reason = e.strerror or str(e)
        keeps = "" if rows is None else (f"; it keeps its first {rows} rows: free some space, then rerun with "
                                         f"--resume to continue it")
        raise OSError(e.errno or errno.EIO, f"{reason} while writing{keeps}", str(self.path))

    def close(self):
        self.f.close()


#: an unreadable .partial at most this large holds no committed batch worth keeping: --resume starts it over
SMALL_PARTIAL = 64 * 1024


class RowFileWriter:
    """The write protocol of every file written item by item (feature files, segmentation score maps).

    Writes go to ``<path>.partial`` through a :class:`WriteGuard`; ``rows_written`` counts the items fully in,
    committed only after their data is flushed; :meth:`finish` marks the file complete and renames it into
    place; :meth:`abort` leaves the partial file for ``resume=True``, which reopens it (``self.resumed``) so the
    subclass continues after ``self.rows``. A partial file of another run (an attribute in ``resume_keys``
    differs) is refused with one line naming the attribute; one cut off before its first flush (unreadable and
    small) is started over, with the reason in ``self.restarted``.
    """

    format, version = FORMAT, VERSION

    def __init__(self, path, *, attrs: Optional[Mapping] = None, resume: bool = False, overwrite: bool = False,
                 resume_keys: Sequence[str] = ()):
        self.path = Path(path)
        self.tmp = Path(str(self.path) + PARTIAL_SUFFIX)
        if self.path.exists() and not overwrite:
            raise _err(self.path, "exists already; pass --overwrite to replace it")
        self.resumed = False
        self.restarted: Optional[str] = None
        new_attrs = base_attrs(**(attrs or {}))
        if resume and self.tmp.exists():
            self.resumed = self._reopen(new_attrs, resume_keys)
        if self.resumed:
            self.rows = int(self.h5.attrs.get("rows_written", 0))
            return
        self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.io = WriteGuard(self.tmp, "w+b")
        self.h5 = h5py.File(self.io, "w", rdcc_nbytes=CHUNK_CACHE)
        for key, value in new_attrs.items():
            self.h5.attrs[key] = value
        self.h5.attrs.update({"format": self.format, "version": self.version, "complete": False,
                              "rows_written": 0})
        self.rows = 0

    def _reopen(self, new_attrs: dict, resume_keys: Sequence[str]) -> bool:
        """Open the partial file to continue it; False (start over) when it is unreadable and small."""
        self.io = WriteGuard(self.tmp, "r+b")
        try:
            self.h5 = h5py.File(self.io, "r+", rdcc_nbytes=CHUNK_CACHE)
            problem = None if "rows_written" in self.h5.attrs else "it has no rows_written attribute"
        except (OSError, RuntimeError, ValueError) as e:
            self.h5, problem = None, f"not a readable HDF5 file ({e.__class__.__name__})"
        if problem is not None:
            if self.h5 is not None:
                self.h5.close()
            self.io.close()
            if self.tmp.stat().st_size <= SMALL_PARTIAL:
                self.restarted = f"{self.tmp}: {problem}, cut off before its first batch was committed: starting over"
                return False
            raise _err(self.tmp, f"cannot resume: {problem}; delete it, or rerun without --resume, to start over")
        stored = self.h5.attrs
        for key, value in [("format", self.format)] + [(k, new_attrs.get(k)) for k in resume_keys]:
            if key in stored and str(stored[key]) != str(value):
                was = _text(stored[key])
                self.abort()
                raise _err(self.tmp, f"cannot resume: it was made with {key}={was!r}, this run has "
                                     f"{key}={_text(value)!r} (rerun without --resume to start over)")
        return True

    def flush(self):
        """Write everything so far to disk; a failed write is raised here as one ``OSError``."""
        self.io.check(self.rows)
        self.h5.flush()
        self.io.check(self.rows)

    def commit_rows(self, rows: int):
        """Record that the first ``rows`` items are fully written: their data is flushed first, then the counter,
        so neither a crash nor a full disk ever counts half a batch."""
        self.flush()
        self.h5.attrs["rows_written"] = rows
        self.flush()
        self.rows = rows

    def set_attrs(self, **attrs):
        for key, value in attrs.items():
            self.h5.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value

    def finish(self):
        """Mark complete and rename into place."""
        self.h5.attrs["complete"] = True
        self.h5.attrs["rows_written"] = self.rows
        self.flush()
        self.h5.close()
        self.io.check(self.rows)
        self.io.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        """Close the partial file and leave it for --resume (after a failed write, nothing more reaches the disk)."""
        try:
            self.h5.close()
        finally:
            self.io.close()

    def discard(self):
        """Close and delete the partial file (a run that has nothing to keep)."""
        self.abort()
        self.tmp.unlink(missing_ok=True)


def _text(value):
    return value.decode() if isinstance(value, bytes) else value.item() if hasattr(value, "item") else value


@contextlib.contextmanager
def h5_writing(path, overwrite: bool = True):
    """An h5py file written at ``<path>.partial`` through a :class:`WriteGuard`, renamed onto ``path`` when the
    block ends; on any failure (a full disk included, raised as one ``OSError``) the partial is removed and an
    earlier ``path`` stays as it was."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise _err(path, "exists already; pass --overwrite to replace it")
    tmp = Path(str(path) + PARTIAL_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    io = WriteGuard(tmp, "w+b")
    try:
        h5 = h5py.File(io, "w")
        try:
            yield h5
            h5.flush()
            io.check()
        finally:
            h5.close()
        io.check()
    except BaseException:
        io.close()
        tmp.unlink(missing_ok=True)
        raise
    io.close()
    os.replace(tmp, path)


class FeatureWriter(RowFileWriter):
    """Streams rows of a feature file; ``total`` rows are preallocated and trimmed to those written on close.

    ``extra`` names string columns stored next to ``paths`` (e.g. superclass, mask path).
    """

    def __init__(self, path, total: int, dim: int, num_classes: Optional[int] = None, *,
                 dtype: str = "float32", extra: Sequence[str] = (), attrs: Optional[Mapping] = None,
                 resume: bool = False, overwrite: bool = False, resume_keys: Sequence[str] = ()):
        if dtype not in ("float32", "float16"):
            raise InputError(f"dtype must be float32 or float16, got {dtype!r}")
        super().__init__(path, attrs=attrs, resume=resume, overwrite=overwrite, resume_keys=resume_keys)
        self.total = int(total)
        self.extra = tuple(extra)
        self._open: dict = {}
        if self.resumed:
            self._check_shape(dim, num_classes)
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
        self.commit_rows(0)  # from here on a killed run leaves a file that --resume opens

    def _check_shape(self, dim: int, num_classes: Optional[int]):
        """A resumed partial file must hold this run's rows, widths and columns; one line says what differs."""
        h5 = self.h5
        problem = None
        if "features" not in h5:
            problem = "it has no 'features' dataset"
        elif h5["features"].shape != (self.total, dim):
            n, d = h5["features"].shape
            problem = (f"it holds {n} rows of width {d}, this run has {self.total} rows of width {dim}"
                       + (" (another model?)" if d != dim else " (another list?)"))
        elif (h5["logits"].shape[1] if "logits" in h5 else None) != (num_classes or None):
            width = h5["logits"].shape[1] if "logits" in h5 else "no"
            problem = (f"it holds {width} logits a row, this run has {num_classes or 'no'} "
                       f"(another --num_classes or head?)")
        else:
            stored = sorted(k for k in h5 if isinstance(h5[k], h5py.Dataset) and h5[k].dtype.kind == "O"
                            and k not in ("paths", "skipped_paths", "classes"))
            if stored != sorted(self.extra):
                problem = (f"its extra list columns are {stored or 'none'}, this run's are "
                           f"{sorted(self.extra) or 'none'} (another --list_format?)")
        if problem:
            self.abort()
            raise _err(self.tmp, f"cannot resume: {problem}; rerun without --resume to start over")

    def append(self, features, logits=None, labels=None, paths: Sequence[str] = (), **extra):
        """Write the next rows; the row counter is flushed last, so a crash never counts half a batch."""
        features = np.asarray(features)
        k = len(features)
        lo, hi = self.rows, self.rows + k
        if hi > self.total:
            raise InputError(f"{self.tmp}: {hi} rows would exceed the {self.total} preallocated")
        self._dataset("features")[lo:hi] = features
        if logits is not None:
            self._dataset("logits")[lo:hi] = np.asarray(logits, dtype=np.float32)
        if labels is not None:
            self._dataset("labels")[lo:hi] = np.asarray(labels, dtype=np.int64)
        if len(paths):
            self._dataset("paths")[lo:hi] = list(paths)
        for name, values in extra.items():
            self._dataset(name)[lo:hi] = [str(v) for v in values]
        self.commit_rows(hi)

    def _dataset(self, name: str):
        """The dataset, kept open: its chunk cache then holds the chunk being filled from batch to batch, instead
        of reading it back from the file for every batch."""
        if name not in self._open:
            self._open[name] = self.h5[name]
        return self._open[name]

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
    try:
        w.append(features, logits, labels, paths, **extra)
        w.close()
    except BaseException:
        w.discard()
        raise


def write_fc(path, weight, bias, class_names: Optional[Sequence[str]] = None, *, overwrite=True, **attrs):
    """Write the fc head file: ``fc/weight`` [C, D], ``fc/bias`` [C], optional ``class_names``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise _err(path, "exists already; pass --overwrite to replace it")
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise InputError(f"fc weight must be [C, D] and bias [C], got {weight.shape} and {bias.shape}")
    with h5_writing(path) as h5:
        for key, value in base_attrs(**attrs).items():
            h5.attrs[key] = value
        h5.attrs["complete"] = True
        h5.create_dataset("fc/weight", data=weight)
        h5.create_dataset("fc/bias", data=bias)
        if class_names is not None:
            h5.create_dataset("class_names", data=list(class_names), dtype=_STR)


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


#: the globals a pickle of numpy arrays, dtypes and plain containers refers to (numpy 1 and 2 spellings)
PICKLE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("collections", "OrderedDict"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    *((m, n) for m in ("builtins", "__builtin__")
      for n in ("list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float", "complex",
                "bool")),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dtypes and plain containers only: every other global a pickle
    names (a function to call, a class to build) is refused, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}; only numpy arrays, dtypes and plain "
                                         f"containers are unpickled (a pickle can run code)")
        module = {"__builtin__": "builtins"}.get(module, module.replace("numpy.core.", "numpy._core."))
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it holds a persistent id; only numpy arrays, dtypes and plain containers "
                                     "are unpickled")


def load_pickle(path):
    """Read a ViM/GEN pickle with :class:`RestrictedUnpickler`; one line naming the file for anything else.

    >>> import pickle, tempfile, os, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "fc.pkl")
    >>> with open(p, "wb") as f:
    ...     pickle.dump([np.ones((2, 3)), np.zeros(2)], f)
    >>> [a.shape for a in load_pickle(p)]
    [(2, 3), (2,)]
    >>> with open(p, "wb") as f:
    ...     pickle.dump(os.getcwd, f)
    >>> load_pickle(p)
    Traceback (most recent call last):
    ood.errors.FeatureFileError: ...: refused: it refers to posix.getcwd; only numpy arrays, dtypes and plain ...
    """
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise _err(path, "no such file") from None
    except IsADirectoryError:
        raise _err(path, "is a directory, not a pickle file") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("it "):
            raise _err(path, f"refused: {e}") from None
        raise _err(path, f"not a readable pickle (UnpicklingError: {e})") from None
    except MemoryError:
        raise _err(path, "not a readable pickle (it asks for more memory than there is)") from None
    except Exception as e:  # a truncated or foreign pickle has many failure types
        raise _err(path, f"not a readable pickle ({e.__class__.__name__}: {e})") from None


def _numeric(path, obj, what: str) -> np.ndarray:
    """``obj`` as an array of real numbers, or one line naming the file."""
    try:
        arr = np.asarray(obj)
        if arr.dtype.kind not in "fiub":
            arr = arr.astype(np.float32)
    except (TypeError, ValueError):
        raise _err(path, f"expected {what}, got {type(obj).__name__} that is not an array of numbers") from None
    return arr


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
            arr = _numeric(path, load_pickle(path), "a pickled [N, D] feature array")
            arr = arr.reshape(len(arr), -1) if arr.ndim > 2 else arr
            if arr.ndim != 2:
                raise _err(path, f"expected a pickled [N, D] feature array, got shape {arr.shape}")
            self._mem["features"] = arr
            self.attrs = {}
        else:
            self._h5 = open_h5(path)
            try:
                self._check_datasets()
            except BaseException:
                self.close()
                raise
            self.attrs = dict(self._h5.attrs)
        n, d = self._shape("features")
        self.n, self.dim = n, d

    def _check_datasets(self):
        """Every row dataset is a dataset of the right kind, with as many rows as ``features``."""
        h5, path = self._h5, self.path
        kinds = {"features": "fiu", "logits": "fiu", "labels": "iu", "paths": "OSU"}
        if "features" not in h5:
            raise _err(path, "has no 'features' dataset (is it an fc head file?)")
        for name, kind in kinds.items():
            if name in h5 and not (isinstance(h5[name], h5py.Dataset) and h5[name].dtype.kind in kind):
                what = h5[name].dtype if isinstance(h5[name], h5py.Dataset) else "a group"
                kind_name = {"paths": "strings", "labels": "integers"}.get(name, "numbers")
                raise _err(path, f"'{name}' must be a dataset of {kind_name}, got {what}")
        shape = h5["features"].shape
        if len(shape) != 2 or shape[1] == 0:
            raise _err(path, f"'features' must be [N, D] with D >= 1, got shape {shape}")
        for name in ("logits", "labels", "paths"):
            if name in h5 and (h5[name].ndim == 0 or h5[name].shape[0] != shape[0]):
                raise _err(path, f"'{name}' has shape {h5[name].shape}, 'features' has {shape[0]} rows")
        if "logits" in h5 and (h5["logits"].ndim != 2 or h5["logits"].shape[1] == 0):
            raise _err(path, f"'logits' must be [N, C] with C >= 1, got shape {h5['logits'].shape}")

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
        obj = load_pickle(path)
        try:
            w, b = obj
        except (TypeError, ValueError):
            raise _err(path, "expected a pickled [W, b] pair for the fc head") from None
        w = _numeric(path, w, "a pickled [W, b] pair of arrays").astype(np.float32)
        b = _numeric(path, b, "a pickled [W, b] pair of arrays").astype(np.float32).reshape(-1)
        attrs = {}
        names = None
    else:
        with open_h5(path) as h5:
            if "fc/weight" not in h5 or "fc/bias" not in h5:
                raise _err(path, "has no fc/weight and fc/bias (not an fc head file)")
            try:
                w = _numeric(path, h5["fc/weight"][()], "fc/weight of numbers").astype(np.float32)
                b = _numeric(path, h5["fc/bias"][()], "fc/bias of numbers").astype(np.float32).reshape(-1)
            except (AttributeError, TypeError, OSError, KeyError) as e:
                raise _err(path, f"fc/weight or fc/bias is not a readable dataset ({e.__class__.__name__})") from None
            try:
                names = list(h5["class_names"].asstr()[()]) if "class_names" in h5 else None
            except (AttributeError, TypeError, OSError, ValueError):
                raise _err(path, "class_names is not a readable dataset of strings") from None
            attrs = dict(h5.attrs)
    if w.ndim != 2 or b.shape != (w.shape[0],) or w.size == 0:
        raise _err(path, f"fc weight must be [C, D] and bias [C], got {w.shape} and {b.shape}")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise _err(path, "fc weight or bias contains NaN or Inf")
    return Head(w, b, names, attrs)
