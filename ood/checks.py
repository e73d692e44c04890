"""The checks of input arrays that several modules need, in one place: finite rows and train labels.

>>> import numpy as np
>>> check_labels(np.array([0, 1, 2]), 3, 3, "train.h5")
>>> check_finite_rows(np.array([[1.0, np.nan]]), "test.h5")
Traceback (most recent call last):
...
ood.errors.FeatureFileError: test.h5: 1 rows of features contain NaN or Inf (first at row 0)
"""
from __future__ import annotations

import numpy as np

from .errors import FeatureFileError, InputError


def check_finite_rows(x: np.ndarray, source, what: str = "features"):
    """Raise naming ``source`` when a row of ``x`` holds NaN or Inf (checked a block of rows at a time, so
    the mask never grows with the array)."""
    step = max(1, (1 << 22) // max(1, x.shape[1] if x.ndim > 1 else 1))
    if all(np.isfinite(x[lo:lo + step]).all() for lo in range(0, len(x), step)):
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise FeatureFileError(f"{source}: {int(bad.sum())} rows of {what} contain NaN or Inf "
                               f"(first at row {int(np.argmax(bad))})")


def check_labels(labels: np.ndarray, rows: int, num_classes: int, source):
    """Train labels: one per row, each in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.size != rows:
        raise InputError(f"{source}: {labels.size} train labels for {rows} rows")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise InputError(f"{source}: {int(bad.sum())} train labels outside [0, {num_classes}) (first: "
                         f"{int(labels[bad][0])} at row {int(np.argmax(bad))}); class-conditional detectors need "
                         f"a class label for every train row")
