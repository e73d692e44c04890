"""Nearest-neighbour detectors over a bank of L2-normalised train features: KNN and NNGuide.

Both need, for every query, the k largest of ``q_hat . bank_row * scale_row`` over the bank. That is found
exactly by blocked matrix products: a block of queries times a block of the bank, ``torch.topk`` of the block,
merged with the running top k, so memory stays a block in size and the cost is the matrix product itself.
faiss (``IndexFlatIP``) is used instead when it is importable and the device is the CPU. The sorted top-k
similarities are memoised per (query split, bank, search), so a sweep over k costs one search at the largest k.

``search="ivf"`` or ``"hnsw"`` asks for an approximate search. IVF (:class:`IVF`) keeps the bank rows in
inverted lists around faiss k-means centroids and compares a query only with the rows of its ``nprobe`` most
similar lists, exactly, by matrix products on the split's device (a GPU included); ``nprobe = nlist`` is exact.
HNSW is faiss's ``IndexHNSWFlat`` graph, searched on the CPU. Query rows for which the approximate search finds
fewer than k neighbours are searched exactly. Without faiss the exact search runs and a note says how long it
is expected to take. ``benchmarks/bench_knn.py`` measures recall@k against exact search and the AUROC
difference it causes.
"""
from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np
import torch

from ..split import Split, fit_key
from .base import Detector, register
from .shared import energies
from ..errors import InputError, ParameterError

_EPS = 1e-12
QUERY_ROWS = 1024
BANK_ROWS = 8192
SEARCHES = ("exact", "ivf", "hnsw")

try:
    import faiss
except ImportError:
    faiss = None


def normalize(h: torch.Tensor) -> torch.Tensor:
    """h / ||h|| (a zero row stays 0); each row is divided by its largest magnitude first, so the squares of
    large features do not overflow float32."""
    h = h / h.abs().amax(1, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)
    return h / torch.linalg.vector_norm(h, dim=1, keepdim=True).clamp_min(_EPS)


def row_norms(x: torch.Tensor, rows: int = BANK_ROWS) -> torch.Tensor:
    """Row norms of x, taken in float64 a block at a time (large features overflow float32 squares)."""
    return torch.cat([torch.linalg.vector_norm(x[lo:lo + rows].double(), dim=1)
                      for lo in range(0, x.shape[0], rows)]).to(x.dtype)


def top_similarities(queries: torch.Tensor, bank: torch.Tensor, scale: torch.Tensor, k: int,
                     bank_rows: int = BANK_ROWS) -> torch.Tensor:
    """The k largest of ``(queries @ bank.T) * scale`` in every row, sorted from the largest."""
    best = None
    bank_rows = max(bank_rows, k)
    for lo in range(0, bank.shape[0], bank_rows):
        s = queries @ bank[lo:lo + bank_rows].T
        s.mul_(scale[lo:lo + bank_rows])
        top = torch.topk(s, min(k, s.shape[1]), dim=1).values
        best = top if best is None else torch.topk(torch.cat([best, top], 1), k, dim=1).values
    return best


#: bank rows per IVF list the k-means of the centroids is trained on (a seeded sample; faiss warns below 39)
TRAIN_PER_LIST = 64
#: k-means iterations of the IVF centroids (faiss's IndexIVF trains its quantiser with 10)
KMEANS_ITERATIONS = 10
#: query elements (rows x D) per IVF search block: 16,384 rows at D = 2048, about 5 queries per list and probe
IVF_QUERY_ELEMENTS = 1 << 25


