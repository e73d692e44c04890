"""A split ready for scoring: features, logits, labels and the head on one torch device, plus a memo.

Every detector reads its inputs through a :class:`Split`, so what several detectors need (logits, softmax,
clipped logits, train statistics) is computed once per benchmark run and shared through :meth:`Split.memo`.
Heavy work walks the rows in blocks (:meth:`Split.blocks`), so temporaries stay a block in size.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .checks import check_finite_rows
from .errors import InputError
from .features import FeatureFile, FeatureFileError, Head

BLOCK_ELEMENTS = 1 << 21  # 8 MB of float32 (16 MB of float64) per block-sized temporary
_UIDS = itertools.count(1)  # split identities: never reused within a process (unlike id())


#: a memo key holding this marker depends on the split's labels, and is dropped when they are set
LABELS = "labels"


def fit_key(name: str, train: "Split", *params) -> tuple:
    """The memo key of a value cached on a scored split that derives from a fit on ``train``: it names the
    train split's identity, so a detector refitted on other data never finds the first fit's values."""
    return (name, train.uid, *params)


def resolve_device(device="auto") -> torch.device:
    """``auto`` = CUDA when torch sees it, else the CPU; ``cuda`` without a CUDA device is an error."""
    from .runtime import resolve_device as resolve
    return resolve(device)


class Split:
    """Features [N, D], logits [N, C], labels [N] and the head (W, b) of one data split.

    ``features`` are read from the file on first use and checked for NaN/Inf; ``logits`` come from the file
    when it has them, else from the head (``head`` may be None for detectors that use the features alone).
    ``memo(key, fn)`` caches anything derived from this split; ``uid`` is an identity never reused in the
    process, for keys of values derived from a fit on this split (:func:`fit_key`). ``extras`` holds further
    named inputs of the run (e.g. ``"group_head"``) for the detectors whose ``requires`` name them.

    >>> import numpy as np
    >>> s = Split.from_arrays("toy", np.ones((4, 3)), labels=[0, 1, 0, 1])
    >>> s.n, s.dim, s.num_classes
    (4, 3, 2)
    """

    def __init__(self, name: str, source: FeatureFile, head: Optional[Head], device: torch.device = torch.device("cpu"),
                 labels: Optional[np.ndarray] = None):
        self.name = name
        self.source = source
        self.head = head
        self.device = device
        if head is None:
            pass
        elif source.dim != head.dim:
            raise FeatureFileError(f"{source.path}: feature width {source.dim} does not match the head's "
                                   f"input width {head.dim}")
        elif source.num_classes is not None and source.num_classes != head.num_classes:
            raise FeatureFileError(f"{source.path}: {source.num_classes} logits per row, the head has "
                                   f"{head.num_classes} classes")
        self.uid = next(_UIDS)
        self._labels = labels
        self._memo: dict = {}
        self.keep_logits = True
        #: False: features are read from the file a block at a time and never held (the benchmark's train split)
        self.keep_features = True
        self.notes: list = []
        self.extras: dict = {}

    @classmethod
    def from_arrays(cls, name, features, head: Optional[Head] = None, logits=None, labels=None,
                    device="cpu") -> "Split":
        """A split from in-memory arrays (a notebook, tests, tuning subsets)."""
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise InputError(f"{name}: features must be a non-empty 2-D array [N, D], got shape {x.shape}")
        if logits is not None:
            logits = np.asarray(logits)
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise InputError(f"{name}: logits must be [N, C] with N = {x.shape[0]} rows, got {logits.shape}")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (x.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise InputError(f"{name}: labels must be {x.shape[0]} integers, got {labels.dtype} {labels.shape}")
            labels = labels.astype(np.int64)
        src = _ArraySource(name, np.ascontiguousarray(x, dtype=np.float32), logits, labels)
        return cls(name, src, head, resolve_device(device), labels)

    # ------------------------------------------------------------------ data
    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def n(self) -> int:
        return self.source.n

    @property
    def dim(self) -> int:
        return self.source.dim

    @property
    def num_classes(self) -> int:
        """Classes of the head; without one, of the stored logits, else 1 + the largest label."""
        if self.head is not None:
            return self.head.num_classes
        if self.source.num_classes is not None:
            return self.source.num_classes
        return int(max(self.labels.max(initial=-1), 0)) + 1

    def require_head(self) -> Head:
        if self.head is None:
            raise InputError(f"{self.name}: this detector needs the classifier head: pass head=(W, b) to fit")
        return self.head

    @property
    def features(self) -> np.ndarray:
        """All features [N, D] float32, read and checked once and kept (a streamed split reads them only for a
        detector that needs every row at once, e.g. the kNN bank)."""
        def load():
            x = np.ascontiguousarray(self.source.read("features"), dtype=np.float32)
            check_finite_rows(x, self.path)
            return x
        return self.memo("features", load)

    def feature_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the features: from memory when held, else read from the file and checked."""
        if self.keep_features or "features" in self._memo:
            return self.features[lo:hi]
        x = np.ascontiguousarray(self.source.read("features", lo, hi), dtype=np.float32)
        check_finite_rows(x, f"{self.path} (rows from {lo})")
        return x

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The features of the given sorted row indices, without reading the others into memory."""
        rows = np.asarray(rows)
        if self.keep_features or "features" in self._memo:
            return self.features[rows]
        out = np.empty((rows.size, self.dim), np.float32)
        step = self.block_rows()
        for lo in range(0, self.n, step):
            sel = (rows >= lo) & (rows < lo + step)
            if sel.any():
                out[sel] = self.feature_rows(lo, min(self.n, lo + step))[rows[sel] - lo]
        return out

    def check_features(self):
        """Read every feature row once now (kept, or streamed and dropped) so NaN / Inf rows are reported before
        any detector runs."""
        if self.keep_features:
            self.features
            return
        for _ in self.blocks():
            pass

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self.source.labels()
        return self._labels

    @labels.setter
    def labels(self, value: np.ndarray):
        """Set the labels; every memoised value that depends on them (keys holding LABELS) is dropped, and the
        split takes a new ``uid``: values cached elsewhere from a fit on the old labels are not found again."""
        self._labels = np.asarray(value, dtype=np.int64)
        self.uid = next(_UIDS)
        for key in [k for k in self._memo if isinstance(k, tuple) and LABELS in k]:
            del self._memo[key]

    @property
    def logits(self) -> np.ndarray:
        """All logits [N, C], kept for the run (use :meth:`blocks` with ``"logits"`` to stream instead)."""
        def compute():
            if self.stored_logits_match_head():
                return self._checked_logits(self.source.read("logits"))
            return self.map_blocks(lambda lo, hi, h: self.apply_head(h))
        return self.memo("logits", compute)

    def stored_logits_match_head(self, rows: int = 512) -> bool:
        """Whether the file's stored logits are this head's W h + b (checked on the first rows, with room for
        mixed-precision extraction). A file's logits from another head (a MOS flat head, a zero-shot head for
        another class list) are not used: the logits are recomputed from the head given, and a note says so."""
        def check():
            if not self.source.has("logits"):
                return False
            if self.head is None:
                return True
            k = min(self.n, rows)
            stored = self._checked_logits(self.source.read("logits", 0, k))
            mine = self.apply_head(self.tensor(self.source.read("features", 0, k))).cpu().numpy()
            scale = 1.0 + np.abs(mine).max()
            if np.abs(stored - mine).max() <= 0.02 * scale:
                return True
            self.notes.append(f"{self.path}: its stored logits are not the head's W h + b (max difference "
                              f"{np.abs(stored - mine).max():.3g}); logits recomputed from the head")
            return False
        return self.memo("stored_logits_match_head", check)

    def _checked_logits(self, z) -> np.ndarray:
        z = np.ascontiguousarray(z, dtype=np.float32)
        if not np.isfinite(z).all():
            raise FeatureFileError(f"{self.path}: logits contain NaN or Inf")
        return z

    # ------------------------------------------------------------------ compute helpers
    def memoised(self, key) -> bool:
        """Whether ``key`` has been computed for this split (see :meth:`memo`)."""
        return key in self._memo

    def forget(self, prefix: tuple):
        """Drop the memoised values whose tuple keys start with ``prefix`` (a run frees what no later detector
        reads)."""
        for key in [k for k in self._memo if isinstance(k, tuple) and k[:len(prefix)] == prefix]:
            del self._memo[key]

    def memo(self, key, fn: Callable):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def tensor(self, a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(a).to(self.device, dtype=dtype, non_blocking=True)

    @property
    def weight(self) -> torch.Tensor:
        return self.memo("head_weight", lambda: self.tensor(self.require_head().weight))

    @property
    def bias(self) -> torch.Tensor:
        return self.memo("head_bias", lambda: self.tensor(self.require_head().bias))

    def apply_head(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, h, self.weight.T)

    def block_rows(self, width: Optional[int] = None) -> int:
        width = width or max(self.dim, self.num_classes)
        return max(256, BLOCK_ELEMENTS // max(1, width))

    def blocks(self, source: str = "features", rows: Optional[int] = None
               ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(lo, hi, tensor on device) over the rows of ``features`` or ``logits``.

        Logits are kept for the run (``keep_logits``, the default) or streamed without being kept: from the
        file when it has them, else from the head (the benchmark streams the train split's N x C logits).
        """
        rows = rows or self.block_rows()
        for lo in range(0, self.n, rows):
            hi = min(self.n, lo + rows)
            if source == "features":
                yield lo, hi, self.tensor(self.feature_rows(lo, hi))
            else:
                yield lo, hi, self.logit_rows(lo, hi)

    def logit_rows(self, lo: int, hi: int, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits of rows [lo, hi) on the device: kept ones, else the file's, else the head applied to
        ``features`` (the rows' features when the caller has them) or to the rows read now."""
        if self.keep_logits or "logits" in self._memo:
            return self.tensor(self.logits[lo:hi])
        if self.stored_logits_match_head():
            return self.tensor(self._checked_logits(self.source.read("logits", lo, hi)))
        return self.apply_head(self.tensor(self.feature_rows(lo, hi)) if features is None else features)

    def map_blocks(self, fn: Callable[[int, int, torch.Tensor], torch.Tensor], source: str = "features",
                   dtype=np.float32, rows: Optional[int] = None) -> np.ndarray:
        """Apply ``fn(lo, hi, block)`` to every block and stack the results into one array."""
        out = None
        for lo, hi, x in self.blocks(source, rows):
            y = fn(lo, hi, x).detach().to("cpu").numpy()
            if out is None:
                out = np.empty((self.n,) + y.shape[1:], dtype=dtype)
            out[lo:hi] = y
        if out is None:
            raise FeatureFileError(f"{self.path}: has no rows")
        return out


def as_head(head) -> Optional[Head]:
    """A :class:`~ood.features.Head` from a Head, a ``(W, b)`` pair, or None."""
    if head is None or isinstance(head, Head):
        return head
    try:
        w, b = head
    except (TypeError, ValueError):
        raise InputError("head must be a (W [C, D], b [C]) pair") from None
    w = np.asarray(w, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32).reshape(-1)
    if w.ndim != 2 or b.shape != (w.shape[0],):
        raise InputError(f"head: W must be [C, D] and b [C], got {w.shape} and {b.shape}")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise InputError("head: W or b holds NaN or Inf")
    return Head(w, b)


def as_split(x, name: str, labels=None, head=None, logits=None, device="cpu") -> Split:
    """``x`` itself when it is a Split, else a Split of the arrays (features [N, D], optional labels, head
    and logits); the detectors' ``fit`` and ``score`` accept either through this."""
    if isinstance(x, Split):
        return x
    return Split.from_arrays(name, x, as_head(head), logits=logits, labels=labels, device=device)


class _ArraySource:
    """In-memory stand-in for a FeatureFile."""

    def __init__(self, name, features, logits=None, labels=None):
        self.path = Path(name)
        self._arrays = {"features": features}
        if logits is not None:
            self._arrays["logits"] = np.asarray(logits, dtype=np.float32)
        self._labels = labels
        self.n, self.dim = features.shape
        self.num_classes = None if logits is None else self._arrays["logits"].shape[1]

    def has(self, name):
        return name in self._arrays

    def read(self, name, start=0, stop=None):
        return self._arrays[name][start:stop]

    def labels(self):
        if self._labels is None:
            return np.full(self.n, -1, np.int64)
        return np.asarray(self._labels, dtype=np.int64)
