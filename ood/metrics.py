"""OOD metrics from one sort of the scores: AUROC, AUPR-In, AUPR-Out and FPR at 95 % TPR.

Scores are "higher = more in-distribution"; ID is the positive class unless said otherwise.
- AUROC: trapezoid area under sklearn's ROC curve (ties get half credit).
- AUPR-In / AUPR-Out: trapezoid area under sklearn's precision-recall curve, ID positive / OOD positive with
  negated scores (as ViM: ``metrics.auc(recall, precision)``, not average precision).
- FPR95, four conventions, always named where printed:
  ``vim``: t = the floor(0.95 N_id)-th largest ID score, FPR = share of OOD scores >= t (ViM, GEN).
  ``oe``: among distinct thresholds, the one whose ID recall is closest to 0.95 (Outlier Exposure, MOS).
  ``openood``: OOD positive, FPR of ID at the first point of sklearn's ROC curve (drop_intermediate=True)
  whose OOD TPR reaches 0.95 (OpenOOD v1.5).
  ``pytorch_ood``: the same on the full ROC curve, every distinct threshold kept (pytorch-ood's
  ``fpr_at_tpr``: ``pytorch_ood.metrics`` from 0.4, torchmetrics' ``binary_roc`` before). sklearn drops a point
  where the curve goes on in an equal step (the thresholds on either side add the same numbers of ID and OOD
  scores, as runs of tied ID-OOD pairs do); when the 0.95 crossing falls on such a collinear stretch, OpenOOD's
  first kept point lies further along it and its FPR is the higher. Before 0.4, torchmetrics passed scores
  outside [0, 1] through a float32 sigmoid, which rounds large outlier scores together (every one above about
  17 becomes 1.0); 0.4 takes them as given, as here.
"""
from __future__ import annotations

import numpy as np
from .errors import InputError

FPR_CONVENTIONS = ("vim", "oe", "openood", "pytorch_ood")
FPR_LABELS = {
    "vim": "FPR@95%TPR (ViM: ID-score threshold at the 95% recall rank)",
    "oe": "FPR@95%TPR (OE/MOS: threshold with ID recall closest to 95%)",
    "openood": "FPR@95%TPR (OpenOOD: OOD positive, first ROC point with TPR>=95%)",
    "pytorch_ood": "FPR@95%TPR (pytorch-ood: OOD positive, first point of the full ROC curve with TPR>=95%)",
}


def _check(name, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise InputError(f"{name} scores are empty")
    if not np.isfinite(x).all():
        raise InputError(f"{name} scores contain {int((~np.isfinite(x)).sum())} NaN/Inf values")
    return x


class _Sorted:
    """Scores of ID (positive) and OOD sorted once, with counts at each distinct threshold, high to low."""

    def __init__(self, id_scores, ood_scores):
        self.n_id, self.n_ood = len(id_scores), len(ood_scores)
        s = np.concatenate([id_scores, ood_scores])
        y = np.concatenate([np.ones(self.n_id, bool), np.zeros(self.n_ood, bool)])
        order = np.argsort(s, kind="mergesort")[::-1]
        self.s, self.y = s[order], y[order]
        last = np.r_[np.flatnonzero(np.diff(self.s)), self.s.size - 1]
        self.tps = np.cumsum(self.y)[last].astype(np.float64)  # ID at or above each threshold
        self.fps = (last + 1) - self.tps  # OOD at or above each threshold


def _trapezoid(x, y) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _pr_area(tps: np.ndarray, fps: np.ndarray) -> float:
    """Area under the precision-recall curve (sklearn's points, sklearn's auc)."""
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return _trapezoid(np.r_[0.0, recall], np.r_[1.0, precision])


def auroc(id_scores, ood_scores) -> float:
    return _auroc(_Sorted(_check("ID", id_scores), _check("OOD", ood_scores)))


def _auroc(c: _Sorted) -> float:
    return _trapezoid(np.r_[0.0, c.fps / c.n_ood], np.r_[0.0, c.tps / c.n_id])


def _aupr_out(c: _Sorted) -> float:
    # OOD positive with negated scores: thresholds run from the lowest score up.
    tps_out = c.n_ood - np.r_[c.fps[::-1][1:], 0.0]
    fps_out = c.n_id - np.r_[c.tps[::-1][1:], 0.0]
    return _pr_area(tps_out, fps_out)


def fpr_at_tpr(id_scores, ood_scores, convention: str = "vim", tpr: float = 0.95) -> float:
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    if convention == "vim":
        k = int(np.floor(tpr * id_scores.size))
        thresh = np.partition(id_scores, -k)[-k] if k > 0 else np.min(id_scores)
        return float(np.count_nonzero(ood_scores >= thresh) / ood_scores.size)
    return _fpr_sorted(_Sorted(id_scores, ood_scores), convention, tpr)


def _fpr_sorted(c: _Sorted, convention: str, tpr: float) -> float:
    if convention == "oe":
        recall = c.tps / c.tps[-1]
        last = int(np.searchsorted(c.tps, c.tps[-1]))
        recall = np.r_[recall[last::-1], 1.0]
        fps = np.r_[c.fps[last::-1], 0.0]
        return float(fps[np.argmin(np.abs(recall - tpr))] / c.n_ood)
    if convention in ("openood", "pytorch_ood"):
        tps = c.n_ood - np.r_[c.fps[::-1][1:], 0.0]  # OOD caught, thresholds from the lowest ID-score up
        fps = c.n_id - np.r_[c.tps[::-1][1:], 0.0]
        if convention == "openood" and tps.size > 2:  # sklearn's drop_intermediate
            keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
            tps, fps = tps[keep], fps[keep]
        tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
        return float((fps / fps[-1])[np.argmax(tps / tps[-1] >= tpr)])
    raise InputError(f"unknown FPR convention {convention!r}; choose from {', '.join(FPR_CONVENTIONS)}")


def evaluate(id_scores, ood_scores, fpr: str = "vim", tpr: float = 0.95) -> dict:
    """All four metrics as fractions: ``auroc``, ``fpr95``, ``aupr_in``, ``aupr_out``."""
    if fpr not in FPR_CONVENTIONS:
        raise InputError(f"unknown FPR convention {fpr!r}; choose from {', '.join(FPR_CONVENTIONS)}")
    id_scores, ood_scores = _check("ID", id_scores), _check("OOD", ood_scores)
    c = _Sorted(id_scores, ood_scores)
    return {
        "auroc": _auroc(c),
        "fpr95": fpr_at_tpr(id_scores, ood_scores, "vim", tpr) if fpr == "vim" else _fpr_sorted(c, fpr, tpr),
        "aupr_in": _pr_area(c.tps, c.fps),
        "aupr_out": _aupr_out(c),
    }
