"""``python -m ood.segments retrieve``: nearest-neighbour retrieval and clustering of segment embeddings.

Retrieval as Oberdiek, Rottmann & Fink evaluate it (CVPR-W 2020, Sec. 4; OODRetrieval's ``eval_retrieval.py``):
every segment with a ground-truth class is a query, every other such segment is ranked by its distance to the
query, and a segment is relevant when it has the query's class. The average precision of a query is the mean,
over its relevant segments, of the precision at their ranks; with ``k`` the ranking stops at rank k and the sum
is divided by min(R, k) (R = relevant segments), so k = all (the default) is the paper's figure. mAP is given
per query class, as the mean over classes and as the mean over queries (OODRetrieval's "Average" and "Weighted
Average"), next to chance: the share of the query's class among the other segments, which is the expected
precision of a random ranking. Segments without a class (-1) take no part; a class with one segment has no
query. Ties in distance count against the query (an irrelevant segment as far as a relevant one ranks first).

Distances are euclidean and cosine (1 - cos), exact, from one blocked float32 matrix product per block of
queries (memory bounded by ``block_mb``; both metrics of a block share its norms). k-nearest-neighbour lists
(k < all, the gallery) use faiss's exact brute force when faiss is installed, numpy otherwise.

The 2-D map is PCA to 50 dimensions and then t-SNE (perplexity 30 and early exaggeration 12 as OODRetrieval's
``eval_retrieval.py``, the learning rate scaled to the map; openTSNE when installed, else scikit-learn; seeded);
its mAP is computed with euclidean distances in the map, on the segments of the map (at most ``map_max``, a
seeded sample).

Clustering: k-means, agglomerative (ward) and spectral (k-nearest-neighbour affinity) from scikit-learn, in the
embedding space and in the 2-D map, with as many clusters as ground-truth classes unless given, scored against
the classes by the adjusted Rand index, normalised mutual information and purity (the share of segments in the
majority class of their cluster), on at most ``cluster_max`` segments (a seeded sample).

>>> x = np.array([[0, 0], [0, 1], [5, 5], [5, 6], [0, 2.5]], np.float32)
>>> labels = np.array([0, 0, 1, 1, 1])
>>> np.round(average_precisions(x, labels), 3).tolist()
[1.0, 1.0, 1.0, 1.0, 0.417]
>>> purity([0, 0, 1, 1], [5, 5, 5, 7])
0.75
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import InputError, ParameterError

METRICS = ("euclidean", "cosine")
CLUSTER_METHODS = ("kmeans", "agglomerative", "spectral")
BLOCK_MB = 256


# --------------------------------------------------------------------------------------------- distances


def _rows(x, metric: str) -> np.ndarray:
    """float32 rows ready for the product: unit rows for cosine (a zero row stays zero: distance 1 to all)."""
    if metric not in METRICS:
        raise ParameterError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1)
    return x


def _block(n: int, block_mb: float, bytes_per_value: int = 12) -> int:
    return int(max(1, min(4096, block_mb * 2**20 // max(1, n * bytes_per_value))))


def _distances(q: np.ndarray, base: np.ndarray, metric: str, base_sq: Optional[np.ndarray]) -> np.ndarray:
    """[len(q), len(base)] float32: 1 - cos, or the squared euclidean distance (same ranking, no square root)."""
    g = q @ base.T
    if metric == "cosine":
        return np.subtract(1, g, out=g)
    g *= -2
    g += (q * q).sum(1)[:, None]
    g += base_sq[None, :]
    return np.maximum(g, 0, out=g)


def _queries(n: int, queries) -> np.ndarray:
    q = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64).reshape(-1)
    if len(q) and (q.min() < 0 or q.max() >= n):
        raise InputError(f"query rows must lie in 0..{n - 1}")
    return q


def _check_k(k: int, n: int):
    if k < 1:
        raise ParameterError(f"--k must be at least 1, got {k}")
    if k > n - 1:
        raise InputError(f"--k {k} is larger than the {n - 1} other segments a query can retrieve "
                         f"({n} segments)")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def knn(x, k: int, *, metric: str = "euclidean", queries=None, backend: str = "auto",
        block_mb: float = BLOCK_MB):
    """Exact k nearest neighbours among the rows of ``x`` of each query row (all rows by default), the query
    itself left out: (distances [Q, k], rows [Q, k]), nearest first; euclidean distances or 1 - cos.
    ``backend``: ``faiss`` (its exact brute force), ``numpy`` (blocked products), ``auto`` (faiss if installed).

    >>> d, i = knn(np.array([[0.], [1.], [3.]]), 1)
    >>> i.ravel().tolist(), d.ravel().tolist()
    ([1, 0, 1], [1.0, 1.0, 2.0])
    """
    xs = _rows(x, metric)
    n = len(xs)
    q = _queries(n, queries)
    _check_k(k, n)
    if backend not in ("auto", "faiss", "numpy"):
        raise ParameterError(f"unknown k-NN backend {backend!r}; choose from auto, faiss, numpy")
    if backend == "faiss" or (backend == "auto" and faiss_available()):
        import faiss

        kind = faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        dist, idx = faiss.knn(np.ascontiguousarray(xs[q]), xs, min(k + 1, n), metric=kind)
        own = idx == q[:, None]
        own[~own.any(1), -1] = True  # the query is not among the k + 1 (ties): drop the farthest instead
        dist, idx = dist[~own].reshape(len(q), k), idx[~own].reshape(len(q), k)
        dist = np.sqrt(np.maximum(dist, 0)) if metric == "euclidean" else 1 - dist
        return dist.astype(np.float32), idx.astype(np.int64)
    sq = (xs * xs).sum(1) if metric == "euclidean" else None
    out_d, out_i = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    step = _block(n, block_mb)
    for lo in range(0, len(q), step):
        qi = q[lo:lo + step]
        d = _distances(xs[qi], xs, metric, sq)
        d[np.arange(len(qi)), qi] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        dk = np.take_along_axis(d, part, 1)
        order = np.argsort(dk, axis=1, kind="stable")
        out_i[lo:lo + step] = np.take_along_axis(part, order, 1)
        out_d[lo:lo + step] = np.take_along_axis(dk, order, 1)
    if metric == "euclidean":
        np.sqrt(out_d, out=out_d)
    return out_d, out_i


# --------------------------------------------------------------------------------------------- retrieval mAP


def average_precisions(x, labels, *, metric: str = "euclidean", k: Optional[int] = None, queries=None,
                       backend: str = "auto", block_mb: float = BLOCK_MB) -> np.ndarray:
    """Average precision of each query row of ``x`` (all rows by default) when the other rows are ranked by
    distance and those with the query's label are relevant; ``k``: AP@k (None = the full ranking). NaN for a
    query without a relevant row."""
    return average_precisions_by_metric(x, labels, metrics=(metric,), k=k, queries=queries, backend=backend,
                                        block_mb=block_mb)[metric]


def _full_blocks(x, q: np.ndarray, metrics: Sequence[str], block_mb: float):
    """(first query, query rows, {metric: distances [B, n] with inf at the query itself}) per block of queries:
    one float32 product of the block with all rows serves every metric."""
    xs = np.ascontiguousarray(x, dtype=np.float32)
    n = len(xs)
    sq = (xs * xs).sum(1)
    norms = np.sqrt(sq)
    norms[norms == 0] = np.inf  # a zero row: cosine 0 with everything, distance 1
    step = _block(n, block_mb, 4 * (2 + len(metrics)))
    for lo in range(0, len(q), step):
        qi = q[lo:lo + step]
        g = xs[qi] @ xs.T
        out = {}
        for metric in metrics:
            if metric == "cosine":
                d = 1 - g / norms[qi][:, None] / norms[None, :]
            else:
                d = np.maximum(sq[qi][:, None] + sq[None, :] - 2 * g, 0)
            d[np.arange(len(qi)), qi] = np.inf
            out[metric] = d
        yield lo, qi, out


def average_precisions_by_metric(x, labels, *, metrics: Sequence[str] = METRICS, k: Optional[int] = None,
                                 queries=None, backend: str = "auto",
                                 block_mb: float = BLOCK_MB) -> Dict[str, np.ndarray]:
    """:func:`average_precisions` for several metrics at once (the full ranking shares one product per block)."""
    for metric in metrics:
        _rows(np.zeros((1, 1)), metric)
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if len(x) != n:
        raise InputError(f"{len(x)} rows and {n} labels")
    q = _queries(n, queries)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[inverse[q]] - 1
    out = {}
    if k is not None and k < n - 1:
        for metric in metrics:
            _, idx = knn(x, k, metric=metric, queries=q, backend=backend, block_mb=block_mb)
            rel = labels[idx] == labels[q][:, None]
            precision = np.cumsum(rel, axis=1) / np.arange(1, k + 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                ap = (precision * rel).sum(1) / np.minimum(relevant, k)
            ap[relevant == 0] = np.nan
            out[metric] = ap
        return out
    if k is not None:
        _check_k(k, n)
    out = {metric: np.full(len(q), np.nan) for metric in metrics}
    for lo, qi, dists in _full_blocks(x, q, metrics, block_mb):
        rel = labels[None, :] == labels[qi][:, None]
        rel[np.arange(len(qi)), qi] = False
        for metric, d in dists.items():
            ranked = np.sort(d, axis=1)
            ap = out[metric]
            for b in range(len(qi)):  # one vectorised pass per query over its relevant rows
                r = relevant[lo + b]
                if r == 0:
                    continue
                near = np.sort(d[b, rel[b]])
                j = np.arange(1, r + 1)
                # rank of the j-th nearest relevant row: j + the irrelevant rows at most as far (ties count against)
                rank = j + np.searchsorted(ranked[b], near, "right") - np.searchsorted(near, near, "right")
                ap[lo + b] = np.sum(j / rank) / r
    return out


def map_by_class(ap: np.ndarray, query_labels, labels, names: Optional[dict] = None) -> dict:
    """Per query class: segments, queries, chance (share of the class among the other segments) and mAP; the
    mean over classes and over queries. Queries with NaN AP (no relevant segment) are left out."""
    ap = np.asarray(ap, dtype=np.float64)
    query_labels = np.asarray(query_labels)
    labels = np.asarray(labels)
    n = len(labels)
    ok = np.isfinite(ap)
    rows = []
    for c in np.unique(query_labels[ok]):
        sel = ok & (query_labels == c)
        size = int((labels == c).sum())
        rows.append({"class": int(c), "name": (names or {}).get(int(c), str(int(c))), "segments": size,
                     "queries": int(sel.sum()), "chance": (size - 1) / max(n - 1, 1), "map": float(ap[sel].mean())})
    chance_q = np.array([(np.sum(labels == c) - 1) / max(n - 1, 1) for c in query_labels[ok]])
    return {"classes": rows, "queries": int(ok.sum()),
            "mean": float(np.mean([r["map"] for r in rows])) if rows else float("nan"),
            "weighted": float(ap[ok].mean()) if ok.any() else float("nan"),
            "chance_mean": float(np.mean([r["chance"] for r in rows])) if rows else float("nan"),
            "chance_weighted": float(chance_q.mean()) if ok.any() else float("nan")}


# --------------------------------------------------------------------------------------------- 2-D map, clusters


def tsne_2d(x, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50, method: str = "auto") -> np.ndarray:
    """PCA to ``pca_dims`` (when wider) then 2-D t-SNE (perplexity 30, early exaggeration 12), seeded: with
    openTSNE (Poličar et al., much faster) when it is installed (``auto``), else scikit-learn's Barnes-Hut t-SNE.
    The learning rate is each library's ``auto`` (about n / 12), since OODRetrieval's fixed 200 diverges on maps
    of a few hundred segments; the perplexity is lowered to (n - 1) / 3 for small n."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if n < 4:
        raise InputError(f"the 2-D map needs at least 4 segments, got {n}")
    if method not in ("auto", "opentsne", "sklearn"):
        raise ParameterError(f"unknown t-SNE method {method!r}; choose from auto, opentsne, sklearn")
    dims = min(pca_dims, n, x.shape[1])
    if x.shape[1] > dims:
        x = PCA(dims, random_state=seed).fit_transform(x)
    x = np.asarray(x, dtype=np.float64)
    settings = dict(perplexity=min(perplexity, (n - 1) / 3), learning_rate="auto", early_exaggeration=12.0,
                    random_state=seed)
    if method in ("auto", "opentsne"):
        try:
            from openTSNE import TSNE as OpenTSNE
        except ImportError:
            if method == "opentsne":
                raise ParameterError("t-SNE method opentsne: openTSNE is not installed (pip install openTSNE)")
        else:
            from ..runtime import Dist, cpus_per_rank

            return np.asarray(OpenTSNE(2, initialization="pca", n_jobs=cpus_per_rank(Dist()), **settings).fit(x),
                              dtype=np.float32)
    from sklearn.manifold import TSNE

    return TSNE(2, init="pca", **settings).fit_transform(x).astype(np.float32)


