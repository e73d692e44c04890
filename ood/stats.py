"""Statistics of the train split that several detectors share, computed once per run (memoised on the split).

- ``quantile``: numpy's linear-interpolation quantile over all elements, found exactly by bracketing from a
  sample and selecting inside the bracket, so no full sorted copy of the train features is ever made (and a
  streamed split is read block by block).
- ``mean`` and ``moments``: mean and the Gram of the mean-centred features (one blocked pass, float32 products summed in
  float64); any other centring (ViM's u, class means) follows from it algebraically.
- ``class_stats``: per-class counts and means; ``within_class_scatter`` for Mahalanobis.
- ``logit_stats``: what the detectors need of the train logits, from one streamed pass (the N x C train logits
  are never kept).
"""
from __future__ import annotations

import numpy as np
import torch

from .split import LABELS, Split
from .errors import InputError

_CHUNK = 1 << 24


def quantile(x, q: float) -> float:
    """Exactly ``np.quantile(x, q)`` (linear interpolation, in x's dtype) without sorting all of x.

    ``x`` is an array, or a :class:`Split` whose features are walked block by block (a streamed train split
    is never held): a sample brackets the quantile, one pass counts the values below the bracket and keeps those
    inside, and the two order statistics are selected from those.

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float32)
    >>> quantile(x, 0.99) == float(np.quantile(x, 0.99))
    True
    """
    return quantiles(x, [q])[0]


def bracket(sample: np.ndarray, q: float, margin: float) -> tuple:
    """Values of the sorted ``sample`` that hold the q quantile of the whole with ``margin`` standard errors of
    the sample quantile, sqrt(q (1 - q) / m), to spare on each side (at least 1 / m): a bracket as narrow as the
    quantile's own uncertainty, so few values are kept inside it (the 0.99 quantile: a tenth of a bracket of
    margin / sqrt(m))."""
    m = sample.size
    delta = margin * np.sqrt(max(q * (1 - q), 1.0 / m) / m)
    lo = sample[max(0, int((q - delta) * (m - 1)))] if q - delta > 0 else -np.inf
    hi = sample[min(m - 1, int(np.ceil((q + delta) * (m - 1))))] if q + delta < 1 else np.inf
    return lo, hi


