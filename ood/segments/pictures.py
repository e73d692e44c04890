"""Pictures of segment embeddings: the 2-D map with crop thumbnails and a gallery of nearest neighbours.

The static counterpart of OODRetrieval's interactive viewer (Oberdiek, Rottmann & Fink, CVPR-W 2020): the map
scatters every segment of the 2-D (PCA + t-SNE) embedding, coloured by its ground-truth or predicted class, and
shows the crops of segments spread over the map in frames of their class colour; the gallery shows, for each
query segment, its crop and its k nearest neighbours in the embedding space (distance and class above each),
with the source image of each below it and the crop box drawn in. A neighbour of the query's ground-truth class
has a green frame, another class a red one, an unknown class a grey one. Crops are cut from the images named by
the embedding file (its ``data_root`` and ``paths``), each image decoded once.

>>> spread(np.array([[0, 0], [0, 0.1], [10, 10]]), 2).tolist()  # one point of each occupied cell
[1, 2]
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import ImageError, InputError

UNKNOWN = (0.6, 0.6, 0.6)
SAME, OTHER = (0.1, 0.65, 0.2), (0.85, 0.15, 0.1)


def class_colour(c: int) -> tuple:
    """A fixed colour per class id: tab20's ten strong colours for classes 0-9, its ten light ones for 10-19,
    then again; grey for an unknown class (< 0).

    >>> class_colour(-1), class_colour(0) == class_colour(20), class_colour(0) == class_colour(10)
    ((0.6, 0.6, 0.6), True, False)
    """
    from matplotlib import colormaps

    c = int(c)
    return UNKNOWN if c < 0 else tuple(colormaps["tab20"](2 * (c % 10) + (c // 10) % 2)[:3])


def _name(emb, c: int) -> str:
    return "unknown" if c < 0 else emb.names.get(int(c), str(int(c)))


def _load(emb, rows: Sequence[int]) -> Dict[str, object]:
    """The source image of each row's segment, decoded once per image."""
    from ..runtime import load_image

    images = {}
    for r in rows:
        path = emb.paths[r]
        if path not in images:
            full = os.path.join(emb.data_root, path)
            try:
                images[path] = load_image(full)
            except Exception as e:  # any decoder failure names the image
                raise ImageError(f"{full}: cannot read image ({e.__class__.__name__}: {e}); pass --data_root "
                                 f"where the store's images are") from None
    return images


def crops(emb, rows: Sequence[int], size: int = 64) -> List[np.ndarray]:
    """The crop of each row (its ``box``) as an RGB array whose longer side is ``size`` pixels."""
    from PIL import Image

    images = _load(emb, rows)
    out = []
    for r in rows:
        y0, x0, y1, x1 = (int(v) for v in emb.box[r])
        img = images[emb.paths[r]].crop((x0, y0, x1, y1))
        scale = size / max(img.width, img.height)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        out.append(np.asarray(img))
    return out


def spread(xy: np.ndarray, m: int, seed: int = 0) -> np.ndarray:
    """Up to ``m`` points spread over the map: a grid of about 2 m cells, in each occupied cell the point
    nearest its centre; when more cells are occupied than ``m``, a seeded choice among them."""
    xy = np.asarray(xy, dtype=np.float64)
    if len(xy) <= m:
        return np.arange(len(xy))
    g = int(np.ceil(np.sqrt(2 * m)))
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi > lo, hi - lo, 1)
    cell = np.minimum(((xy - lo) / span * g).astype(np.int64), g - 1)
    centre = lo + (cell + 0.5) * span / g
    key = cell[:, 0] * g + cell[:, 1]
    order = np.lexsort((np.linalg.norm((xy - centre) / span, axis=1), key))
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    if len(first) > m:
        first = np.random.default_rng(seed).choice(first, m, replace=False)
    return np.sort(first)


def _save(fig, out, dpi: int):
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)


