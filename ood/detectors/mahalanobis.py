"""Mahalanobis distance to the closest class mean with one shared covariance (Lee et al., NeurIPS 2018).

Class means come from the train features by train label; the covariance is that of the class-centred train
features divided by N; precision P = its pseudo-inverse (as sklearn's EmpiricalCovariance). The minimum over
classes is expanded, min_c |y - v_c|^2 with y = (h - m) L, v_c = (mu_c - m) L and P = L L^T, so each block of
rows costs two matrix products and no N x C x D tensor is formed.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats
from ..split import LABELS
from .base import Detector, register


def pinv_factor(cov: np.ndarray) -> np.ndarray:
    """F with F F^T = pinvh(cov): inv(L)^T from a Cholesky factor when cov is positive definite (then pinvh
    is the inverse), else from the eigendecomposition with scipy's pinvh cutoff."""
    c = torch.from_numpy(np.ascontiguousarray(cov, dtype=np.float64))
    L, info = torch.linalg.cholesky_ex(c)
    if int(info) == 0:
        eye = torch.eye(len(c), dtype=torch.float64)
        return torch.linalg.solve_triangular(L, eye, upper=False).T.numpy()
    vals, vecs = np.linalg.eigh(cov)
    cutoff = max(cov.shape) * np.finfo(np.float64).eps * np.abs(vals).max()
    keep = vals > cutoff
    return vecs[:, keep] / np.sqrt(vals[keep])


@register("mahalanobis")
class Mahalanobis(Detector):
    """-min_c (h - mu_c)^T P (h - mu_c), tied covariance of class-centred train features."""

    requires = ("train_labels",)

    def fit(self, train):
        cs = stats.class_stats(train)
        m = stats.moments(train)
        L = train.memo(("within_class_precision_factor", LABELS),
                       lambda: pinv_factor(stats.within_class_scatter(train) / train.n))
        self.center_ = m["mean"]
        self.L_ = L
        self.v_ = (cs["means"] - m["mean"]) @ L
        self.classes_ = cs["classes"]
        return self

    def score(self, split):
        L, v, c = split.tensor(self.L_), split.tensor(self.v_), split.tensor(self.center_)
        vv = (v * v).sum(1)

        def block(lo, hi, h):
            y = (h - c) @ L
            d = (y * y).sum(1, keepdim=True) - 2 * y @ v.T + vv
            return -d.min(1).values
        return split.map_blocks(block, dtype=np.float64)