def purity(true, pred) -> float:
    """Share of the items that belong to the majority true class of their cluster."""
    _, t = np.unique(np.asarray(true), return_inverse=True)
    _, p = np.unique(np.asarray(pred), return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1), np.int64)
    np.add.at(table, (p, t), 1)
    return float(table.max(1).sum() / len(t))


def cluster(x, n_clusters: int, method: str, seed: int = 0) -> np.ndarray:
    """Cluster labels of the rows of ``x``: ``kmeans`` (10 restarts), ``agglomerative`` (ward) or ``spectral``
    (affinity of the 10 nearest neighbours), scikit-learn's, seeded."""
    from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering

    n = len(x)
    if not 2 <= n_clusters <= n:
        raise ParameterError(f"--clusters must lie in 2..{n} (the segments clustered), got {n_clusters}")
    x = np.asarray(x, dtype=np.float64)
    if method == "kmeans":
        return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(x)
    if method == "agglomerative":
        return AgglomerativeClustering(n_clusters, linkage="ward").fit_predict(x)
    if method == "spectral":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "graph is not fully connected": the embedding still works
            return SpectralClustering(n_clusters, affinity="nearest_neighbors", n_neighbors=min(10, n - 1),
                                      random_state=seed).fit_predict(x)
    raise ParameterError(f"unknown clustering method {method!r}; choose from {', '.join(CLUSTER_METHODS)}")


