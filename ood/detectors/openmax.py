"""OpenMax (Bendale & Boult, CVPR 2016, "Towards Open Set Deep Networks").

The activation vectors are the logits, as in the paper, pytorch-ood and OpenOOD. Fit: the mean logit vector
(MAV) of each class over its correctly classified train rows (``correct=False``: over every row of the label,
as pytorch-ood's ``fit_logits``); the distance of each such row to its class's MAV; a Weibull model of the
``tailsize`` largest distances of each class. Score: the top ``alpha`` classes of z by logit (equal logits in
no set order, as numpy's argsort in pytorch-ood) get the weights omega = (alpha - i) / alpha at rank i = 0, 1,
...; with w_c the Weibull CDF of the distance of z to the MAV of class c, the revised logits are
v_c = z_c (1 - omega_c w_c), the unknown class gets v_0 = sum_c omega_c w_c z_c, and OpenMax's unknown
probability is p_0 = softmax(v_0, v_1, ..., v_C)_0.

The score is log((1 - p_0) / p_0) = logsumexp(v_1..v_C) - v_0: higher = more in-distribution, a strictly
decreasing function of p_0, so every metric is that of pytorch-ood's outlier score p_0 wherever float64 tells
the probabilities apart (p_0 itself rounds to 1.0 for far-out inputs, and pytorch-ood clips the revised
logits at 709 before exponentiating them).

Weibull fit, as libMR's ``FitHigh`` (which OpenOOD calls, and pytorch-ood restates with scipy): the tail is
translated by 10,000 - its smallest value, and a two-parameter Weibull (location 0) is fitted by maximum
likelihood; w(d) = 1 - exp(-((d + 10,000 - tail_min) / scale)^shape). The shape solves the profile-likelihood
equation 1/k + mean(log x) = sum(x^k log x) / sum(x^k), whose left-minus-right side falls strictly with k: it is
found by bisection on log k for every class at once (to float64 precision), the scale then in closed form.
scipy's ``weibull_min.fit(x, floc=0)`` solves the same equation; pytorch-ood's ``exponweib.fit`` minimises the
same likelihood numerically (its shape agrees to about 1e-6). A tail without spread (one row, or equal
distances) has the limit k = inf: w = 0 below the tail's value, 1 - 1/e at it, 1 above it. The translation
costs digits: a distance d keeps about 12 - log10(1 / d) significant digits at 10,000, and the fitted shape is
large (1e4 for Euclidean logit distances, 1e10 for cosine distances near 1e-6), so w of tiny cosine distances is
known to about 1e-5 in any implementation of the fit (one last-digit change of the scale moves it that much).

Distances: ``euclid_weight`` 1 = Euclidean (pytorch-ood's and OpenOOD's default), 0 = cosine distance, between:
euclid_weight * Euclidean + (1 - euclid_weight) * cosine (pytorch-ood's mix; OSDN's "eucos" is
Euclidean / 200 + cosine). A zero logit vector's cosine distance is taken as 1.

A class with no fitted model (no correctly classified train row) gets w = 1 when it is among the top alpha,
as in pytorch-ood (OpenOOD's mean of an empty set is NaN); a note says how many classes that is (all of them:
the score is then a function of the logits alone, and the note says so).

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> W, y = rng.normal(size=(3, 8)), rng.integers(0, 3, 200)
>>> x = W[y] + 0.5 * rng.normal(size=(200, 8))
>>> det = ood.create("openmax", tailsize=10).fit(x, labels=y, head=(W, np.zeros(3)))
>>> s = det.score(np.r_[W, 3 * W])  # the class prototypes, and three times as far out
>>> bool(s[:3].min() > s[3:].max())
True
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ParameterError
from ..split import LABELS, Split
from .base import Detector, Range, register
from .shared import predicted

#: libMR's translate_amount: the tail is moved to start at this value before the Weibull fit
TRANSLATION = 10_000.0
_SHAPE_BRACKET = (1e-10, 1e30)
_BISECTIONS = 200


def weibull_fit_high(tails: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shape, scale, shift) of the libMR-style fit of every row of ``tails`` [K, T] (NaN = no value): the
    row's values plus ``shift`` = TRANSLATION - its minimum, fitted by maximum likelihood with location 0.
    Rows without a value get NaN; rows without spread get shape inf and scale = the translated value."""
    mask = ~np.isnan(tails)
    count = mask.sum(1)
    none = count == 0
    shift = TRANSLATION - np.where(none, 0.0, np.where(mask, tails, np.inf).min(1))
    x = np.where(mask, np.where(mask, tails, 0.0) + shift[:, None], 1.0)  # >= TRANSLATION where a value is
    top = np.where(none, 1.0, np.where(mask, x, 0.0).max(1))
    ly = np.where(mask, np.log(x / top[:, None]), 0.0)  # <= 0: the equation is scale-free
    mean_ly = ly.sum(1) / np.maximum(count, 1)

    def slope(k):  # d/dk of the profile log-likelihood, up to a positive factor; falls strictly with k
        w = np.where(mask, np.exp(k[:, None] * ly), 0.0)
        return 1.0 / k + mean_ly - (w * ly).sum(1) / np.maximum(w.sum(1), 1.0)  # >= 1 but in empty rows

    lo = np.full(len(tails), np.log(_SHAPE_BRACKET[0]))
    hi = np.full(len(tails), np.log(_SHAPE_BRACKET[1]))
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        up = slope(np.exp(mid)) > 0
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    flat = (ly == 0).all(1)  # no spread: the likelihood grows without bound with the shape
    shape = np.where(flat, np.inf, np.exp((lo + hi) / 2))
    safe = np.where(flat, 1.0, shape)
    mean_pow = np.where(mask, np.exp(safe[:, None] * ly), 0.0).sum(1) / np.maximum(count, 1)
    mean_pow = np.where(none, 1.0, mean_pow)  # else >= 1 / count: the largest value has y^k = 1
    scale = np.where(flat, top, top * np.exp(np.log(mean_pow) / safe))
    return np.where(none, np.nan, shape), np.where(none, np.nan, scale), np.where(none, np.nan, shift)


