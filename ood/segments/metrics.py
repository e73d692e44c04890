"""MetaSeg's segment metrics (Rottmann et al., "Prediction Error Meta Classification in Semantic Segmentation:
Detection via Aggregated Dispersion Measures of Softmax Probabilities", IJCNN 2020 / arXiv 1811.00648).

A *segment* is a connected component (8-connectivity) of the pixels predicted as one class. A segment pixel is
a *boundary* pixel when one of its 8 neighbours inside the image is predicted as another class (MetaSeg's rule:
the image edge alone does not make a boundary pixel), an *inner* pixel otherwise. From the softmax p of each
pixel come three dispersion maps, higher = more uncertain: the entropy normalised by log C,
E = -sum_c p_c log p_c / log C, the probability margin D = 1 - (p_1 - p_2) and the variation ratio V = 1 - p_1
(p_1 >= p_2 the two largest probabilities). Per segment, with S, S_in, S_bd its pixels, inner and boundary
pixels (MetaSeg's column names):

- ``S``, ``S_in``, ``S_bd``, ``S_rel`` = S / S_bd, ``S_rel_in`` = S_in / S_bd;
- for h in E, D, V: the means ``h``, ``h_in``, ``h_bd``, ``h_rel`` = h S_rel, ``h_rel_in`` = h_in S_rel_in, and
  the variances ``h_var``, ``h_var_in``, ``h_var_bd``, ``h_var_rel``, ``h_var_rel_in`` likewise;
- ``cprob0`` .. ``cprob{C-1}``: the mean probability of each class;
- ``centroid_y``, ``centroid_x``: the mean row and column;
- ``score_<detector>``: the mean of each pixel OOD score map stored with the segments (higher = more ID).

A mean over no pixels is 0 (inner part of a thin segment), and S_bd is taken as at least 1 in the ratios (only a
segment that fills the whole image has no boundary).

The *adjusted IoU* (MetaSeg's IoU_adj, Rottmann et al.) of a segment k of class c: with G the union of
the ground-truth segments of class c (8-connected) that intersect k, and Q the pixels of the other predicted
segments of class c, IoU_adj = |k ∩ G| / |k ∪ (G \\ Q)|, so a ground-truth object split into several predicted
segments does not penalise each piece for the others. Pixels whose ground truth is an ignore id are left out of
both counts (MetaSeg removes them from the prediction); a segment made only of them gets NaN.

Everything is vectorised: one connected-component pass over the predicted map (and one over the ground\ntruth), then ``np.bincount`` reductions.

>>> import numpy as np
>>> p = np.zeros((2, 3, 3), np.float32); p[0] = 0.8; p[1] = 0.2; p[:, 1, 1] = [0.3, 0.7]
>>> seg = segment_metrics(p)
>>> seg.ids.tolist(), seg.pred_class.tolist()
([[1, 1, 1], [1, 2, 1], [1, 1, 1]], [0, 1])
>>> cols = metric_columns(2)
>>> seg.metrics[:, cols.index("S")].tolist(), seg.metrics[:, cols.index("S_bd")].tolist()
([8.0, 1.0], [8.0, 1.0])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

MAPS = ("E", "D", "V")
DEFAULT_IGNORE = (255,)


def metric_columns(num_classes: int, detectors: Sequence[str] = ()) -> List[str]:
    """The names of the metric columns, in the order of :attr:`ImageSegments.metrics`.

    >>> metric_columns(2)[:6], metric_columns(2, ["msp"])[-3:]
    (['S', 'S_in', 'S_bd', 'S_rel', 'S_rel_in', 'E'], ['centroid_y', 'centroid_x', 'score_msp'])
    """
    cols = ["S", "S_in", "S_bd", "S_rel", "S_rel_in"]
    for h in MAPS:
        cols += [h, f"{h}_in", f"{h}_bd", f"{h}_rel", f"{h}_rel_in",
                 f"{h}_var", f"{h}_var_in", f"{h}_var_bd", f"{h}_var_rel", f"{h}_var_rel_in"]
    cols += [f"cprob{c}" for c in range(num_classes)]
    cols += ["centroid_y", "centroid_x"]
    cols += [f"score_{d}" for d in detectors]
    return cols


def pixel_maps(probs, neg_entropy=None):
    """E, D, V of softmax probabilities [..., C, H, W] (torch tensor or numpy array), as float32 [..., H, W] of
    the same kind; computed with torch (on the tensor's device). ``neg_entropy`` (sum p log p, the pixel
    detector ``entropy``), when the caller has it, is reused."""
    import torch

    as_numpy = isinstance(probs, np.ndarray)
    p = (torch.from_numpy(probs) if as_numpy else probs).float()
    num = p.shape[-3]
    if num > 1:
        top = torch.topk(p, 2, dim=-3).values
        p1, p2 = top.select(-3, 0), top.select(-3, 1)
    else:
        p1 = p.select(-3, 0)
        p2 = torch.zeros_like(p1)
    if num > 1:
        ent = -neg_entropy if neg_entropy is not None else -torch.special.xlogy(p, p).sum(-3)
        e = (ent / np.log(num)).clamp_(min=0)
    else:
        e = torch.zeros_like(p1)
    maps = {"E": e, "D": 1 - (p1 - p2), "V": 1 - p1}
    return {k: v.numpy() for k, v in maps.items()} if as_numpy else maps


@dataclass
class ImageSegments:
    """The segments of one image: ``ids`` [H, W] (1..n, 0 nowhere here), then one row per segment."""

    ids: np.ndarray
    pred_class: np.ndarray
    bbox: np.ndarray
    metrics: np.ndarray
    iou: np.ndarray
    gt_class: np.ndarray

    def __len__(self) -> int:
        return len(self.pred_class)


def components(classes: np.ndarray):
    """Connected components (8-connectivity) of the pixels of equal value of an int map, pixels < 0 left out:
    ``(labels, n)``, labels 1..n numbered in raster order of each component's first pixel (0 for pixels < 0).
    One union-find pass over the whole map (scikit-image), whatever the number of classes."""
    from skimage.measure import label

    labels, n = label(np.asarray(classes, dtype=np.int32), background=-1, connectivity=2, return_num=True)
    return labels, int(n)


def label_segments(pred: np.ndarray):
    """Connected components (8-connectivity) of each predicted class: ``(ids, seg_class)`` with ids 1..n
    numbered class by class, in raster order within a class (int32 [H, W]), and the class of each segment
    (int64 [n])."""
    pred = np.asarray(pred)
    labels, n = components(pred)
    seg_class = np.zeros(n + 1, np.int64)
    seg_class[labels.reshape(-1)] = pred.reshape(-1)  # every pixel of a component has its class
    order = np.argsort(seg_class[1:], kind="stable")
    renumber = np.zeros(n + 1, np.int32)
    renumber[order + 1] = np.arange(1, n + 1, dtype=np.int32)
    return renumber[labels], seg_class[1:][order]


def boundary(pred: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels with an 8-neighbour inside the image of another class."""
    small = pred.astype(np.uint8 if pred.max(initial=0) < 256 else np.int32)
    return ndimage.maximum_filter(small, 3, mode="nearest") != ndimage.minimum_filter(small, 3, mode="nearest")