def quantiles(x, qs) -> list:
    """:func:`quantile` of each of ``qs``, sharing the passes over ``x``: one sample brackets all of them, one
    pass counts and keeps the values of every bracket (a bracket the sample missed is widened and retried).

    >>> import numpy as np
    >>> x = np.random.default_rng(1).normal(size=(500, 9)).astype(np.float32)
    >>> quantiles(x, [0.1, 0.9]) == [float(np.quantile(x, 0.1)), float(np.quantile(x, 0.9))]
    True
    """
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise InputError(f"quantile must be in [0, 1], got {q}")
    if isinstance(x, Split):
        n = x.n * x.dim
        dtype = np.dtype(np.float32)

        def chunks():
            step = max(1, _CHUNK // max(1, x.dim))
            for lo in range(0, x.n, step):
                yield x.feature_rows(lo, min(x.n, lo + step)).reshape(-1)
    else:
        flat = np.asarray(x).reshape(-1)
        n, dtype = flat.size, flat.dtype

        def chunks():
            for s in range(0, n, _CHUNK):
                yield flat[s:s + _CHUNK]
    if n == 0:
        raise InputError("quantile of an empty array")
    if n <= _CHUNK:
        whole = np.concatenate(list(chunks()))
        return [float(np.quantile(whole, q)) for q in qs]
    rng = np.random.default_rng(0)
    per_chunk = [c[rng.integers(0, c.size, max(1, (c.size * (1 << 20)) // n))] for c in chunks()]
    sample = np.sort(np.concatenate(per_chunk))
    out = {}
    for margin in (8.0, 64.0, 512.0, np.inf):
        todo = [q for q in qs if q not in out]
        if not todo:
            break
        brackets = [bracket(sample, q, margin) for q in todo]
        # a bracket of one value (a quantile inside a run of ties, e.g. the zeros of ReLU features) is counted,
        # not kept: its order statistics are that value
        below, inside, ties = [0] * len(todo), [[] for _ in todo], [0] * len(todo)
        for c in chunks():
            for i, (lo, hi) in enumerate(brackets):
                below[i] += int(np.count_nonzero(c < lo))
                if lo == hi:
                    ties[i] += int(np.count_nonzero(c == lo))
                else:
                    inside[i].append(c[(c >= lo) & (c <= hi)])
        for i, q in enumerate(todo):
            pos = q * (n - 1)
            k = int(np.floor(pos))
            k2 = min(k + 1, n - 1)
            lo, hi = brackets[i]
            if lo == hi:
                if below[i] <= k and k2 < below[i] + ties[i]:
                    out[q] = float(np.array(lo, dtype=dtype))
                continue
            kept = np.concatenate(inside[i])
            if below[i] <= k and k2 < below[i] + kept.size:
                kth = np.partition(kept, [k - below[i], k2 - below[i]])
                a, b = kth[k - below[i]], kth[k2 - below[i]]
                out[q] = float(np.quantile(np.array([a, b], dtype=dtype), pos - k))
    return [out[q] for q in qs]


def mean(split: Split) -> np.ndarray:
    """Mean feature [D], float64, in one blocked pass (memoised)."""
    def compute():
        total = torch.zeros(split.dim, dtype=torch.float64, device=split.device)
        for _, _, h in split.blocks(rows=4096):
            total += h.sum(0, dtype=torch.float64)
        return (total / split.n).cpu().numpy()
    return split.memo("feature_mean", compute)


def moments(train: Split) -> dict:
    """``n``, ``mean`` [D] (float64), ``sum_c`` = sum of (x - mean) [D] and ``gram`` = (X-mean)^T (X-mean)."""
    def compute():
        m = mean(train)
        m32 = train.tensor(m)
        sum_c = torch.zeros(train.dim, dtype=torch.float64, device=train.device)

        def centred():
            for _, _, h in train.blocks(rows=4096):
                h = h - m32
                sum_c.add_(h.sum(0, dtype=torch.float64))
                yield h
        gram = symmetric_gram(centred(), train.dim, train.device)
        return {"n": train.n, "mean": m, "sum_c": sum_c.cpu().numpy(), "gram": gram}
    return train.memo("moments", compute)


def symmetric_gram(blocks, dim: int, device) -> np.ndarray:
    """X^T X [dim, dim] (float64 sums of float32 block products) of the row blocks ``blocks`` yields: the
    matrix is symmetric, so three of its four quarters are computed."""
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    k = dim // 2
    for h in blocks:
        a, c = h[:, :k], h[:, k:]
        gram[:k, :k] += (a.T @ a).double()
        gram[:k, k:] += (a.T @ c).double()
        gram[k:, k:] += (c.T @ c).double()
    gram[k:, :k] = gram[:k, k:].T
    return gram.cpu().numpy()


def scatter_about(train: Split, center: np.ndarray) -> np.ndarray:
    """(X - center)^T (X - center), float64, from the shared moments."""
    m = moments(train)
    d = m["mean"] - np.asarray(center, dtype=np.float64)
    return m["gram"] + np.outer(m["sum_c"], d) + np.outer(d, m["sum_c"]) + m["n"] * np.outer(d, d)


def class_stats(train: Split) -> dict:
    """``classes`` present in the train labels, their ``counts`` and ``means`` [K, D] (float64)."""
    def compute():
        y = train.labels
        classes, counts = np.unique(y, return_counts=True)
        sums = torch.zeros(train.num_classes, train.dim, dtype=torch.float64, device=train.device)
        yt = torch.as_tensor(y, device=train.device)
        for lo, hi, h in train.blocks():
            sums.index_add_(0, yt[lo:hi], h.double())
        means = sums.cpu().numpy()[classes] / counts[:, None]
        return {"classes": classes, "counts": counts, "means": means}
    return train.memo(("class_stats", LABELS), compute)


def within_class_scatter(train: Split) -> np.ndarray:
    """Sum over samples of (x - mu_y)(x - mu_y)^T, float64, from the shared moments and class means."""
    m = moments(train)
    cs = class_stats(train)
    b = cs["means"] - m["mean"]
    return m["gram"] - (b * cs["counts"][:, None]).T @ b


def logit_stats(split: Split) -> dict:
    """Everything the detectors need of a split's logits but the logits, from one streamed pass (the train
    split's N x C logits are never kept): per row ``max_logit``, ``pred`` and ``energy`` (logsumexp), and per
    predicted class ``pred_counts`` [C] and ``softmax_sums`` [C, C] (sum of the softmax of its rows)."""
    def compute():
        C = split.num_classes
        sums = torch.zeros(C, C, dtype=torch.float64, device=split.device)
        counts = torch.zeros(C, dtype=torch.float64, device=split.device)
        rows = {"max_logit": np.empty(split.n, np.float64), "pred": np.empty(split.n, np.int64),
                "energy": np.empty(split.n, np.float64)}
        for lo, hi, z in split.blocks("logits"):
            top = z.max(1)
            rows["max_logit"][lo:hi] = top.values.cpu().numpy()
            rows["pred"][lo:hi] = top.indices.cpu().numpy()
            rows["energy"][lo:hi] = torch.logsumexp(z, dim=1).cpu().numpy()
            sums.index_add_(0, top.indices, torch.softmax(z, dim=1).double())
            counts.index_add_(0, top.indices, torch.ones(hi - lo, dtype=torch.float64, device=split.device))
        return {**rows, "pred_counts": counts.cpu().numpy(), "softmax_sums": sums.cpu().numpy()}
    return split.memo("logit_stats", compute)


def eigh_desc(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and eigenvectors (columns) of a symmetric matrix, float64."""
    vals, vecs = np.linalg.eigh(np.asarray(matrix, dtype=np.float64))
    return vals[::-1], vecs[:, ::-1]
