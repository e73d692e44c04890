"""Detectors built on the geometry of the linear head: NCI, fDBD and NuSA.

- NCI (Liu & Qin, 2024, "Detecting out-of-distribution through the lens of neural collapse"):
  w_pred . (h - m) / ||h - m|| + alpha ||h||_1, m the train mean feature, pred = argmax z.
- fDBD (Liu & Qin, ICML 2024, "Fast decision boundary based out-of-distribution detector"): the mean over
  c != pred of the distance to the decision boundary between pred and c, |z_pred - z_c| / ||w_pred - w_c||,
  divided by ||h - m|| (``center=False``: by ||h||, the alternative OpenOOD sweeps); z the split's logits (the
  file's when they are the head's W h + b); the weight distances from one C x C table up to 8,192 classes.
  OpenOOD sums over the classes instead of averaging: the same ranking, scaled by C - 1.
- NuSA (Cook et al. 2024; null space analysis after Cook, Zare & Gader 2020, "Outlier detection through
  null space analysis of neural networks"):
  ||P h|| / ||h||, P the orthogonal projection on the row space of W; 1 - this is the null-space share.
  When C >= D and W has full rank, P = I and every score is 1.

A vector of norm 0 has no direction: NuSA scores a zero row 0 (no share in the row space) and NCI's cosine term
of a row equal to m is 0. fDBD's distance ratio has no finite value there (it grows without bound as h nears
m), so such a row scores +inf. Norms are taken in float64, so large features do not overflow.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, register
from .shared import feature_mean, predicted


def norm64(x: torch.Tensor) -> torch.Tensor:
    """Row norms in float64: squares of large float32 features overflow float32."""
    return torch.linalg.vector_norm(x.double(), dim=1)


def safe_ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, and 0 where b = 0 (then a = 0 too: a zero vector has no direction and no share of anything)."""
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dot product of each row of ``a`` with the same row of ``b`` (one batched product, no [B, D] temporary)."""
    return torch.einsum("nd,nd->n", a, b)


#: classes up to which fDBD keeps the C x C distances between weight vectors (256 MB of float32)
PAIRWISE_CLASSES = 8192


def weight_distances(W: np.ndarray) -> np.ndarray:
    """[C, C] float32: ||w_i - w_j|| for every pair of rows of the head's weight, from their float64 Gram."""
    W = np.asarray(W, dtype=np.float64)
    G = W @ W.T
    sq = G.diagonal()
    return np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * G, 0, None)).astype(np.float32)


@register("nci")
class NCI(Detector):
    """Cosine between h - m and the predicted class's weight vector (times its norm), plus alpha ||h||_1."""

    grid = {"alpha": [0.0001, 0.001, 0.01, 0.1]}

    def __init__(self, alpha: float = 0.0001):
        self.alpha = alpha

    def fit(self, train):
        self.mean_ = feature_mean(train)
        self.weight_ = train.require_head().weight.astype(np.float64)
        return self

    def score(self, split):
        m = split.tensor(self.mean_).double()  # the float32 mean: a row equal to it has c = 0 exactly
        pred = torch.as_tensor(predicted(split), device=split.device)
        W = split.tensor(self.weight_, dtype=torch.float64)

        def block(lo, hi, h):  # a row equal to the mean has no direction: its cosine term is 0
            c = h.double().sub_(m)
            proj = safe_ratio(rowdot(W[pred[lo:hi]], c), torch.linalg.vector_norm(c, dim=1))
            return proj + self.alpha * torch.linalg.vector_norm(h, 1, dim=1, dtype=torch.float64)
        return split.map_blocks(block, dtype=np.float64)


@register("fdbd")
class FDBD(Detector):
    """Mean distance to the decision boundaries of the predicted class over ||h - m|| (or ||h||)."""

    grid = {"center": [True, False]}

    def __init__(self, center: bool = True):
        self.center = center

    def fit(self, train):
        self.mean_ = feature_mean(train) if self.center else np.zeros(train.dim)
        W = train.require_head().weight
        self.distances_ = weight_distances(W) if len(W) <= PAIRWISE_CLASSES else None
        return self

    def score(self, split):
        W, C = split.weight, split.num_classes
        m = split.tensor(self.mean_)
        table = None if self.distances_ is None else split.tensor(self.distances_)
        sq = (W * W).sum(1) if table is None else None

        def block(lo, hi, h):
            z = split.logit_rows(lo, hi, h)
            p = z.argmax(1)
            gap = (z.gather(1, p[:, None]) - z).abs()
            dist = table[p] if sq is None else (sq[p][:, None] + sq[None, :] - 2 * W[p] @ W.T).clamp_min(0).sqrt()
            ratio = torch.where(dist > 0, gap / dist, torch.zeros_like(gap))
            ratio.scatter_(1, p[:, None], 0.0)
            return ratio.sum(1).double() / (C - 1) / norm64(h - m)
        return split.map_blocks(block, dtype=np.float64)


def row_space(W: np.ndarray) -> np.ndarray:
    """Orthonormal basis [D, rank] of the row space of W, from the eigendecomposition of the smaller Gram."""
    W = W.astype(np.float64)
    C, D = W.shape
    vals, vecs = np.linalg.eigh(W @ W.T if C < D else W.T @ W)
    keep = vals > max(C, D) * np.finfo(np.float64).eps * vals.max()
    basis = W.T @ vecs[:, keep] / np.sqrt(vals[keep]) if C < D else vecs[:, keep]
    return np.ascontiguousarray(basis, dtype=np.float32)


@register("nusa")
class NuSA(Detector):
    """Share of the feature norm in the row space of the head, ||P h|| / ||h||."""

    def fit(self, train):
        self.basis_ = train.memo("head_row_space", lambda: row_space(train.head.weight))
        return self

    def score(self, split):
        Q = split.tensor(self.basis_)
        # a zero row has no component in the row space: its share is 0 (not 0 / 0)
        return split.map_blocks(lambda lo, hi, h: safe_ratio(norm64(h @ Q), norm64(h)), dtype=np.float64)
