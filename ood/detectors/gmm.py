"""Class-conditional Gaussians, each with its own covariance, scored by the log-density of their mixture.

Mukhoti et al., "Deep deterministic uncertainty: a new simple baseline" (CVPR 2023) fit one Gaussian per class
to the penultimate features (Gaussian discriminant analysis) and score a row by the feature density
log sum_c pi_c N(h; mu_c, Sigma_c); pytorch-ood's ``GMM`` detector is that mixture with pi_c = the class's
share of the train rows, Sigma_c = the class's covariance divided by its row count, plus ``reg`` = 1e-6 on the
diagonal. OpenOOD's ``gmm`` postprocessor is another method (an unsupervised sklearn mixture with one tied
covariance over several layers) and is not what this detector follows.

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> x, y = rng.normal(size=(90, 4)) + np.repeat(np.eye(3, 4) * 5, 30, axis=0), np.repeat([0, 1, 2], 30)
>>> det = ood.create("gmm").fit(x, labels=y)
>>> near, far = det.score(np.array([[5.0, 0, 0, 0], [50.0, 0, 0, 0]]))
>>> bool(near > far)
True
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import stats
from ..split import LABELS, Split
from .base import Detector, Range, register

#: the float64 per-class scatter matrices accumulated in one pass over the train split; more classes than fit
#: in this take one pass per group of classes (ImageNet's 1000 classes at D = 2048: 16 passes of 64)
SCATTER_BYTES = 1 << 31


def class_covariances(train: Split, group: slice) -> torch.Tensor:
    """The covariances (divided by the class's row count) of the train classes ``classes[group]`` of
    :func:`ood.stats.class_stats`, float64 [k, D, D], from one streamed pass: the rows are centred on their
    class mean in float64 (huge features cannot overflow) and summed class by class. Memoised on the train split
    when every class fits in one group (a grid of ``reg`` values then reads the train split once)."""
    cs = stats.class_stats(train)
    if group == slice(0, len(cs["classes"])):
        return train.memo(("gmm_covariances", LABELS), lambda: _covariances(train, cs, group))
    return _covariances(train, cs, group)


def _covariances(train: Split, cs: dict, group: slice) -> torch.Tensor:
    classes, counts, means = cs["classes"], cs["counts"], cs["means"]
    index = np.full(int(classes.max()) + 1, -1, np.int64)  # label -> its place in the group, -1 outside it
    index[classes[group]] = np.arange(len(classes[group]))
    D = train.dim
    out = torch.zeros(len(classes[group]), D, D, dtype=torch.float64, device=train.device)
    mu = torch.as_tensor(means[group], dtype=torch.float64, device=train.device)
    labels = train.labels
    for lo, hi, h in train.blocks():
        c = index[labels[lo:hi]]
        order = np.flatnonzero(c >= 0)
        order = order[np.argsort(c[order], kind="stable")]
        present, sizes = np.unique(c[order], return_counts=True)
        r = h[torch.as_tensor(order, device=train.device)].double() - mu[torch.as_tensor(c[order], device=train.device)]
        for j, part in zip(present, torch.split(r, sizes.tolist())):
            out[j] += part.T @ part
    n = torch.as_tensor(counts[group], dtype=torch.float64, device=train.device)
    return out / n[:, None, None]


def cholesky_with_jitter(cov: torch.Tensor, reg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Cholesky factors of cov + jitter I [k, D, D], the jitter used per class [k]): ``reg``, raised tenfold
    for a class until its factorisation succeeds (DDU's rule; only features so large that ``reg`` is below
    their float64 rounding need it)."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    jitter = torch.full((len(cov),), reg, dtype=cov.dtype, device=cov.device)
    L, info = torch.linalg.cholesky_ex(cov + reg * eye)
    while bool((info != 0).any()):
        bad = info != 0
        jitter[bad] *= 10
        L[bad], info[bad] = torch.linalg.cholesky_ex(cov[bad] + jitter[bad, None, None] * eye)
    return L, jitter


def sq_distances(h: torch.Tensor, mu: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """|(h - mu_c) F_c|^2 for a block of rows and every class [B, K], float64: in float32, and again in float64
    for the rows whose float32 squares overflow (rows far outside every class)."""
    d = torch.stack([(((h - mu[c]) @ F[c]) ** 2).sum(1) for c in range(len(mu))], dim=1).double()
    bad = ~torch.isfinite(d).all(1)
    if bad.any():
        x = h[bad].double()
        d[bad] = torch.stack([(((x - mu[c].double()) @ F[c].double()) ** 2).sum(1) for c in range(len(mu))], dim=1)
    return d


@register("gmm")
class GMM(Detector):
    """log sum_c pi_c N(h; mu_c, Sigma_c + reg I): one Gaussian per train class with its own covariance.

    Fitted from the streamed train split (class means, then the per-class scatter in float64, one pass per
    group of classes that fits in 2 GiB); each covariance is factorised once (Cholesky), scoring costs
    K x D^2 per row and holds K x D^2 float32 factors. ``reg`` is pytorch-ood's default; where a covariance is
    still not positive definite with it (features whose scale puts 1e-6 below float64 rounding) the jitter is
    raised tenfold until it is, as DDU does, with a note (pytorch-ood refuses such a class with a ValueError).
    A class with at most D train rows, or a feature constant within it, has a singular covariance that ``reg``
    alone holds up: a note names how many (other collinear features are not looked for).
    """

    requires = ("train_labels",)
    default = False  # K x D^2 held and per row: 16 GiB and 4e14 flops at ImageNet scale (C 1000, D 2048, 90k rows)
    grid = {"reg": [1e-6, 1e-4, 1e-2, 1e-1, 1.0]}
    ranges = {"reg": Range(float, 0, lo_open=True)}

    def __init__(self, reg: float = 1e-6):
        self.reg = reg

    def fit(self, train):
        cs = stats.class_stats(train)
        classes, counts, means = cs["classes"], cs["counts"], cs["means"]
        K, D = len(classes), train.dim
        factors = np.empty((K, D, D), np.float32)
        log_det, jitter, flat = np.empty(K), np.empty(K), np.empty(K, bool)
        per_pass = max(1, SCATTER_BYTES // (8 * D * D))
        for start in range(0, K, per_pass):
            group = slice(start, min(K, start + per_pass))
            cov = class_covariances(train, group)
            L, jit = cholesky_with_jitter(cov, self.reg)
            eye = torch.eye(D, dtype=torch.float64, device=train.device).expand_as(L)
            factors[group] = torch.linalg.solve_triangular(L, eye, upper=False).transpose(1, 2).cpu().numpy()
            log_det[group] = (2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)).cpu().numpy()
            jitter[group] = jit.cpu().numpy()
            flat[group] = (torch.diagonal(cov, dim1=1, dim2=2).min(1).values == 0).cpu().numpy()
        singular = flat | (counts <= D)
        if singular.any():
            self.note(f"{int(singular.sum())} of {K} class covariances are singular (at most {D} train rows in the "
                      f"class, or a feature constant within it): reg = {self.reg:g}, not the data, sets their "
                      f"density in those directions")
        raised = jitter > self.reg
        if raised.any():
            self.note(f"{int(raised.sum())} class covariances were not positive definite with reg = {self.reg:g}; "
                      f"their diagonal jitter was raised up to {jitter.max():.3g}")
        # log pi_c - (log det Sigma_c + D log 2 pi) / 2: the part of each class's log-density that is not h's
        log_norm = np.log(counts / counts.sum()) - 0.5 * (log_det + D * math.log(2 * math.pi))
        self.means_, self.factors_, self.log_norm_ = means, factors, log_norm
        return self

    def score(self, split):
        mu, F = split.tensor(self.means_), split.tensor(self.factors_)
        log_norm = torch.as_tensor(self.log_norm_, device=split.device)
        return split.map_blocks(lambda lo, hi, h: torch.logsumexp(log_norm - 0.5 * sq_distances(h, mu, F), dim=1),
                                dtype=np.float64)