def cluster_scores(true, pred) -> dict:
    """Adjusted Rand index, normalised mutual information and purity of ``pred`` against ``true``."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"ari": float(adjusted_rand_score(true, pred)), "nmi": float(normalized_mutual_info_score(true, pred)),
            "purity": purity(true, pred)}


def sample(n: int, m: Optional[int], seed: int) -> np.ndarray:
    """All of 0..n-1 when n <= m (or m is None or 0), else m of them at random (seeded), sorted."""
    if not m or n <= m:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, m, replace=False))


# --------------------------------------------------------------------------------------------- the command


def read_class_names(path) -> Dict[int, str]:
    """Class names, one a line, line i naming class i."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the class names file ({e.__class__.__name__})") from None
    return {i: line.strip() for i, line in enumerate(lines) if line.strip()}


def retrieve(emb, *, k: Optional[int] = None, metrics: Sequence[str] = METRICS, queries: Optional[int] = 2000,
             two_d: bool = True, map_max: Optional[int] = 5000, clusters: Optional[int] = None,
             methods: Sequence[str] = CLUSTER_METHODS, cluster_max: Optional[int] = 5000, seed: int = 0,
             backend: str = "auto", block_mb: float = BLOCK_MB, log=lambda msg: None) -> dict:
    """Retrieval mAP (embedding space per metric, and the 2-D map) and clustering scores of the segments of
    ``emb`` (:class:`~ood.segments.embed.SegmentEmbeddings`) that have a ground-truth class; the report as a
    dict (``xy``/``map_rows``: the 2-D map and its rows of ``emb``, for the pictures)."""
    for m in metrics:
        _rows(np.zeros((1, 1)), m)
    for m in methods:
        if m not in CLUSTER_METHODS:
            raise ParameterError(f"unknown clustering method {m!r}; choose from {', '.join(CLUSTER_METHODS)}")
    if queries is not None and queries < 0:
        raise ParameterError(f"--queries must be 0 (all) or more, got {queries}")
    names = emb.names
    labelled = np.flatnonzero(emb.gt_class >= 0)
    labels = emb.gt_class[labelled].astype(np.int64)
    n = len(labelled)
    report = {"embeddings": str(emb.path), "segments": len(emb), "with_class": n, "k": k, "metrics": list(metrics),
              "seed": seed, "retrieval": {}, "clustering": [], "notes": [], "class_names": {str(c): v for c, v in
                                                                                             names.items()}}
    if k is not None:
        _check_k(k, n if n else len(emb))
    if n < len(emb):
        report["notes"].append(f"{len(emb) - n} of {len(emb)} segments have no ground-truth class: left out of "
                               f"retrieval and clustering")
    if n:
        _, counts = np.unique(labels, return_counts=True)
        candidates = np.flatnonzero(counts[np.unique(labels, return_inverse=True)[1]] >= 2)
        q = candidates[sample(len(candidates), queries, seed)]
        report["queries"] = int(len(q))
        if len(q) < len(candidates):
            report["notes"].append(f"{len(q)} of {len(candidates)} possible queries (a seeded sample, --queries), "
                                   f"each ranked against all {n} segments with a class")
        tic = time.perf_counter()
        aps = average_precisions_by_metric(emb.features[labelled], labels, metrics=metrics, k=k, queries=q,
                                           backend=backend, block_mb=block_mb)
        for metric in metrics:
            report["retrieval"][f"embedding/{metric}"] = map_by_class(aps[metric], labels[q], labels, names)
        log(f"retrieval ({', '.join(metrics)}): {len(q)} queries over {n} segments in "
            f"{time.perf_counter() - tic:.1f} s")
    else:
        report["notes"].append("no segment has a ground-truth class: no retrieval mAP or clustering scores")
    if two_d and len(emb) < 4:
        report["notes"].append(f"no 2-D map: it needs at least 4 segments, the file has {len(emb)}")
        two_d = False
    if two_d:
        tic = time.perf_counter()
        rows = sample(len(emb), map_max, seed)
        if len(rows) < len(emb):
            report["notes"].append(f"the 2-D map holds {len(rows)} of {len(emb)} segments (a seeded sample, "
                                   f"--map_max)")
        xy = tsne_2d(emb.features[rows], seed)
        report["xy"], report["map_rows"] = xy, rows
        log(f"2-D map (PCA 50 + t-SNE) of {len(rows)} segments in {time.perf_counter() - tic:.1f} s")
        has = emb.gt_class[rows] >= 0
        if has.sum() >= 2:
            lab2 = emb.gt_class[rows][has].astype(np.int64)
            kk = None if k is None else min(k, int(has.sum()) - 1)
            ap = average_precisions(xy[has], lab2, metric="euclidean", k=kk, backend=backend, block_mb=block_mb)
            report["retrieval"]["2-D/euclidean"] = map_by_class(ap, lab2, lab2, names)
    if clusters is not None and not 2 <= clusters <= n:
        raise ParameterError(f"--clusters must lie in 2..{n} (the segments with a ground-truth class), got {clusters}")
    if n >= 2 and methods:
        n_classes = len(np.unique(labels))
        n_clusters = clusters or n_classes
        spaces = [("embedding", emb.features[labelled], labels)]
        if "xy" in report:
            has = emb.gt_class[report["map_rows"]] >= 0
            spaces.append(("2-D", report["xy"][has], emb.gt_class[report["map_rows"]][has]))
        for space, feats, lab in spaces:
            pick = sample(len(feats), cluster_max, seed)
            if len(pick) < len(feats):
                report["notes"].append(f"clustering in the {space} space uses {len(pick)} of {len(feats)} "
                                       f"segments (a seeded sample, --cluster_max)")
            if n_clusters > len(pick) or n_clusters < 2:
                report["notes"].append(f"no clustering in the {space} space: {n_clusters} clusters for "
                                       f"{len(pick)} segments")
                continue
            for method in methods:
                tic = time.perf_counter()
                pred = cluster(feats[pick], n_clusters, method, seed)
                report["clustering"].append({"space": space, "method": method, "clusters": n_clusters,
                                             "segments": int(len(pick)), **cluster_scores(lab[pick], pred)})
                log(f"{method} in the {space} space: {time.perf_counter() - tic:.1f} s")
    return report