_GRID: Dict[tuple, tuple] = {}


def _grid(shape):
    if shape not in _GRID:
        _GRID.clear()
        yy, xx = np.indices(shape, dtype=np.float64)
        _GRID[shape] = yy.reshape(-1), xx.reshape(-1)
    return _GRID[shape]


def _pairs(a: np.ndarray, b: np.ndarray, nb: int):
    """The distinct (a, b) pairs of two aligned non-negative int arrays (b < nb)."""
    code = a.astype(np.int64) * nb + b
    size = (int(a.max(initial=0)) + 1) * nb
    uniq = np.flatnonzero(np.bincount(code, minlength=size)) if size <= max(1 << 22, 4 * len(code)) \
        else np.unique(code)
    return uniq // nb, uniq % nb


def _bbox(ids: np.ndarray, edge: np.ndarray, n: int) -> np.ndarray:
    """(y0, x0, y1, x1) of each segment, from its ``edge`` pixels (boundary or image border: every extreme
    pixel of a segment is one of them)."""
    ys, xs = np.nonzero(edge)
    k = ids[ys, xs] - 1
    box = np.empty((n, 4), np.int64)
    box[:, :2] = np.iinfo(np.int64).max
    box[:, 2:] = -1
    np.minimum.at(box[:, 0], k, ys)
    np.minimum.at(box[:, 1], k, xs)
    np.maximum.at(box[:, 2], k, ys + 1)
    np.maximum.at(box[:, 3], k, xs + 1)
    return box


def _class_sums(probs: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """[C, n] sums of each class probability over each segment (torch's threaded index_add, float32)."""
    import torch

    flat = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32).reshape(len(probs), -1))
    out = torch.zeros(len(probs), n, dtype=torch.float32)
    return out.index_add_(1, torch.from_numpy(idx.astype(np.int64, copy=False)), flat).double().numpy()


