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

from .features import FeatureFile, FeatureFileError, Head
from .errors import InputError

BLOCK_ELEMENTS = 1 << 23  # about 32 MB of float32 per block-sized temporary
_UIDS = itertools.count(1)  # split identities: never reused within a process (unlike id())


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


class Split:
    """Features [N, D], logits [N, C], labels [N] and the head (W, b) of one data split.

    ``features`` are read from the file on first use and checked for NaN/Inf; ``logits`` come from the file
    when it has them, else from the head. ``memo(key, fn)`` caches anything derived from this split.
    ``extras`` holds further named inputs of the run (e.g. ``"group_head"``) for the detectors whose
    ``requires`` name them.
    """

    def __init__(self, name: str, source: FeatureFile, head: Head, device: torch.device = torch.device("cpu"),
                 labels: Optional[np.ndarray] = None):
        self.name = name
        self.source = source
        self.head = head
        self.device = device
        if source.dim != head.dim:
            raise FeatureFileError(f"{source.path}: feature width {source.dim} does not match the head's "
                                   f"input width {head.dim}")
        if source.num_classes is not None and source.num_classes != head.num_classes:
            raise FeatureFileError(f"{source.path}: {source.num_classes} logits per row, the head has "
                                   f"{head.num_classes} classes")
        self.uid = next(_UIDS)
        self._labels = labels
        self._memo: dict = {}
        self.keep_logits = True
        self.notes: list = []
        self.extras: dict = {}

    @classmethod
    def from_arrays(cls, name, features, head: Head, logits=None, labels=None, device="cpu") -> "Split":
        """A split from in-memory arrays (tests, tuning subsets)."""
        src = _ArraySource(name, np.ascontiguousarray(features, dtype=np.float32), logits, labels)
        return cls(name, src, head, torch.device(device), None if labels is None else np.asarray(labels))

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
        return self.head.num_classes

    @property
    def features(self) -> np.ndarray:
        def load():
            x = np.ascontiguousarray(self.source.read("features"), dtype=np.float32)
            bad = ~np.isfinite(x).all(axis=1)
            if bad.any():
                raise FeatureFileError(f"{self.path}: {int(bad.sum())} rows of features contain NaN or Inf "
                                       f"(first at row {int(np.argmax(bad))})")
            return x
        return self.memo("features", load)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = self.source.labels()
        return self._labels

    @labels.setter
    def labels(self, value: np.ndarray):
        self._labels = np.asarray(value, dtype=np.int64)

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
    def memo(self, key, fn: Callable):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def tensor(self, a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.as_tensor(a).to(self.device, dtype=dtype, non_blocking=True)

    @property
    def weight(self) -> torch.Tensor:
        return self.memo("head_weight", lambda: self.tensor(self.head.weight))

    @property
    def bias(self) -> torch.Tensor:
        return self.memo("head_bias", lambda: self.tensor(self.head.bias))

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
                yield lo, hi, self.tensor(self.features[lo:hi])
            elif self.keep_logits or "logits" in self._memo:
                yield lo, hi, self.tensor(self.logits[lo:hi])
            elif self.stored_logits_match_head():
                yield lo, hi, self.tensor(self._checked_logits(self.source.read("logits", lo, hi)))
            else:
                yield lo, hi, self.apply_head(self.tensor(self.features[lo:hi]))

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