def format_report(report: dict, fmt: str = "table") -> List[str]:
    """The retrieval table (mAP % per query class for each space and metric, chance beside it) and the
    clustering table."""
    from ..report import render

    def pct(v):
        return "-" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"
    spaces = list(report["retrieval"])
    lines = []
    if spaces:
        first = report["retrieval"][spaces[0]]
        classes = {r["class"]: r for r in first["classes"]}
        for s in spaces[1:]:
            for r in report["retrieval"][s]["classes"]:
                classes.setdefault(r["class"], r)
        header = ["class", "segments", "queries", "chance %"] + [f"{s} mAP %" for s in spaces]
        body = []
        for c in sorted(classes):
            r = classes[c]
            cells = []
            for s in spaces:
                found = [x for x in report["retrieval"][s]["classes"] if x["class"] == c]
                cells.append(pct(found[0]["map"]) if found else "-")
            body.append([r["name"], str(r["segments"]), str(r["queries"]), pct(r["chance"])] + cells)
        body.append(["mean over classes", "", "", pct(first["chance_mean"])]
                    + [pct(report["retrieval"][s]["mean"]) for s in spaces])
        body.append(["mean over queries", "", str(first["queries"]), pct(first["chance_weighted"])]
                    + [pct(report["retrieval"][s]["weighted"]) for s in spaces])
        k = report.get("k")
        lines.append(f"retrieval mAP{'' if k is None else f'@{k}'} of {report['with_class']} segments with a "
                     f"ground-truth class ({report['segments']} embedded), queries: segments of classes with 2 or "
                     f"more; chance = share of the query's class among the other segments")
        lines += render(header, body, fmt)
    if report["clustering"]:
        lines.append("")
        lines.append("clustering against the ground-truth classes")
        header = ["space", "method", "clusters", "segments", "ARI", "NMI", "purity %"]
        body = [[r["space"], r["method"], str(r["clusters"]), str(r["segments"]), f"{r['ari']:.3f}",
                 f"{r['nmi']:.3f}", pct(r["purity"])] for r in report["clustering"]]
        lines += render(header, body, fmt)
    lines += [f"note: {n}" for n in report["notes"]]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ood.segments retrieve",
        description="Retrieval mAP (per ground-truth class, in the embedding space and in a 2-D PCA + t-SNE map) "
                    "and k-means / agglomerative / spectral clustering scores of segment embeddings; optional "
                    "pictures: the 2-D map with crop thumbnails, a gallery of nearest neighbours.")
    p.add_argument("embeddings", help="embedding file written by python -m ood.segments embed")
    p.add_argument("--store", help="check the file against this store's segment table and take the classes "
                                   "and IoUs from it")
    p.add_argument("--k", type=int, help="rank only the k nearest segments (mAP@k; default: the full ranking)")
    p.add_argument("--metrics", default=",".join(METRICS), help="comma list of euclidean, cosine")
    p.add_argument("--queries", type=int, default=2000,
                   help="at most this many queries, a seeded sample, each ranked against every segment (0 = all)")
    p.add_argument("--no_2d", action="store_true", help="skip the 2-D t-SNE map (its mAP, clusters, picture)")
    p.add_argument("--map_max", type=int, default=5000, help="at most this many segments in the 2-D map")
    p.add_argument("--clusters", type=int, help="number of clusters (default: the ground-truth classes)")
    p.add_argument("--cluster_methods", default=",".join(CLUSTER_METHODS),
                   help="comma list of kmeans, agglomerative, spectral ('' = no clustering)")
    p.add_argument("--cluster_max", type=int, default=5000, help="at most this many segments clustered")
    p.add_argument("--class_names", help="file with one class name a line (line i = class i)")
    p.add_argument("--backend", choices=("auto", "faiss", "numpy"), default="auto",
                   help="exact k-NN lists: faiss when installed (auto) or numpy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="write the report here (no NaN: null)")
    p.add_argument("--format", choices=("table", "markdown", "latex"), default="table")
    p.add_argument("--map", dest="map_png", help="PNG of the 2-D map with crop thumbnails")
    p.add_argument("--color", choices=("gt", "pred"), default="gt", help="colour the map by ground-truth or "
                                                                         "predicted class")
    p.add_argument("--thumbnails", type=int, default=120, help="at most this many thumbnails on the map")
    p.add_argument("--gallery", dest="gallery_png", help="PNG of the nearest neighbours of chosen queries")
    p.add_argument("--gallery_classes", help="comma list of ground-truth classes: one seeded query of each "
                                             "(default: the largest classes, up to 6)")
    p.add_argument("--gallery_rows", help="comma list of embedding rows to use as queries instead")
    p.add_argument("--gallery_k", type=int, default=6, help="neighbours shown per query")
    p.add_argument("--data_root", help="image folder for the pictures (default: the embedding file's)")
    p.add_argument("--quiet", action="store_true")
    return p


def _ints(text: Optional[str], what: str) -> Optional[List[int]]:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"{what} must be a comma list of integers, got {text!r}") from None


