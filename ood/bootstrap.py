"""Bootstrap confidence intervals of AUROC and FPR95 from fixed scores (no re-scoring).

A detector's scores are computed once; the uncertainty that remains is that of the finite ID test and OOD
sets. Each resample draws the ID scores and the OOD scores with replacement, separately (so both sizes stay
fixed), and recomputes the metrics on that sample; the interval is the percentile interval of the resampled
values (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13).

Exact and fast: the pooled scores are sorted once into groups of equal value; a resample is then two vectors
of counts per group (a multinomial draw, through ``bincount`` of drawn indices), and its metrics follow from
cumulative sums of the counts -- the AUROC with half credit for ties, and FPR95 under any of the three
conventions of :mod:`ood.metrics` -- equal to :func:`ood.metrics.evaluate` on the resampled scores themselves
(``tests/test_bootstrap.py`` checks it). Resample ``b`` of the ID set depends on ``seed`` and ``b`` only, so
every detector and every OOD set of a run sees the same ID resamples: differences between detectors are paired,
and the interval of a mean over OOD sets is the percentile interval of the per-resample means.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ci = intervals(rng.normal(1, 1, 2000), rng.normal(0, 1, 1000), n=200, seed=0)
>>> lo, hi = ci["auroc"]
>>> bool(0.73 < lo < 0.76 < hi < 0.79)
True
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, Optional, Sequence

import numpy as np

from .errors import InputError
from .metrics import FPR_CONVENTIONS, _check, _fpr_sorted

LEVEL = 0.95
_BLOCK = 2_000_000  # drawn indices per batch of resamples (memory: a few x 16 MB)


class _Groups:
    """Groups of scores in ascending order of value, and the group of every ID and OOD score.

    Exact for every convention: one group per distinct pooled value. ``ood_slots``: AUROC and the ViM FPR95
    only ask where an ID score falls among the distinct OOD values (equal to u_j, or strictly between u_(j-1)
    and u_j), so 2 m + 1 slots for m distinct OOD values do, exactly -- fewer groups than the pooled values
    when the OOD set is the smaller one (the common case), hence faster resamples."""

    def __init__(self, id_scores, ood_scores, ood_slots: bool = False):
        id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
        self.n_id, self.n_ood = id_scores.size, ood_scores.size
        if ood_slots:
            u = np.unique(ood_scores)
            left, right = np.searchsorted(u, id_scores, "left"), np.searchsorted(u, id_scores, "right")
            self.id_group = 2 * left + (right > left)  # 2j + 1: equal to u_j; 2j: between u_(j-1) and u_j
            self.ood_group = 2 * np.searchsorted(u, ood_scores) + 1
            self.size = 2 * u.size + 1
            return
        _, inverse = np.unique(np.concatenate([id_scores, ood_scores]), return_inverse=True)
        self.id_group, self.ood_group = inverse[: self.n_id], inverse[self.n_id:]
        self.size = int(inverse.max()) + 1


def _group_counts(groups: np.ndarray, size: int, rows: np.ndarray, weights=None) -> np.ndarray:
    """(B, size) counts: ``rows`` (B, n) are item indices into ``groups`` (or, with ``weights``, all items)."""
    b = rows.shape[0]
    keys = groups[rows] + size * np.arange(b)[:, None]
    counts = np.bincount(keys.ravel(), weights=None if weights is None else weights.ravel(), minlength=b * size)
    return counts.reshape(b, size)


def metrics_from_counts(id_counts: np.ndarray, ood_counts: np.ndarray, fpr: str = "vim",
                        tpr: float = 0.95) -> Dict[str, np.ndarray]:
    """AUROC and FPR95 of B weighted samples given as counts per group of equal score, ascending.

    ``id_counts``, ``ood_counts``: (B, G) arrays; column g holds how many ID (OOD) scores of the sample equal the
    g-th smallest distinct value. Returns ``{"auroc": (B,), "fpr95": (B,)}``, equal to
    :func:`ood.metrics.evaluate` on the scores each row stands for.

    >>> metrics_from_counts(np.array([[0, 1, 1]]), np.array([[1, 1, 0]]))["auroc"].tolist()
    [0.875]
    """
    if fpr not in FPR_CONVENTIONS:
        raise InputError(f"unknown FPR convention {fpr!r}; choose from {', '.join(FPR_CONVENTIONS)}")
    w = np.asarray(id_counts).astype(np.int64, copy=False)  # integer counts: every sum below is exact
    v = np.asarray(ood_counts).astype(np.int64, copy=False)
    n_id, n_ood = w.sum(1), v.sum(1)
    cum_v = np.cumsum(v, axis=1)
    twice_below = 2 * cum_v - v  # 2 x (OOD strictly below + half the ties)
    auroc = np.einsum("ij,ij->i", w, twice_below) / (2.0 * n_id * n_ood)  # Mann-Whitney
    if fpr == "vim":
        # the k-th largest ID score lies in the last group that still has >= k ID scores at or above it
        id_at_or_above = n_id[:, None] - (np.cumsum(w, axis=1) - w)
        k = np.floor(tpr * n_id)
        k = np.where(k > 0, k, n_id)  # k = 0: the smallest ID score, as ood.metrics
        g = (id_at_or_above >= k[:, None]).sum(1) - 1
        rows = np.arange(w.shape[0])
        fpr95 = (n_ood - (cum_v[rows, g] - v[rows, g])) / n_ood.astype(np.float64)
    else:
        fpr95 = np.empty(w.shape[0])
        for i in range(w.shape[0]):  # the other conventions keep distinct thresholds only: compact each row
            keep = (w[i] + v[i]) > 0
            c = SimpleNamespace(n_id=n_id[i], n_ood=n_ood[i], tps=np.cumsum(w[i, keep][::-1]),
                                fps=np.cumsum(v[i, keep][::-1]))
            fpr95[i] = _fpr_sorted(c, fpr, tpr)
    return {"auroc": auroc, "fpr95": fpr95}


def weighted_metrics(id_scores, ood_scores, id_weights, ood_weights, fpr: str = "vim",
                     tpr: float = 0.95) -> Dict[str, np.ndarray]:
    """AUROC and FPR95 of B samples in which score i is repeated ``weights[b, i]`` times (integer weights,
    shapes (B, n_id) and (B, n_ood)); the exact metrics of those samples.

    >>> weighted_metrics([3.0, 1.0], [2.0], [[1, 1], [1, 0]], [[1], [1]])["auroc"].tolist()
    [0.5, 1.0]
    """
    g = _Groups(id_scores, ood_scores, ood_slots=fpr == "vim")
    wi, wo = np.atleast_2d(id_weights), np.atleast_2d(ood_weights)
    every = lambda n, b: np.broadcast_to(np.arange(n), (b, n))  # noqa: E731
    return metrics_from_counts(_group_counts(g.id_group, g.size, every(g.n_id, wi.shape[0]), wi),
                               _group_counts(g.ood_group, g.size, every(g.n_ood, wo.shape[0]), wo), fpr, tpr)


def resample(id_scores, ood_scores, n: int = 1000, seed: int = 0, fpr: str = "vim", tpr: float = 0.95,
             ood_stream: int = 1) -> Dict[str, np.ndarray]:
    """The AUROC and FPR95 of ``n`` bootstrap resamples: ``{"auroc": (n,), "fpr95": (n,)}``.

    The ID draws of resample ``b`` depend on (``seed``, ``b``) alone; the OOD draws on (``seed``,
    ``ood_stream``, ``b``): give each OOD set of a run its own stream.

    >>> import numpy as np
    >>> r = resample(np.arange(10.0), np.arange(5.0) - 2, n=50, seed=1)
    >>> r["auroc"].shape, bool(((0 <= r["fpr95"]) & (r["fpr95"] <= 1)).all())
    ((50,), True)
    """
    if n < 1:
        raise InputError(f"--bootstrap {n}: the number of resamples must be at least 1")
    g = _Groups(id_scores, ood_scores, ood_slots=fpr == "vim")
    per_batch = max(1, _BLOCK // max(g.n_id, g.n_ood, g.size))
    out = {"auroc": np.empty(n), "fpr95": np.empty(n)}
    for start in range(0, n, per_batch):
        b = min(per_batch, n - start)
        id_rows = np.empty((b, g.n_id), dtype=np.int64)
        ood_rows = np.empty((b, g.n_ood), dtype=np.int64)
        for j in range(b):  # one generator per resample: the same draws whatever the batch size
            id_rows[j] = np.random.default_rng([seed, 0, start + j]).integers(0, g.n_id, g.n_id)
            ood_rows[j] = np.random.default_rng([seed, ood_stream, start + j]).integers(0, g.n_ood, g.n_ood)
        m = metrics_from_counts(_group_counts(g.id_group, g.size, id_rows),
                                _group_counts(g.ood_group, g.size, ood_rows), fpr, tpr)
        for key in out:
            out[key][start:start + b] = m[key]
    return out


def percentile_interval(values, level: float = LEVEL) -> tuple:
    """The central ``level`` percentile interval (lower, upper) of resampled values.

    >>> percentile_interval(np.arange(101.0), 0.5)
    (25.0, 75.0)
    """
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def intervals(id_scores, ood_scores, n: int = 1000, seed: int = 0, fpr: str = "vim", tpr: float = 0.95,
              level: float = LEVEL) -> Dict[str, tuple]:
    """``{"auroc": (lo, hi), "fpr95": (lo, hi)}``: percentile intervals over ``n`` resamples (fractions)."""
    r = resample(id_scores, ood_scores, n, seed, fpr, tpr)
    return {k: percentile_interval(v, level) for k, v in r.items()}


def result_intervals(result, n: int = 1000, seed: int = 0, groups: Optional[Dict[str, Sequence[str]]] = None,
                     level: float = LEVEL) -> Dict[str, Dict[str, dict]]:
    """Intervals for every detector of a benchmark result, under the result's FPR convention, per OOD set, for
    the mean over all sets and for the mean of each group of ``groups`` (e.g. ``{"near": [...], "far":
    [...]}``): ``{method: {"sets": {set: {"auroc": (lo, hi), "fpr95": (lo, hi)}}, "means": {"all": {...},
    group: {...}}}}``. What a detector could not score (a set, or all) has no interval, nor do means over it."""
    out = {}
    for method, scores in result.scores.items():
        per_set = {name: resample(scores["id"], scores[name], n, seed, result.fpr, ood_stream=i + 1)
                   for i, name in enumerate(result.datasets) if name in scores}
        means = {}
        for col, names in [("all", result.datasets), *(groups or {}).items()]:
            if names and all(name in per_set for name in names):
                means[col] = {k: np.mean([per_set[s][k] for s in names], axis=0) for k in ("auroc", "fpr95")}
        out[method] = {part: {col: {k: percentile_interval(v, level) for k, v in r.items()} for col, r in d.items()}
                       for part, d in (("sets", per_set), ("means", means))}
    return out