def adjusted_iou(ids: np.ndarray, seg_class: np.ndarray, pred: np.ndarray, gt: np.ndarray,
                 valid: np.ndarray) -> np.ndarray:
    """MetaSeg's IoU_adj of every segment (see the module docstring); NaN for a segment with no valid pixel."""
    n = len(seg_class)
    k = ids.reshape(-1) - 1
    gt_f, pred_f, valid_f = gt.reshape(-1), pred.reshape(-1), valid.reshape(-1)
    inter = np.bincount(k[(gt_f == pred_f) & valid_f], minlength=n).astype(np.float64)
    union = np.bincount(k[valid_f], minlength=n).astype(np.float64)
    if n:
        both = np.where(valid & (gt >= 0) & (gt <= seg_class.max()), gt, -1)  # gt of the predicted classes
        glab, ng = components(both)
        in_gt = glab > 0
        missed = np.bincount(glab[in_gt & (pred != both)], minlength=ng + 1).astype(np.float64)
        hit = in_gt & (pred == both)
        pk, pg = _pairs(ids[hit] - 1, glab[hit], ng + 1)
        union += np.bincount(pk, weights=missed[pg], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def majority_class(ids: np.ndarray, n: int, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The valid ground-truth id with most pixels in each segment (the smallest on ties; -1 if none)."""
    k = ids.reshape(-1)[valid.reshape(-1)] - 1
    g = gt.reshape(-1)[valid.reshape(-1)].astype(np.int64)
    out = np.full(n, -1, np.int64)
    if not len(g):
        return out
    if g.min() < 0:
        values, code = np.unique(g, return_inverse=True)
    else:
        present = np.bincount(g)
        values = np.flatnonzero(present)
        lut = np.zeros(len(present), np.int64)
        lut[values] = np.arange(len(values))
        code = lut[g]
    counts = np.bincount(k * len(values) + code, minlength=n * len(values)).reshape(n, len(values))
    has = counts.sum(1) > 0
    out[has] = values[counts[has].argmax(1)]
    return out


def segment_metrics(probs: np.ndarray, *, pred: Optional[np.ndarray] = None,
                    maps: Optional[Mapping[str, np.ndarray]] = None, scores: Mapping[str, np.ndarray] = {},
                    gt: Optional[np.ndarray] = None, ignore_ids: Sequence[int] = DEFAULT_IGNORE) -> ImageSegments:
    """The segments of one image and their metrics (columns :func:`metric_columns`\\ (C, scores)).

    ``probs`` float [C, H, W] softmax; ``pred`` its argmax (given when the caller has it); ``maps`` E, D, V
    (:func:`pixel_maps`, computed when not given); ``scores`` pixel OOD maps to average per segment; ``gt``
    ground-truth ids [H, W] for the IoU and ``gt_class`` (ids in ``ignore_ids`` are left out).
    """
    num, h, w = probs.shape
    if pred is None:
        pred = probs.argmax(0)
    pred = np.asarray(pred)
    if maps is None:
        maps = pixel_maps(np.ascontiguousarray(probs, dtype=np.float32))
    ids, seg_class = label_segments(pred)
    n = len(seg_class)
    bd = boundary(pred)
    idx = ids.reshape(-1) - 1
    key = idx.astype(np.int64) * 2 + bd.reshape(-1)

    def split(weights=None):
        return np.bincount(key, weights=weights, minlength=2 * n).reshape(n, 2)

    def per_segment(weights):
        return np.bincount(idx, weights=weights, minlength=n)

    sizes = split().astype(np.float64)
    s_in, s_bd = sizes[:, 0], sizes[:, 1]
    s_all = s_in + s_bd
    bd_safe = np.maximum(s_bd, 1)
    s_rel, s_rel_in = s_all / bd_safe, s_in / bd_safe
    cols = [s_all, s_in, s_bd, s_rel, s_rel_in]

    def mean(total, count):
        return total / np.maximum(count, 1)

    for name in MAPS:
        m = np.asarray(maps[name], dtype=np.float64).reshape(-1)
        first, second = split(m), split(m * m)
        mu = mean(first.sum(1), s_all), mean(first[:, 0], s_in), mean(first[:, 1], s_bd)
        var = [np.maximum(mean(q, c) - a * a, 0) * (c > 0)
               for q, c, a in ((second.sum(1), s_all, mu[0]), (second[:, 0], s_in, mu[1]),
                               (second[:, 1], s_bd, mu[2]))]
        cols += [*mu, mu[0] * s_rel, mu[1] * s_rel_in, *var, var[0] * s_rel, var[1] * s_rel_in]
    cols += list(_class_sums(probs, idx, n) / s_all)
    yy, xx = _grid((h, w))
    cols += [per_segment(yy) / s_all, per_segment(xx) / s_all]
    cols += [per_segment(np.asarray(s, dtype=np.float64).reshape(-1)) / s_all for s in scores.values()]
    edge = bd.copy()
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    box = _bbox(ids, edge, n)
    if gt is None:
        iou, gt_class = np.full(n, np.nan), np.full(n, -1)
    else:
        gt = np.asarray(gt)
        valid = ~np.isin(gt, list(ignore_ids)) if len(ignore_ids) else np.ones(gt.shape, bool)
        iou = adjusted_iou(ids, seg_class, pred, gt, valid)
        gt_class = majority_class(ids, n, gt, valid)
    return ImageSegments(ids=ids, pred_class=seg_class.astype(np.int32), bbox=box.astype(np.int32),
                         metrics=np.stack(cols, 1).astype(np.float32) if n else np.zeros((0, len(cols)), np.float32),
                         iou=iou.astype(np.float32), gt_class=gt_class.astype(np.int32))
