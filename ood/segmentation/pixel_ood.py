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
F1(t) = 2TP / (2TP + FN + FP) for t = 0.25, 0.30, ..., 0.75, and their mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import label as connected

from ..metrics import FPR_LABELS, evaluate
from ..errors import InputError

IGNORE = 255
FPR_CONVENTION = "openood"
FPR_LABEL = FPR_LABELS[FPR_CONVENTION]
SIOU_THRESHOLDS = np.linspace(0.25, 0.75, 11)
EIGHT = np.ones((3, 3), dtype=bool)


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
        g, p = np.asarray(self.siou_gt, np.float64), np.asarray(self.ppv, np.float64)
        out = {"siou": float(g.mean()) if g.size else float("nan"),
               "ppv": float(p.mean()) if p.size else float("nan"),
               "gt_instances": int(g.size), "pred_components": int(p.size)}
        f1 = []
        for t in thresholds:
            tp, fn, fp = np.count_nonzero(g >= t), np.count_nonzero(g < t), np.count_nonzero(p < t)
            f1.append(2 * tp / (2 * tp + fn + fp) if tp + fn + fp else float("nan"))
            out[f"f1_{int(round(100 * t))}"] = f1[-1]
        out["f1_mean"] = float(np.mean(f1))
        return out


def frame_components(pred_ood: np.ndarray, labels: np.ndarray, min_pred_size: int = 500,
                     min_gt_size: int = 100) -> ComponentStats:
    """Component figures of one frame from a boolean OOD prediction [H, W] and labels 0/1/255 [H, W]."""
    labels = labels.copy()
    gt_inst, n_gt = connected(labels == 1, EIGHT)
    comp, n_pred = connected(pred_ood & (labels != IGNORE), EIGHT)
    comp_size = np.bincount(comp.reshape(-1), minlength=n_pred + 1)
    comp[(comp_size < min_pred_size)[comp]] = 0
    gt_size = np.bincount(gt_inst.reshape(-1), minlength=n_gt + 1)
    small = gt_size < min_gt_size
    small[0] = False
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