def embedding_map(out, emb, xy: np.ndarray, rows: np.ndarray, *, color: str = "gt", thumbnails: int = 120,
                  thumb_px: int = 44, size_in: float = 10.0, dpi: int = 100, seed: int = 0,
                  title: Optional[str] = None):
    """PNG of the 2-D map ``xy`` of the segments ``rows`` of ``emb``, coloured by ground-truth (``gt``) or
    predicted (``pred``) class, with up to ``thumbnails`` crops in frames of their class colour."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    if color not in ("gt", "pred"):
        raise InputError(f"--color must be gt or pred, got {color!r}")
    classes = (emb.gt_class if color == "gt" else emb.pred_class)[rows].astype(np.int64)
    fig, ax = plt.subplots(figsize=(size_in, size_in))
    colours = np.array([class_colour(c) for c in classes]).reshape(-1, 3)
    ax.scatter(xy[:, 0], xy[:, 1], s=10, c=colours, linewidths=0, zorder=1)
    shown = spread(xy, thumbnails, seed)
    for i, img in zip(shown, crops(emb, rows[shown], thumb_px)):
        box = AnnotationBbox(OffsetImage(img, zoom=72 / dpi), xy[i], frameon=True, pad=0.1,
                             bboxprops=dict(edgecolor=class_colour(classes[i]), linewidth=2))
        box.set_zorder(2)
        ax.add_artist(box)
    present = sorted(set(classes.tolist()))
    handles = [Line2D([], [], marker="s", linestyle="", markersize=9, color=class_colour(c),
                      label=f"{_name(emb, c)} ({int(np.sum(classes == c))})") for c in present]
    ax.legend(handles=handles, title="ground-truth class" if color == "gt" else "predicted class",
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    kind = "ground-truth" if color == "gt" else "predicted"
    ax.set_title(title or f"{len(rows)} segments, PCA 50 + t-SNE; frames: {kind} class", fontsize=11)
    fig.tight_layout()
    _save(fig, out, dpi)


def gallery_queries(emb, rows: Optional[Sequence[int]] = None, classes: Optional[Sequence[int]] = None,
                    seed: int = 0, max_queries: int = 6) -> np.ndarray:
    """Query rows for :func:`gallery`: ``rows`` as given, else one seeded segment of each of ``classes``, else
    of the largest ground-truth classes (up to ``max_queries``)."""
    n = len(emb)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or rows.min() < 0 or rows.max() >= n:
            raise InputError(f"{emb.path}: gallery rows must lie in 0..{n - 1}, got {rows.tolist()}")
        return rows
    rng = np.random.default_rng(seed)
    gt = emb.gt_class
    if classes is None:
        present, counts = np.unique(gt[gt >= 0], return_counts=True)
        classes = present[np.argsort(-counts, kind="stable")][:max_queries].tolist()
        if not classes:
            return np.sort(rng.choice(n, min(n, max_queries), replace=False))
    picked = []
    for c in classes:
        members = np.flatnonzero(gt == c)
        if not len(members):
            raise InputError(f"{emb.path}: no segment of ground-truth class {c}")
        picked.append(int(rng.choice(members)))
    return np.array(picked, dtype=np.int64)


def gallery(out, emb, queries: Sequence[int], idx: np.ndarray, dist: np.ndarray, metric: str = "euclidean",
            cell_in: float = 1.45, dpi: int = 100, thumb_px: int = 96):
    """PNG: one block of two rows per query, the query and its neighbours ``idx`` (distances ``dist``): their
    crops above, their source images with the crop box below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    queries = np.asarray(queries, dtype=np.int64)
    k = idx.shape[1]
    every = np.concatenate([queries[:, None], idx], axis=1)
    images = _load(emb, np.unique(every))
    thumbs = dict(zip(np.unique(every).tolist(), crops(emb, np.unique(every), thumb_px)))
    fig, axes = plt.subplots(2 * len(queries), k + 1, figsize=(cell_in * (k + 1), cell_in * 2.1 * len(queries)),
                             squeeze=False)
    for qi, q in enumerate(queries):
        want = int(emb.gt_class[q])
        for j, r in enumerate(every[qi]):
            r = int(r)
            top, bottom = axes[2 * qi, j], axes[2 * qi + 1, j]
            c = int(emb.gt_class[r])
            frame = (0.1, 0.1, 0.1) if j == 0 else UNKNOWN if c < 0 or want < 0 else SAME if c == want else OTHER
            top.imshow(thumbs[r])
            head = "query" if j == 0 else f"#{j} d={dist[qi, j - 1]:.3g}"
            top.set_title(f"{head}\n{_name(emb, c)}", fontsize=8, color=frame if j else "black")
            for spine in top.spines.values():
                spine.set_edgecolor(frame)
                spine.set_linewidth(3)
            img = images[emb.paths[r]]
            bottom.imshow(np.asarray(img))
            y0, x0, y1, x1 = (int(v) for v in emb.box[r])
            bottom.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=frame,
                                       linewidth=1.5))
            bottom.set_xlabel(os.path.basename(emb.paths[r]), fontsize=7)
            for a in (top, bottom):
                a.set_xticks([])
                a.set_yticks([])
    fig.suptitle(f"{k} nearest neighbours ({metric}) of {len(queries)} query segments; green: same ground-truth "
                 f"class as the query, red: another", fontsize=10)
    fig.tight_layout()
    _save(fig, out, dpi)
