"""SHE, Simplified Hopfield Energy (Zhang et al., ICLR 2023, "Out-of-distribution detection based on
in-distribution data patterns memorization with modern Hopfield energy").

m_c = the mean feature of the train samples of label c that are also predicted as c; score = h . m_pred(h).
A class with no correctly classified train sample gets the mean of all train features (OpenOOD's mean of an
empty set is NaN there).
"""
from __future__ import annotations

import numpy as np
import torch

from ..split import LABELS
from .base import Detector, register
from .boundary import rowdot
from .shared import feature_mean, predicted


def correct_class_means(train) -> np.ndarray:
    """[C, D] float32: mean train feature of each class over its correctly classified samples."""
    def compute():
        y = torch.as_tensor(train.labels, device=train.device)
        pred = torch.as_tensor(predicted(train), device=train.device)
        C = train.num_classes
        sums = torch.zeros(C, train.dim, dtype=torch.float64, device=train.device)
        counts = torch.zeros(C, dtype=torch.float64, device=train.device)
        for lo, hi, h in train.blocks():
            ok = y[lo:hi] == pred[lo:hi]
            sums.index_add_(0, y[lo:hi][ok], h[ok].double())
            counts.index_add_(0, y[lo:hi][ok], torch.ones(int(ok.sum()), dtype=torch.float64,
                                                          device=train.device))
        means = np.tile(feature_mean(train), (C, 1))
        seen = (counts > 0).cpu().numpy()
        means[seen] = (sums[counts > 0] / counts[counts > 0, None]).cpu().numpy()
        return means.astype(np.float32)
    return train.memo(("correct_class_means", LABELS), compute)


@register("she")
class SHE(Detector):
    """Inner product with the correctly-classified train mean of the predicted class."""

    requires = ("train_labels",)

    def fit(self, train):
        self.means_ = correct_class_means(train)
        if not self.means_.any():
            self.note("every train class mean is the zero vector: every score is 0")
        return self

    def score(self, split):
        M = split.tensor(self.means_, dtype=torch.float64)
        pred = torch.as_tensor(predicted(split), device=split.device)
        # in float64: the products of large features overflow float32
        return split.map_blocks(lambda lo, hi, h: rowdot(M[pred[lo:hi]], h.double()), dtype=np.float64)
