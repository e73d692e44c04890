"""Pixel-level OOD detection metrics of SegmentMeIfYouCan (Chan et al., NeurIPS 2021 Datasets and Benchmarks).

Ground truth is binary per pixel: 1 = OOD (anomaly / obstacle), 0 = in-distribution, 255 = ignore; scores are
"higher = more in-distribution", so a pixel is predicted OOD when its score is at or below a threshold.

Pixel level (OOD positive): AUROC, AUPRC as average precision (sklearn's sum of recall steps times precision),
FPR at 95 % TPR (OpenOOD's convention: the ID share flagged at the first threshold catching 95 % of OOD pixels),
and the best F1 over thresholds with its threshold. ``exact`` mode sorts all pixels (AUROC and FPR95 come from
:func:`ood.metrics.evaluate`); :class:`PixelHistogram` streams pixels into fixed bins and evaluates the curve at
the bin edges, so it needs memory for the bins only and agrees with exact mode to within a bin.

Component level: 8-connected components of the pixels predicted OOD (outside the ignore region), components
smaller than ``min_pred_size`` dropped; gt instances (8-connected OOD regions) smaller than ``min_gt_size`` join
the ignore region. sIoU of a gt instance = |instance ∩ its predicted components| / |instance ∪ those components
minus their pixels on other gt instances| (the correction); PPV of a predicted component = its share on gt
instances. Counting gt instances with sIoU >= t as TP, those below as FN and components with PPV < t as FP,
F1(t) = 2TP / (2TP + FN + FP) for t = 0.25, 0.30, ..., 0.75, and their mean; the sIoU of a predicted component
(the benchmark's ``sIoU_pred``) is the same ratio seen from the component. TP, FN and FP are reported at 0.25,
0.50, 0.75 and as their means over the eleven thresholds, as the benchmark's tables do.

The public leaderboard is not computed with the exact curve but with the benchmark's binned one
(:class:`SmiycCurve`, ``--curve smiyc``), whose AP differs from the exact AP by about a point, and whose
best-F1 threshold, and so every component figure, differs too; :class:`SmiycCurve` and ``frame_components(...,
smiyc=True)`` reproduce that computation step for step, so its numbers can stand next to the leaderboard's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..metrics import FPR_LABELS, evaluate
from ..errors import InputError

IGNORE = 255
FPR_CONVENTION = "openood"
FPR_LABEL = FPR_LABELS[FPR_CONVENTION]
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11)
REPORTED_SIOU = (0.25, 0.50, 0.75)  # the thresholds whose TP/FN/FP the benchmark's tables show
EIGHT = np.ones((3, 3), dtype=bool)
SMIYC_BINS = 768  # the benchmark's PixBinaryClass: at most 384 percentile edges per class and frame
SMIYC_FPR_LABEL = "FPR@95%TPR (SegmentMeIfYouCan: first binned threshold with TPR>=95%)"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def ood_labels(gt: np.ndarray, ood_ids: Optional[Sequence[int]] = None, ignore_ids: Sequence[int] = (),
               source: str = "ground truth") -> np.ndarray:
    """uint8 labels 1 = OOD, 0 = ID, 255 = ignore; without ``ood_ids`` ``gt`` must already be 0/1/255."""
    gt = np.asarray(gt)
    if ood_ids is None:
        bad = gt[(gt != 0) & (gt != 1) & (gt != IGNORE)]
        if bad.size:
            raise InputError(f"{source}: value {int(bad[0])} in a binary OOD mask (0 ID, 1 OOD, 255 ignore); "
                             "pass --ood_ids (and --ignore_ids) for class-id masks")
        out = gt.astype(np.uint8)
    else:
        out = np.isin(gt, list(ood_ids)).astype(np.uint8)
    if len(ignore_ids):
        out[np.isin(gt, list(ignore_ids))] = IGNORE
    return out


def _curve_metrics(tp: np.ndarray, fp: np.ndarray, thresholds: np.ndarray) -> dict:
    """AUROC, AP, FPR95 and best F1 from cumulative OOD (tp) and ID (fp) counts at rising score thresholds."""
    pos, neg = tp[-1], fp[-1]
    if pos == 0 or neg == 0:
        raise InputError(f"pixel metrics need both OOD and ID pixels, got {int(pos)} OOD and {int(neg)} ID")
    tpr, fpr = np.r_[0.0, tp / pos], np.r_[0.0, fp / neg]
    n_pred = tp + fp
    precision = np.divide(tp, n_pred, out=np.ones_like(tp, dtype=np.float64), where=n_pred > 0)
    f1 = 2 * tp / (2 * tp + fp + (pos - tp))
    best = int(np.argmax(f1))
    return {"auroc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
            "ap": float(np.sum(np.diff(tpr) * precision)),
            "fpr95": float(fpr[1:][np.argmax(tpr[1:] >= 0.95)]),
            "best_f1": float(f1[best]), "threshold": float(thresholds[best]),
            "ood_pixels": int(pos), "id_pixels": int(neg)}


def pixel_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Exact pixel metrics over every pixel; ``labels`` 0/1/255 (255 dropped)."""
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    keep = labels != IGNORE
    s, y = scores[keep].astype(np.float64), labels[keep] == 1
    if not np.isfinite(s).all():
        raise InputError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/Inf values")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = np.cumsum(y)[last].astype(np.float64)
    out = _curve_metrics(tp, (last + 1) - tp, s[last])
    ref = evaluate(s[~y], s[y], fpr=FPR_CONVENTION)
    out.update(auroc=ref["auroc"], fpr95=ref["fpr95"])
    return out