def run(args, log) -> int:
    """The command behind :func:`main`, on parsed arguments."""
    from ..fileio import check_writable, write_text
    from ..report import to_json
    from .embed import read_embeddings

    for path, what in ((args.json_out, "JSON report"), (args.map_png, "map picture"),
                       (args.gallery_png, "gallery picture")):
        if path:
            check_writable(path, what)
    if args.map_png and args.no_2d:
        raise ParameterError("--map needs the 2-D map; drop --no_2d")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    methods = [m.strip() for m in args.cluster_methods.split(",") if m.strip()]
    gallery_classes = _ints(args.gallery_classes, "--gallery_classes")
    gallery_rows = _ints(args.gallery_rows, "--gallery_rows")
    if args.gallery_k < 1:
        raise ParameterError(f"--gallery_k must be at least 1, got {args.gallery_k}")
    emb = read_embeddings(args.embeddings, args.store)
    if args.class_names:
        emb.names = read_class_names(args.class_names)
    if args.data_root:
        emb.data_root = args.data_root
    if args.gallery_png and args.gallery_k > len(emb) - 1:
        raise InputError(f"--gallery_k {args.gallery_k} is larger than the {len(emb) - 1} other segments of "
                         f"{args.embeddings}")
    report = retrieve(emb, k=args.k, metrics=metrics, queries=args.queries, two_d=not args.no_2d,
                      map_max=args.map_max, clusters=args.clusters, methods=methods, cluster_max=args.cluster_max,
                      seed=args.seed, backend=args.backend, log=log)
    print("\n".join(format_report(report, args.format)))
    if args.map_png or args.gallery_png:
        from . import pictures

        if args.map_png:
            if "xy" not in report:
                raise InputError(f"{args.embeddings}: no 2-D map to draw ({'; '.join(report['notes'])})")
            pictures.embedding_map(args.map_png, emb, report["xy"], report["map_rows"], color=args.color,
                                   thumbnails=args.thumbnails, seed=args.seed)
            log(f"{args.map_png}: the 2-D map of {len(report['map_rows'])} segments")
        if args.gallery_png:
            rows = pictures.gallery_queries(emb, rows=gallery_rows, classes=gallery_classes, seed=args.seed)
            metric = metrics[0] if metrics else "euclidean"
            dist, idx = knn(emb.features, args.gallery_k, metric=metric, queries=rows, backend=args.backend)
            pictures.gallery(args.gallery_png, emb, rows, idx, dist, metric=metric)
            log(f"{args.gallery_png}: {len(rows)} queries x {args.gallery_k} neighbours ({metric})")
    if args.json_out:
        out = {key: value for key, value in report.items() if key not in ("xy", "map_rows")}
        write_text(args.json_out, to_json(out))
    return 0


def main(argv=None) -> int:
    from ..cli import run_main, stderr_log

    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args, stderr_log(args.quiet)))