def weibull_cdf(d: torch.Tensor, shape: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """1 - exp(-((d + shift) / scale)^shape), 0 where d + shift <= 0; shape inf gives the step (1 - 1/e at
    the scale). Elementwise, the parameters broadcast against ``d``."""
    r = (d + shift) / scale
    log_r = torch.log(r.clamp_min(torch.finfo(r.dtype).tiny))
    t = torch.where(log_r == 0, torch.zeros_like(log_r), shape * log_r)
    return torch.where(r > 0, -torch.expm1(-torch.exp(t)), torch.zeros_like(r))


def av_distance(z: torch.Tensor, m: torch.Tensor, euclid_weight: float) -> torch.Tensor:
    """euclid_weight * ||z - m|| + (1 - euclid_weight) * (1 - cos(z, m)) over the last axis, float64."""
    out = torch.zeros(torch.broadcast_shapes(z.shape, m.shape)[:-1], dtype=torch.float64, device=z.device)
    if euclid_weight > 0:
        out = out + euclid_weight * torch.linalg.vector_norm(z - m, dim=-1)
    if euclid_weight < 1:
        norms = torch.linalg.vector_norm(z, dim=-1) * torch.linalg.vector_norm(m, dim=-1)
        cos = (z * m).sum(-1) / norms.clamp_min(torch.finfo(torch.float64).tiny)
        out = out + (1 - euclid_weight) * (1 - cos)
    return out


def top_distances(z: torch.Tensor, means: torch.Tensor, mm: torch.Tensor, top: torch.Tensor,
                  euclid_weight: float) -> torch.Tensor:
    """[B, a] distances of the rows of z (float64) to the MAVs of their ``top`` classes, as ``av_distance``, from
    one product z @ means^T: ||z - m||^2 = |z|^2 + |m|^2 - 2 z . m, in float64 (about 1e-12 relative where the
    distance is at least 1e-2 of the norms), instead of a [B, a, C] difference."""
    zm = (z @ means.T).gather(1, top)
    zz = (z * z).sum(1, keepdim=True)
    out = torch.zeros_like(zm)
    if euclid_weight > 0:
        out = out + euclid_weight * (zz + mm[top] - 2 * zm).clamp_min(0).sqrt()
    if euclid_weight < 1:
        norms = (zz * mm[top]).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
        out = out + (1 - euclid_weight) * (1 - zm / norms)
    return out


def class_distances(train: Split, correct: bool, euclid_weight: float) -> dict:
    """The MAVs [C, C] (NaN rows for classes without a row), and for every row used its class and its distance
    to that class's MAV, float64; memoised on the train split (the grid over tailsize and alpha shares them)."""
    def compute():
        C = train.num_classes
        y = train.labels
        use = (y >= 0) & (y < C)
        if correct:
            use &= y == predicted(train)
        yt = torch.as_tensor(np.where(use, y, 0), device=train.device)
        ut = torch.as_tensor(use, device=train.device)
        sums = torch.zeros(C, C, dtype=torch.float64, device=train.device)
        counts = torch.zeros(C, dtype=torch.float64, device=train.device)
        for lo, hi, z in train.blocks("logits"):
            ok = ut[lo:hi]
            sums.index_add_(0, yt[lo:hi][ok], z[ok].double())
            counts.index_add_(0, yt[lo:hi][ok], torch.ones(int(ok.sum()), dtype=torch.float64, device=train.device))
        means = sums / counts[:, None]  # NaN for a class without a row
        d = torch.zeros(train.n, dtype=torch.float64, device=train.device)
        for lo, hi, z in train.blocks("logits"):
            d[lo:hi] = av_distance(z.double(), means[yt[lo:hi]], euclid_weight)
        return {"means": means.cpu().numpy(), "labels": y[use], "distances": d.cpu().numpy()[use]}
    return train.memo(("openmax_distances", LABELS, correct, euclid_weight), compute)


def largest_per_class(labels: np.ndarray, d: np.ndarray, classes: int, tailsize: int) -> np.ndarray:
    """[classes, tailsize]: the ``tailsize`` largest values of ``d`` of each class, NaN-padded."""
    order = np.lexsort((-d, labels))
    y, v = labels[order], d[order]
    rank = np.arange(y.size) - np.searchsorted(y, y, side="left")
    keep = rank < tailsize
    out = np.full((classes, tailsize), np.nan)
    out[y[keep], rank[keep]] = v[keep]
    return out


@register("openmax")
class OpenMax(Detector):
    """OpenMax's unknown-class probability p_0 as log((1 - p_0) / p_0), from per-class Weibull models of
    the largest train distances to the class mean logits (Bendale & Boult, CVPR 2016).

    Defaults: tail size 20 (the paper, OSDN, OpenOOD; pytorch-ood 25), alpha = 10 revised classes (the paper,
    OSDN and pytorch-ood; OpenOOD 3; at most C), Euclidean distance (pytorch-ood, OpenOOD), correctly
    classified train rows only (the paper, OSDN, OpenOOD; pytorch-ood's ``fit_logits`` takes every row).
    """

    requires = ("train_labels",)
    grid = {"tailsize": [10, 20, 50, 100], "alpha": [1, 3, 5, 10]}
    ranges = {"tailsize": Range(int, 1), "alpha": Range(int, 1), "euclid_weight": Range(float, 0, 1)}

    def __init__(self, tailsize: int = 20, alpha: int = 10, euclid_weight: float = 1.0, correct: bool = True):
        if not isinstance(correct, (bool, np.bool_)):
            raise ParameterError(f"openmax.correct must be True or False; got {correct!r}")
        self.tailsize, self.alpha, self.euclid_weight, self.correct = tailsize, alpha, euclid_weight, bool(correct)

    def fit(self, train):
        C = train.num_classes
        dist = class_distances(train, self.correct, self.euclid_weight)
        tails = largest_per_class(dist["labels"], dist["distances"], C, self.tailsize)
        self.shape_, self.scale_, self.shift_ = weibull_fit_high(tails)
        self.means_ = dist["means"]
        self.alpha_ = min(self.alpha, C)
        missing = int(np.isnan(self.shape_).sum())
        what = "correctly classified" if self.correct else "labelled"
        if missing == C:
            self.note(f"no train row is {what} (a label in [0, {C})"
                      f"{' equal to the argmax of its logits' if self.correct else ''}): no class has a Weibull "
                      f"model, every class counts as unknown (w = 1) and the score depends on the logits alone")
        elif missing:
            self.note(f"{missing} of {C} classes have no {what} train row and no Weibull model: they count as "
                      f"unknown (w = 1) when among the top {self.alpha_}")
        return self

    def score(self, split):
        a = self.alpha_
        means = split.tensor(np.nan_to_num(self.means_), dtype=torch.float64)
        params = [split.tensor(v, dtype=torch.float64) for v in (self.shape_, self.scale_, self.shift_)]
        fitted = split.tensor(~np.isnan(self.shape_), dtype=torch.bool)
        omega = (a - torch.arange(a, dtype=torch.float64, device=split.device)) / a

        mm = (means * means).sum(1)

        def block(lo, hi, z):
            z = z.double()
            top = torch.topk(z, a, dim=1).indices
            d = top_distances(z, means, mm, top, self.euclid_weight)
            w = weibull_cdf(d, *(p[top] for p in params))
            w = torch.where(fitted[top], w, torch.ones_like(w))
            zt = z.gather(1, top)
            v = z.scatter(1, top, zt * (1 - omega * w))
            return torch.logsumexp(v, dim=1) - (zt * omega * w).sum(1)
        rows = max(1, split.block_rows(a * split.num_classes))
        return split.map_blocks(block, source="logits", dtype=np.float64, rows=rows)