class PixelHistogram:
    """Counts of ID and OOD pixels in ``bins`` equal bins over [lo, hi], right-closed, for streaming.

    A pixel in bin k is at or below edge k+1, so the curve at the edges is exact; only pixels sharing a bin
    are merged. A score outside [lo, hi] is an error: dropping or clipping it would bias every figure.
    """

    def __init__(self, bins: int, lo: float, hi: float):
        if not (bins >= 2 and np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise InputError(f"histogram needs at least 2 bins and a finite range lo < hi, got {bins}, [{lo}, {hi}]")
        self.bins, self.lo, self.hi = int(bins), float(lo), float(hi)
        self.edges = np.linspace(self.lo, self.hi, self.bins + 1)
        self.counts = np.zeros((2, self.bins), np.int64)

    def add(self, scores: np.ndarray, labels: np.ndarray, source: str = "scores"):
        scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
        keep = labels != IGNORE
        s, y = scores[keep], labels[keep].astype(np.int64)
        if s.size == 0:
            return
        lo, hi = float(s.min()), float(s.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"{source}: NaN/Inf scores")
        if lo < self.lo or hi > self.hi:
            raise InputError(f"{source}: score {lo if lo < self.lo else hi:g} is outside the histogram range "
                             f"[{self.lo:g}, {self.hi:g}]; widen --range")
        s = s.astype(np.float64)
        k = np.clip(np.ceil((s - self.lo) * (self.bins / (self.hi - self.lo))).astype(np.int64) - 1, 0, self.bins - 1)
        k -= (k > 0) & (s <= self.edges[k])  # exact right-closed bins despite rounding in the division
        k += (k < self.bins - 1) & (s > self.edges[k + 1])
        self.counts += np.bincount(k + self.bins * y, minlength=2 * self.bins).reshape(2, self.bins)

    def metrics(self) -> dict:
        nonempty = self.counts.sum(0) > 0
        tp = np.cumsum(self.counts[1])[nonempty].astype(np.float64)
        fp = np.cumsum(self.counts[0])[nonempty].astype(np.float64)
        return {**_curve_metrics(tp, fp, self.edges[1:][nonempty]), "bins": self.bins, "range": [self.lo, self.hi]}


def _quantiles_float16(values: np.ndarray, k: int) -> np.ndarray:
    """numpy 1.x's ``np.quantile(values, np.linspace(0, 1, k))`` (method "linear") of a float16 array: order
    statistics a, b around the virtual index (n - 1) q with weight g, ``b - a`` rounded to float16, then
    ``a + (b - a) g`` in float64, or ``b - (b - a)(1 - g)`` where g >= 0.5. The order statistics come from a
    float64 sort: numpy 2's float16 sort and partition (SIMD) can leave a float16 array out of order."""
    s = np.sort(values.astype(np.float64)).astype(np.float16)
    n = s.size
    virtual = (n - 1) * np.linspace(0, 1, k)
    floor = np.floor(virtual)
    top = virtual >= n - 1
    a = s[np.where(top, n - 1, floor).astype(np.intp)]
    b = s[np.where(top, n - 1, floor + 1).astype(np.intp)]
    gamma = virtual - np.where(top, -1, floor)
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def smiyc_edges(anomaly: np.ndarray, positive: np.ndarray, bins: int = SMIYC_BINS) -> np.ndarray:
    """The benchmark's bin edges of one frame: its ``percentiles`` strategy, from float16 anomaly scores
    (higher = more anomalous) of the pixels in the region of interest and their OOD flags.

    Edges: ``vmin - eps`` and ``vmax + eps`` with ``eps = max(0.01 (vmax - vmin), 0.01)``, plus ``min(bins // 2,
    n)`` evenly spaced quantiles (numpy's default linear method) of the OOD pixels and as many of the ID pixels,
    sorted and deduplicated. Rounding, as numpy 1.x does it there (the benchmark pins numpy 1.23.3):
    ``vmax - vmin`` is taken in float16 (inf when it overflows), ``eps`` and the two outer edges in float64, each
    quantile in float64 from float16 order statistics whose difference is rounded to float16
    (:func:`_quantiles_float16`). Under numpy 2 the benchmark would round ``eps`` and the outer edges to float16;
    they hold no pixel, so no figure depends on them.

    >>> smiyc_edges(np.array([0, 1, 2, 3], np.float16), np.array([False, False, True, True]), bins=4).tolist()
    [-0.03, 0.0, 1.0, 2.0, 3.0, 3.03]
    """
    anomaly = np.asarray(anomaly, dtype=np.float16)
    wide = anomaly.astype(np.float64)
    vmin, vmax = np.float16(wide.min()), np.float16(wide.max())
    with np.errstate(over="ignore"):
        vrange = float(vmax - vmin)  # float16 arithmetic
    eps = max(vrange * 1e-2, 1e-2)
    parts = [np.array([float(vmin) - eps, float(vmax) + eps])]
    for values in (anomaly[positive], anomaly[~positive]):
        if values.size:
            parts.append(_quantiles_float16(values, min(bins // 2, values.size)))
    return np.unique(np.concatenate(parts))


class SmiycCurve:
    """SegmentMeIfYouCan's binned pixel curve (the benchmark's ``PixBinaryClass`` metric), step for step.

    Each frame is binned on its own edges (:func:`smiyc_edges`), a pixel counted at an edge when its anomaly
    score is at or above it; the frames' edges (all but the top one) are then merged in descending order (numpy's
    default ``argsort``, reversed) and the counts summed cumulatively, and only the last position of each
    repeated edge is kept, plus the first position (the benchmark keeps index 0 even inside a run of equal
    edges). The curve gets (0, 0) in front and (all, all) at the end where missing; AUROC is the trapezoidal
    area of TPR over FPR, AP = sum(diff(recall) * precision[1:]) with precision 1 where nothing is predicted,
    FPR95 the FPR at the first point with TPR >= 0.95 (1.0 if none), and the best F1 the first maximum of
    2TP / (2TP + FP + FN), its edge being the threshold. Counts are float64; the edges are float64 values
    computed from the float16 scores (see :func:`smiyc_edges`).

    Scores here are "higher = more in-distribution", so the benchmark's ``anomaly_p`` is ``-score``, cast to
    float16 as the benchmark stores it (the segmentation store holds float16 already, and negation is exact).
    ``threshold`` in :meth:`metrics` is in score units (OOD when score <= threshold), ``smiyc_threshold`` the
    benchmark's ``best_f1_threshold`` on ``anomaly_p``. Where the benchmark itself is not deterministic: it
    collects frames in whatever order its worker pool returns them, and the tie order of an unstable sort then
    decides the one kept first point when two frames share the top edge; frames here go in file order.

    >>> c = SmiycCurve()
    >>> c.add(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1]))
    >>> m = c.metrics()
    >>> m["auroc"], m["ap"], m["best_f1"]
    (1.0, 1.0, 1.0)
    """

    def __init__(self, bins: int = SMIYC_BINS):
        if bins < 2:
            raise InputError(f"the SMIYC curve needs at least 2 bins, got {bins}")
        self.bins = int(bins)
        self.edges, self.tp, self.fp = [], [], []
        self.pos = self.neg = 0

    def add(self, scores: np.ndarray, labels: np.ndarray, source: str = "frame"):
        """One frame: scores (higher = ID) and labels 0/1/255, any shape."""
        labels = np.asarray(labels).reshape(-1)
        roi = labels != IGNORE
        anomaly = np.negative(np.asarray(scores, dtype=np.float16).reshape(-1)[roi])
        if anomaly.size == 0:
            raise InputError(f"{source}: no pixel outside the ignore region; the benchmark's binning needs one")
        if not np.isfinite(anomaly).all():
            raise InputError(f"{source}: NaN/Inf scores")
        positive = labels[roi] != 0
        edges = smiyc_edges(anomaly, positive, self.bins)
        values = anomaly.astype(np.float64)  # exact; numpy 2 sorts float16 unreliably (see _quantiles_float16)
        self.edges.append(edges[::-1][1:])
        self.tp.append(np.histogram(values[positive], bins=edges)[0][::-1])
        self.fp.append(np.histogram(values[~positive], bins=edges)[0][::-1])
        self.pos += int(positive.sum())
        self.neg += int(positive.size - positive.sum())

    def metrics(self) -> dict:
        if self.pos == 0 or self.neg == 0:
            raise InputError(f"pixel metrics need both OOD and ID pixels, got {self.pos} OOD and {self.neg} ID")
        thr = np.concatenate(self.edges)
        order = np.argsort(thr)[::-1]
        thr = thr[order]
        tp = np.cumsum(np.concatenate(self.tp)[order].astype(np.float64))
        fp = np.cumsum(np.concatenate(self.fp)[order].astype(np.float64))
        keep = np.concatenate([[0], np.flatnonzero(thr[:-1] != thr[1:]), [thr.size - 1]])
        thr, tp, fp = thr[keep], tp[keep], fp[keep]
        fn, tn = self.pos - tp, self.neg - fp
        if tp[0] != 0 or fp[0] != 0:
            thr, tp, fp = np.r_[thr.max() + 1, thr], np.r_[0.0, tp], np.r_[0.0, fp]
            fn, tn = np.r_[self.pos, fn], np.r_[self.neg, tn]
        if tp[-1] != self.pos or fp[-1] != self.neg:
            thr, tp, fp = np.r_[thr, thr.max() - 1], np.r_[tp, self.pos], np.r_[fp, self.neg]
            fn, tn = np.r_[fn, 0.0], np.r_[tn, 0.0]
        tpr, fpr = tp / (tp + fn), fp / (fp + tn)
        n_pred = tp + fp
        precision = np.ones(tp.size)
        precision[n_pred > 0] = tp[n_pred > 0] / n_pred[n_pred > 0]
        f1 = 2 * tp / (2 * tp + fp + fn)
        i95 = int(np.searchsorted(tpr, 0.95))
        best = int(np.nanargmax(f1))
        return {"auroc": float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0).sum()),
                "ap": float(np.sum(np.diff(tpr) * precision[1:])),
                "fpr95": float(fpr[i95]) if i95 < tpr.size else 1.0,
                "best_f1": float(f1[best]), "threshold": -float(thr[best]), "smiyc_threshold": float(thr[best]),
                "ood_pixels": self.pos, "id_pixels": self.neg, "bins": self.bins}


def smiyc_prediction(scores: np.ndarray, smiyc_threshold: float) -> np.ndarray:
    """The benchmark's component input: ``anomaly_p > thresh_p`` with ``anomaly_p = -score`` in float16.

    numpy 1.x compares a float16 map with a float64 scalar in float16, so the threshold is rounded to the nearest
    float16 first (outside float16's range the comparison is exact); under numpy 2 the benchmark itself would
    compare in float64 and can flag other pixels at the threshold.
    """
    anomaly = np.negative(np.asarray(scores, dtype=np.float16))
    if abs(smiyc_threshold) <= FLOAT16_MAX:
        return anomaly > np.float16(smiyc_threshold)
    return anomaly.astype(np.float64) > smiyc_threshold


# --------------------------------------------------------------------------------------------- components


@dataclass
class ComponentStats:
    """Per-instance figures over frames: sIoU of gt instances, sIoU and PPV of predicted components."""

    siou_gt: list = field(default_factory=list)
    siou_pred: list = field(default_factory=list)
    ppv: list = field(default_factory=list)

    def add(self, other: "ComponentStats"):
        self.siou_gt += other.siou_gt
        self.siou_pred += other.siou_pred
        self.ppv += other.ppv

    def summary(self, thresholds=SIOU_THRESHOLDS) -> dict:
        """Means of sIoU (gt), sIoU of predicted components and PPV; F1 at every threshold and its mean; TP, FN,
        FP at 0.25, 0.50, 0.75 and their means over ``thresholds`` (the benchmark's ``tp_mean``...)."""
        g, p = np.asarray(self.siou_gt, np.float64), np.asarray(self.ppv, np.float64)
        mean = lambda a: float(a.mean()) if a.size else float("nan")  # noqa: E731
        out = {"siou": mean(g), "siou_pred": mean(np.asarray(self.siou_pred, np.float64)), "ppv": mean(p),
               "gt_instances": int(g.size), "pred_components": int(p.size)}
        f1, counts = [], []
        for t in thresholds:
            tp, fn, fp = (int(np.count_nonzero(x)) for x in (g >= t, g < t, p < t))
            f1.append(2 * tp / (2 * tp + fn + fp) if tp + fn + fp else float("nan"))
            counts.append((tp, fn, fp))
            key = int(round(100 * t))
            out[f"f1_{key}"] = f1[-1]
            if any(np.isclose(t, r) for r in REPORTED_SIOU):
                out.update({f"tp_{key}": tp, f"fn_{key}": fn, f"fp_{key}": fp})
        out["f1_mean"] = float(np.mean(f1))
        out.update(zip(("tp_mean", "fn_mean", "fp_mean"), np.mean(counts, axis=0).tolist()))
        return out


def frame_components(pred_ood: np.ndarray, labels: np.ndarray, min_pred_size: int = 500,
                     min_gt_size: int = 100, smiyc: bool = False) -> ComponentStats:
    """Component figures of one frame from a boolean OOD prediction [H, W] and labels 0/1/255 [H, W].

    ``smiyc=True`` keeps one more step of the benchmark: its loop over gt instances that drops those below
    ``min_gt_size`` also visits label 0 (every pixel that is no instance, ignored ones included), so a frame
    with fewer such pixels than ``min_gt_size`` has them all ignored.
    """
    from scipy.ndimage import label as connected

    labels = labels.copy()
    gt_inst, n_gt = connected(labels == 1, EIGHT)
    comp, n_pred = connected(pred_ood & (labels != IGNORE), EIGHT)
    comp_size = np.bincount(comp.reshape(-1), minlength=n_pred + 1)
    comp[(comp_size < min_pred_size)[comp]] = 0
    gt_size = np.bincount(gt_inst.reshape(-1), minlength=n_gt + 1)
    small = gt_size < min_gt_size
    small[0] = smiyc and small[0]
    labels[small[gt_inst]] = IGNORE
    roi = labels != IGNORE
    g, c = gt_inst[roi], comp[roi]
    size_g = np.bincount(g, minlength=n_gt + 1).astype(np.float64)
    size_c = np.bincount(c, minlength=n_pred + 1).astype(np.float64)
    both = (g > 0) & (c > 0)
    pairs, m = np.unique(g[both].astype(np.int64) * (n_pred + 1) + c[both], return_counts=True)
    gi, cj = pairs // (n_pred + 1), pairs % (n_pred + 1)
    inter_g = np.bincount(gi, weights=m, minlength=n_gt + 1)
    inter_c = np.bincount(cj, weights=m, minlength=n_pred + 1)
    # union of a gt instance with its components, less their pixels on other instances: size + their ID pixels
    union_g = size_g + np.bincount(gi, weights=(size_c - inter_c)[cj], minlength=n_gt + 1)
    union_c = size_c + np.bincount(cj, weights=(size_g - inter_g)[gi], minlength=n_pred + 1)
    gs, cs = np.flatnonzero(size_g[1:] > 0) + 1, np.flatnonzero(size_c[1:] > 0) + 1
    return ComponentStats((inter_g[gs] / union_g[gs]).tolist(), (inter_c[cs] / union_c[cs]).tolist(),
                          (inter_c[cs] / size_c[cs]).tolist())
