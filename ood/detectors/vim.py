"""ViM and its residual relatives (Wang et al., CVPR 2022, "ViM: Out-Of-Distribution with Virtual-logit Matching").

u = -pinv(W) b is the origin; the principal space is spanned by the ``dim`` leading eigenvectors of the
covariance of (train - u) taken as centred, (X-u)^T (X-u) / N; the residual r(h) = ||(h - u) NS|| is the norm of
the projection on the remaining eigenvectors NS. ``dim=None`` picks the ViM default from the feature width D:
1000 if D >= 2048, 512 if D >= 768, else D // 2 (the ViM repository's rule; the GEN copy drops the last case,
which would leave no residual space for D <= 512).

Peers: pytorch-ood's ViM takes the eigendecomposition of a float32 covariance (sklearn's EmpiricalCovariance of
float32 features, then ``np.linalg.eig``); where the eigenvalues near the cut at ``dim`` are close, its residual
space differs from this float64 one and its AUROC moves by up to 3e-3. OpenOOD's ``residual`` postprocessor
defaults to dim = 512, which leaves an empty residual space for 512-wide features (ResNet-18: every score is 0);
the default here is D // 2 = 256 for them.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.linalg

from .. import stats
from ..split import Split, fit_key
from .base import Detector, register
from .boundary import norm64
from .logits import energy, gen_from_logits
from .mahalanobis import check_gram
from ..errors import InputError


#: a residual variance below this share of the total is float32 rounding (measured 1e-9 to 1e-7): alpha divides by ~0
RESIDUAL_FLOOR = 1e-6


def default_dim(D: int) -> int:
    return 1000 if D >= 2048 else 512 if D >= 768 else D // 2


def origin(W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """u = -pinv(W) b, the minimum-norm least-squares solution of W u = -b, float64.

    A head's weight has full rank, and then a QR factorisation of the thinner side gives pinv's solution (to
    round-off times the condition number) at a fraction of the SVD's cost (C = 1000, D = 2048: 0.1 s against
    3 s); a weight whose R has a diagonal entry below 1e-8 of its largest takes the SVD pseudo-inverse.

    >>> W, b = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]), np.array([1.0, -2.0])
    >>> bool(np.allclose(origin(W, b), -np.linalg.pinv(W) @ b))
    True
    """
    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    wide = W.shape[0] < W.shape[1]
    Q, R = np.linalg.qr(W.T if wide else W)
    d = np.abs(np.diag(R))
    if d.size == 0 or d.min() <= 1e-8 * d.max():
        return -np.linalg.pinv(W) @ b
    if wide:  # W = R^T Q^T: u = Q y with R^T y = -b
        return Q @ scipy.linalg.solve_triangular(R, -b, trans="T")
    return scipy.linalg.solve_triangular(R, -(Q.T @ b))


def null_space(train: Split, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, NS, eigenvalues): the ViM origin, the residual eigenvectors [D, D - dim] and the eigenvalues of the
    covariance about u (largest first), memoised on the train split."""
    def compute():
        u = origin(train.head.weight, train.head.bias)
        eig = train.memo("vim_eig", lambda: stats.eigh_desc(stats.scatter_about(train, u) / train.n))
        return u, np.ascontiguousarray(eig[1][:, dim:]), eig[0]
    if not 0 <= dim < train.dim:
        raise InputError(f"vim dim must be in [0, {train.dim}) for features of width {train.dim}, got {dim}")
    return train.memo(("vim_null_space", dim), compute)


def residual_norm(split: Split, train: Split, dim: int, u: np.ndarray, NS: np.ndarray) -> np.ndarray:
    """||(h - u) NS|| for every row of ``split``, memoised per residual space (the train split and dim)."""
    def compute():
        u_t, ns_t = split.tensor(u), split.tensor(NS)
        return split.map_blocks(lambda lo, hi, h: norm64((h - u_t) @ ns_t), dtype=np.float64)
    return split.memo(fit_key("vim_residual", train, dim), compute)


class _ResidualSpace(Detector):
    def __init__(self, dim: Optional[int] = None):
        self.dim = dim

    def fit(self, train):
        self.dim_ = default_dim(train.dim) if self.dim is None else int(self.dim)
        check_gram(train, stats.moments(train))
        self.u_, self.NS_, vals = null_space(train, self.dim_)
        # rank: eigenvalues above pinvh's cutoff, and at most the number of train rows
        rank = min(int((vals > vals.size * np.finfo(np.float64).eps * max(vals[0], 0.0)).sum()), train.n)
        self.residual_share_ = float(np.clip(vals[self.dim_:], 0, None).sum() / max(np.clip(vals, 0, None).sum(),
                                                                                    np.finfo(np.float64).tiny))
        if self.dim_ < rank < train.dim:
            self.note(f"the train covariance about u has rank {rank} of {train.dim}: {train.dim - rank} "
                      f"of the {train.dim - self.dim_} residual directions have no train variance")
        elif rank <= self.dim_:
            self.note(f"the train covariance about u has rank {rank} of {train.dim}, no more than dim = {self.dim_}: "
                      f"no residual direction has train variance (the residual is the distance from the train span)")
        self.train_ = train
        return self

    def residual(self, split):
        return residual_norm(split, self.train_, self.dim_, self.u_, self.NS_)


@register("vim")
class ViM(_ResidualSpace):
    """logsumexp(z) - alpha r(h), alpha = mean train max logit / mean train r (Wang et al. 2022)."""

    def fit(self, train):
        super().fit(train)
        r = self.residual(train).mean()
        if r == 0:
            raise InputError(f"the train features have no variance outside the {self.dim_} principal directions: "
                             f"the residual is 0 on every train row and alpha is undefined; set vim.dim below the "
                             f"rank of the train features")
        self.alpha_ = stats.logit_stats(train)["max_logit"].mean() / r
        if self.residual_share_ <= RESIDUAL_FLOOR:
            self.note(f"the train features have no variance outside the {self.dim_} principal directions (a share of "
                      f"{self.residual_share_:.1e}, float32 rounding): alpha = {self.alpha_:.3g} comes from that "
                      f"rounding and the score ranks by the residual alone")
        return self

    def score(self, split):
        e = split.map_blocks(lambda lo, hi, z: energy(z), source="logits", dtype=np.float64)
        return e - self.alpha_ * self.residual(split)


@register("residual")
class Residual(_ResidualSpace):
    """-r(h): the norm of the feature outside the principal space (Wang et al. 2022)."""

    def score(self, split):
        return -self.residual(split)


@register("gen_residual")
class GENResidual(_ResidualSpace):
    """r(h) * GEN(h), the product as the GEN repository writes it (GEN <= 0, so a larger r lowers the score)."""

    def __init__(self, dim: Optional[int] = None, gamma: float = 0.1, M: int = 100):
        super().__init__(dim)
        self.gamma, self.M = gamma, M

    def score(self, split):
        g = split.map_blocks(lambda lo, hi, z: gen_from_logits(z, self.gamma, self.M), source="logits",
                             dtype=np.float64)
        return self.residual(split) * g