def default_nlist(n: int) -> int:
    """IVF lists: about sqrt(n), and at least 39 bank rows per list. faiss's guideline of 4-16 sqrt(n) suits
    its query-at-a-time list scan; :class:`IVF` scans lists by matrix products, so longer lists cost little and
    the k-means (growing with nlist squared) and the bank's assignment (with nlist) are the larger costs."""
    return max(1, min(int(round(math.sqrt(n))), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query: nlist / 128, at least 8 (8 of 447 lists, about 2 % of a 200,000-row bank:
    recall@50 1.000 on benchmarks/bench_knn.py's clusters)."""
    return min(nlist, max(8, nlist // 128))


class IVF:
    """Inverted-file search (IVF-Flat; Jegou, Douze and Schmid, TPAMI 2011) of the k largest
    ``q_hat . x_i * scale_i`` over a :class:`Bank`, the lists scanned by matrix products.

    The ``nlist`` centroids are faiss's spherical k-means (``KMEANS_ITERATIONS`` iterations, as faiss's
    ``IndexIVFFlat`` trains them for inner product) of a seeded sample of ``TRAIN_PER_LIST`` scaled bank rows
    per list; every bank row goes to the list of its most similar centroid. A query is compared with the rows
    of its ``nprobe`` most similar lists in float32, exactly as the exact search compares it, so the only
    approximation is that a neighbour outside those lists is missed; ``nprobe = nlist`` is exact. The results
    are those of faiss's ``IndexIVFFlat`` with the same centroids, but faiss's CPU scan takes one query at a
    time, row by row; here a block of queries is grouped by list and each list meets all of its queries in
    one matrix product (six times faster than faiss's scan of the same lists at 200,000 x 2,048 on 2 cores,
    benchmarks/RESULTS.md). The lists are row indices into the bank, so the index adds no copy of it.

    >>> x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    >>> bank = Bank("doc", Split.from_arrays("train", x.numpy()))
    >>> ivf = IVF(bank, nlist=4, nprobe=4)
    >>> q = normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)))
    >>> torch.allclose(ivf.top(q, bank, 5), top_similarities(q, bank.x, bank.scale, 5), atol=1e-6)
    True
    """

    def __init__(self, bank: "Bank", nlist: int = 0, nprobe: int = 0, seed: int = 0):
        n, d = bank.x.shape
        self.nlist = min(nlist or default_nlist(n), n)
        self.nprobe = min(self.nlist, nprobe or default_nprobe(self.nlist))
        rows = np.arange(n)
        if n > TRAIN_PER_LIST * self.nlist:
            rows = np.sort(np.random.default_rng(seed).choice(n, TRAIN_PER_LIST * self.nlist, replace=False))
        rows = torch.from_numpy(rows).to(bank.x.device)
        sample = (bank.x[rows] * bank.scale[rows, None]).cpu().numpy()
        kmeans = faiss.Kmeans(d, self.nlist, niter=KMEANS_ITERATIONS, spherical=True, seed=seed)
        kmeans.train(np.ascontiguousarray(sample, dtype=np.float32))
        self.centroids = torch.from_numpy(kmeans.centroids).to(bank.x.device)
        lists = torch.cat([(bank.x[lo:lo + BANK_ROWS] @ self.centroids.T).mul_(
            bank.scale[lo:lo + BANK_ROWS, None]).argmax(1) for lo in range(0, n, BANK_ROWS)])
        self.order = torch.argsort(lists, stable=True)  # bank rows list by list
        self.bounds = [0] + torch.cumsum(torch.bincount(lists, minlength=self.nlist), 0).tolist()

    def top(self, q: torch.Tensor, bank: "Bank", k: int) -> torch.Tensor:
        """[B, k] sorted top similarities of the normalised queries ``q`` among the rows of their ``nprobe``
        lists; a row whose lists hold fewer than k bank rows is filled with -inf.

        On the CPU the lists are shared among one thread per torch thread, each running single-threaded
        products: hundreds of small products with a barrier each lose much of their time when another
        process holds a core, whole lists per thread do not."""
        b, p = q.shape[0], self.nprobe
        probes = torch.topk(q @ self.centroids.T, p, dim=1).indices.flatten()  # pair j: query j // p
        pairs = torch.argsort(probes, stable=True)  # pairs grouped by list
        counts = torch.bincount(probes, minlength=self.nlist).tolist()
        starts = [0, *itertools.accumulate(counts)]
        found = torch.full((b * p, k), -torch.inf, dtype=q.dtype, device=q.device)
        workers = torch.get_num_threads() if q.device.type == "cpu" else 1

        def scan(first: int):  # lists first, first + workers, ...: one product of each with its queries
            for lst in range(first, self.nlist, workers):
                rows = self.order[self.bounds[lst]:self.bounds[lst + 1]]
                if counts[lst] == 0 or rows.numel() == 0:
                    continue
                j = pairs[starts[lst]:starts[lst + 1]]
                s = q[j // p] @ bank.x[rows].T
                s.mul_(bank.scale[rows])
                found[j, :min(k, s.shape[1])] = torch.topk(s, min(k, s.shape[1]), dim=1).values

        if workers == 1:
            scan(0)
        else:
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(scan, range(workers)))
            finally:
                torch.set_num_threads(workers)
        return torch.topk(found.view(b, p * k), k, dim=1).values


def build_index(vectors: np.ndarray, search: str, hnsw_m: int = 32, ef_search: int = 0, k: int = 1):
    """A faiss inner-product index over ``vectors`` [n, D] float32: flat (exact) or HNSW
    (``ef_search`` 0 = max(128, 4 k))."""
    d = vectors.shape[1]
    if search == "exact":
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(ef_search or max(128, 4 * k), k)
    index.add(np.ascontiguousarray(vectors))
    return index


def matmul_rate(d: int, device: torch.device) -> float:
    """Measured multiply-adds per second of a block product of width ``d`` on ``device`` (for estimates)."""
    import time

    a, b = torch.randn(512, d, device=device), torch.randn(d, 2048, device=device)
    a @ b
    t0 = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 512 * 2048 * d / max(time.perf_counter() - t0, 1e-9)


class Bank:
    """Rows of the train features with a per-row scale: similarity(q, i) = q_hat . x_i * scale_i."""

    def __init__(self, key, train: Split, rows: Optional[np.ndarray] = None, weights: Optional[np.ndarray] = None,
                 search: tuple = ("exact",)):
        self.search = search if faiss is not None else ("exact",)
        self.key = fit_key(key, train, *self.search)
        self.train = train
        x = train.features if rows is None else train.take(rows)
        self.x = train.memo("features_tensor", lambda: train.tensor(x)) if rows is None else train.tensor(x)
        norms = row_norms(self.x)
        if not bool((norms > 0).any()):
            raise InputError(f"{train.path}: every train feature row of the neighbour bank is zero: there is no "
                             f"direction to compare with")
        norms = norms.clamp_min(_EPS)
        w = torch.ones_like(norms) if weights is None else train.tensor(weights)
        self.scale = w / norms
        self.n = self.x.shape[0]

    def index(self, k: int):
        """The search structure of ``search`` over the bank, built once: an :class:`IVF`, or a faiss index
        (flat or HNSW) on the CPU."""
        def build():
            kind, *options = self.search
            if kind == "ivf":
                return IVF(self, *options)
            vectors = np.ascontiguousarray((self.x * self.scale[:, None]).cpu().numpy(), dtype=np.float32)
            return build_index(vectors, kind, *options, k=k)
        return self.train.memo(("knn_index", self.key), build)

    def _faiss_top(self, h: torch.Tensor, k: int) -> torch.Tensor:
        q = normalize(h)
        sims, ids = self.index(k).search(np.ascontiguousarray(q.cpu().numpy()), k)
        top = torch.from_numpy(sims).to(h.device)
        short = torch.from_numpy((ids < 0).any(axis=1)).to(h.device)
        if short.any():  # HNSW found fewer than k neighbours for these rows: search them exactly
            top[short] = top_similarities(q[short], self.x, self.scale, k)
        return top

    def _ivf_top(self, h: torch.Tensor, k: int) -> torch.Tensor:
        q = normalize(h)
        top = self.index(k).top(q, self, k)
        short = torch.isinf(top[:, -1])
        if short.any():  # the probed lists hold fewer than k rows: search these queries exactly
            top[short] = top_similarities(q[short], self.x, self.scale, k)
        return top

    def top(self, split: Split, k: int) -> np.ndarray:
        """[N, k] sorted top-k similarities of every row of ``split``, memoised (a larger k serves a smaller)."""
        if not 1 <= k <= self.n:
            raise InputError(f"k = {k} nearest neighbours asked for, but the bank holds {self.n} train rows")
        cache = split.memo(("top_similarities", self.key), dict)
        if cache.get("top") is not None and cache["top"].shape[1] >= k:
            return cache["top"][:, :k]
        kind = self.search[0]
        if kind == "ivf":
            top = split.map_blocks(lambda lo, hi, h: self._ivf_top(h, k),
                                   rows=max(QUERY_ROWS, IVF_QUERY_ELEMENTS // split.dim))
        elif faiss is not None and (split.device.type == "cpu" or kind == "hnsw"):
            top = split.map_blocks(lambda lo, hi, h: self._faiss_top(h, k), rows=QUERY_ROWS)
        else:
            top = split.map_blocks(lambda lo, hi, h: top_similarities(normalize(h), self.x, self.scale, k),
                                   rows=QUERY_ROWS)
        cache["top"] = top
        return top


@register("knn")
class KNN(Detector):
    """Deep nearest neighbours (Sun et al., ICML 2022): minus the L2 distance from the normalised feature to
    its k-th nearest normalised train feature, -sqrt(2 - 2 cos_k).

    OpenOOD and the paper's code return minus the squared distance (faiss IndexFlatL2); the ranking, and so
    every metric, is the same. The paper's ImageNet setting uses the whole train set (alpha = 100%).

    ``search="exact"`` (the default) compares every query with every train row. ``search="ivf"`` is
    approximate (:class:`IVF`): the k nearest are looked for only among the train rows in the query's
    ``nprobe`` most similar of ``nlist`` k-means lists (0 = about sqrt(n) lists and max(8, nlist / 128)
    probes); their similarities are exact float32, so a missed neighbour can only lower a score, never raise
    it, and ``nprobe = nlist`` is exact. ``search="hnsw"`` searches faiss's HNSW graph (``hnsw_m`` links per
    node, ``ef_search`` candidates, 0 = max(128, 4 k)), approximate in the same way. ``benchmarks/bench_knn.py``
    reports recall@k against exact search and the AUROC difference.
    """

    grid = {"k": [1000, 500, 200, 100, 50]}  # largest first: one search serves every smaller k
    default = False  # 200,000 x 90,000 x 2048 at ImageNet scale: minutes, not seconds, on a CPU

    def __init__(self, k: int = 50, search: str = "exact", nlist: int = 0, nprobe: int = 0, hnsw_m: int = 32,
                 ef_search: int = 0):
        if search not in SEARCHES:
            raise ParameterError(f"knn.search must be one of {', '.join(SEARCHES)}; got {search!r}")
        self.k, self.search = k, search
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search

    def fit(self, train):
        spec = {"exact": ("exact",), "ivf": ("ivf", self.nlist, self.nprobe),
                "hnsw": ("hnsw", self.hnsw_m, self.ef_search)}[self.search]
        if self.search != "exact" and faiss is None:
            rate = matmul_rate(train.dim, train.device)
            self.note(f"faiss is not installed (pip install faiss-cpu): exact search instead, about "
                      f"{train.n * 10_000 * train.dim / rate:.1f} s per 10,000 queries against {train.n} rows")
        self.bank_ = train.memo(("knn_bank", spec), lambda: Bank("knn", train, search=spec))
        return self

    def score(self, split):
        cos = self.bank_.top(split, self.k)[:, self.k - 1].astype(np.float64)
        return -np.sqrt(np.maximum(2.0 - 2.0 * cos, 0.0))


@register("nnguide")
class NNGuide(Detector):
    """Nearest Neighbor Guidance (Park et al., ICCV 2023): energy(z) times the mean of the k largest
    q_hat . (b_hat_i * energy_i) over a guidance bank of normalised train features b_hat_i scaled by their
    own energy. The bank is a seeded random ``alpha`` share of the train rows (at least k of them);
    OpenOOD takes the first batches of its shuffled train loader, the same kind of sample.
    """

    grid = {"k": [200, 100, 50, 10]}  # largest first: one search serves every smaller k

    def __init__(self, k: int = 100, alpha: float = 0.01, seed: int = 0):
        self.k, self.alpha, self.seed = k, alpha, seed

    def fit(self, train):
        if not 0 < self.alpha <= 1:
            raise InputError(f"nnguide alpha is the share of train rows in the bank, in (0, 1], got {self.alpha}")
        size = min(train.n, max(self.k, math.ceil(self.alpha * train.n)))

        def build():
            rows = None
            if size < train.n:
                rows = np.sort(np.random.default_rng(self.seed).choice(train.n, size, replace=False))
            e = energies(train)
            return Bank(("nnguide", size, self.seed), train, rows, e if rows is None else e[rows])
        self.bank_ = train.memo(("nnguide_bank", size, self.seed), build)
        return self

    def score(self, split):
        guide = self.bank_.top(split, self.k).astype(np.float64).mean(axis=1)
        return guide * energies(split)
