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
from ..errors import InputError
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


#: a within-class variance below this share of the total is float32 rounding of a zero covariance
WITHIN_FLOOR = 1e-6


def check_gram(train, m: dict):
    """Refuse train features whose float32 products overflow: their Gram matrix (and so every covariance,
    eigendecomposition and distance derived from it) would hold Inf."""
    if not np.isfinite(m["gram"]).all():
        raise InputError(f"{train.path}: the train features are too large for float32 products (their Gram matrix "
                         f"overflows, values beyond about 1e17?); scale them down")


def rank_note(det, L: np.ndarray, what: str, dim: int, most: int):
    """Refuse a covariance with no variance at all; name one of lower rank than the feature width (its rank is
    at most ``most``, the rows less the means subtracted)."""
    if L.shape[1] == 0:
        raise InputError(f"the {what} is zero (the train features do not vary): every distance would be 0")
    rank = min(L.shape[1], most)
    if rank < dim:
        det.note(f"the {what} has rank {rank} of {dim}: the {dim - rank} directions without train "
                 f"variance are left out of the distance (pseudo-inverse)")


def min_sq_distance(h: torch.Tensor, c: torch.Tensor, L: torch.Tensor, v: torch.Tensor, vv: torch.Tensor):
    """min_c |(h - c) L - v_c|^2 for a block of rows, float64; in float32 first, and again in float64 for the
    rows whose float32 squares overflow (rows far outside the train features)."""
    y = (h - c) @ L
    d = ((y * y).sum(1, keepdim=True) - 2 * y @ v.T + vv).min(1).values.double()
    bad = ~torch.isfinite(d)
    if bad.any():
        y = (h[bad].double() - c.double()) @ L.double()
        d[bad] = ((y * y).sum(1, keepdim=True) - 2 * y @ v.double().T + vv.double()).min(1).values
    return d


@register("mahalanobis")
class Mahalanobis(Detector):
    """-min_c (h - mu_c)^T P (h - mu_c), tied covariance of class-centred train features."""

    requires = ("train_labels",)

    def fit(self, train):
        cs = stats.class_stats(train)
        m = stats.moments(train)
        check_gram(train, m)
        between = float((cs["counts"] * ((cs["means"] - m["mean"]) ** 2).sum(1)).sum())
        total = float(np.trace(m["gram"]))
        if total > 0 and total - between <= WITHIN_FLOOR * total:
            raise InputError(f"the train features do not vary within their classes ({len(cs['classes'])} classes "
                             f"for {train.n} rows): the tied covariance is zero and every distance would be 0")
        L = train.memo(("within_class_precision_factor", LABELS),
                       lambda: pinv_factor(stats.within_class_scatter(train) / train.n))
        rank_note(self, L, "tied within-class train covariance", train.dim, train.n - len(cs["classes"]))
        self.center_ = m["mean"]
        self.L_ = L
        self.v_ = (cs["means"] - m["mean"]) @ L
        self.classes_ = cs["classes"]
        return self

    def score(self, split):
        def compute():
            L, v, c = split.tensor(self.L_), split.tensor(self.v_), split.tensor(self.center_)
            vv = (v * v).sum(1)
            return split.map_blocks(lambda lo, hi, h: -min_sq_distance(h, c, L, v, vv), dtype=np.float64)
        # memoised per fitted train split: rmd adds its background distance to these same scores
        return split.memo(("mahalanobis_scores", self.train_uid_), compute).copy()
