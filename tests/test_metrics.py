"""Each metric against sklearn and against a plain re-statement of its reference definition."""
import numpy as np
import pytest
from sklearn import metrics as skm

from ood import metrics


def cases():
    rng = np.random.default_rng(1)
    yield rng.normal(1, 1, 500), rng.normal(0, 1, 300)  # continuous
    yield rng.integers(0, 8, 400).astype(float), rng.integers(0, 6, 250).astype(float)  # heavy ties
    yield rng.normal(0, 1, 37), rng.normal(0, 1, 1000)  # unbalanced, small ID set
    yield np.arange(100.0), np.arange(100.0) + 200  # OOD all above ID


def vim_reference(ind, ood, tpr=0.95):
    # ViM / GEN benchmark.py: the floor(tpr * N)-th largest ID score is the threshold
    recall_num = int(np.floor(tpr * len(ind)))
    thresh = np.sort(ind)[-recall_num]
    return np.sum(ood >= thresh) / len(ood)


def oe_reference(ind, ood, recall_level=0.95):
    # Outlier Exposure / MOS fpr_and_fdr_at_recall with ID as the positive class
    y_true = np.r_[np.ones(len(ind)), np.zeros(len(ood))]
    y_score = np.r_[ind, ood]
    desc = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[desc], y_true[desc]
    distinct = np.where(np.diff(y_score))[0]
    thr = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true)[thr]
    fps = 1 + thr - tps
    recall = tps / tps[-1]
    last_ind = tps.searchsorted(tps[-1])
    sl = slice(last_ind, None, -1)
    recall, fps = np.r_[recall[sl], 1], np.r_[fps[sl], 0]
    cutoff = np.argmin(np.abs(recall - recall_level))
    return fps[cutoff] / np.sum(np.logical_not(y_true))


def openood_reference(ind, ood, tpr_th=0.95):
    # OpenOOD v1.5: OOD positive, sklearn's roc_curve on negated confidences
    label = np.r_[np.zeros(len(ind)), -np.ones(len(ood))]
    conf = np.r_[ind, ood]
    fpr_list, tpr_list, _ = skm.roc_curve((label == -1).astype(int), -conf)
    return fpr_list[np.argmax(tpr_list >= tpr_th)]


@pytest.mark.parametrize("case", list(cases()))
def test_areas_equal_sklearn(case):
    ind, ood = case
    y = np.r_[np.ones(len(ind)), np.zeros(len(ood))]
    s = np.r_[ind, ood]
    got = metrics.evaluate(ind, ood)
    fpr, tpr, _ = skm.roc_curve(y, s)
    p_in, r_in, _ = skm.precision_recall_curve(y, s)
    p_out, r_out, _ = skm.precision_recall_curve(1 - y, 1 - s)
    assert got["auroc"] == pytest.approx(skm.auc(fpr, tpr), abs=1e-12)
    assert got["auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(skm.auc(r_in, p_in), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(skm.auc(r_out, p_out), abs=1e-12)


@pytest.mark.parametrize("case", list(cases()))
def test_fpr_conventions_equal_their_references(case):
    ind, ood = case
    assert metrics.evaluate(ind, ood, fpr="vim")["fpr95"] == pytest.approx(vim_reference(ind, ood), abs=1e-15)
    assert metrics.evaluate(ind, ood, fpr="oe")["fpr95"] == pytest.approx(oe_reference(ind, ood), abs=1e-15)
    assert metrics.evaluate(ind, ood, fpr="openood")["fpr95"] == pytest.approx(openood_reference(ind, ood),
                                                                             abs=1e-15)


def test_openood_keeps_sklearn_dropping_of_collinear_points():
    # equal steps in both counts make sklearn drop intermediate ROC points; the convention must follow
    ind = np.repeat(np.arange(20.0), 1)
    ood = np.arange(20.0) - 0.5
    assert metrics.fpr_at_tpr(ind, ood, "openood") == pytest.approx(openood_reference(ind, ood))


def test_perfect_and_reversed_separation():
    ind, ood = np.linspace(1, 2, 50), np.linspace(-2, -1, 40)
    r = metrics.evaluate(ind, ood)
    assert r["auroc"] == 1.0 and r["fpr95"] == 0.0 and r["aupr_in"] == 1.0 and r["aupr_out"] == 1.0
    assert metrics.evaluate(ood, ind)["auroc"] == 0.0


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="empty"):
        metrics.evaluate(np.ones(3), np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.evaluate(np.array([1.0, np.nan]), np.ones(3))
    with pytest.raises(ValueError, match="convention"):
        metrics.evaluate(np.ones(3), np.ones(3), fpr="nope")


def pytorch_ood_reference(ind, ood, tpr=0.95):
    # pytorch-ood fpr_at_tpr: OOD positive, outlier score = -score, every distinct threshold of torchmetrics'
    # binary_roc kept; the first (highest) threshold whose OOD TPR reaches tpr
    out_id, out_ood = -np.asarray(ind), -np.asarray(ood)
    for t in sorted(set(np.r_[out_id, out_ood]), reverse=True):
        if np.mean(out_ood >= t) >= tpr:
            return np.mean(out_id >= t)


def openood_slow(ind, ood, tpr=0.95):
    # sklearn's roc_curve restated: counts at each distinct threshold, high outlier score first; a point is
    # dropped when the steps before and after it are equal in both counts; (0, 0) prepended
    out_id, out_ood = -np.asarray(ind), -np.asarray(ood)
    thresholds = sorted(set(np.r_[out_id, out_ood]), reverse=True)
    pts = [(np.sum(out_id >= t), np.sum(out_ood >= t)) for t in thresholds]
    kept = [p for i, p in enumerate(pts) if i in (0, len(pts) - 1) or
            (p[0] - pts[i - 1][0], p[1] - pts[i - 1][1]) != (pts[i + 1][0] - p[0], pts[i + 1][1] - p[1])]
    for fp, tp in [(0, 0)] + kept:
        if tp / len(ood) >= tpr:
            return fp / len(ind)


def tied_cases():
    yield np.arange(20.0), np.arange(20.0)  # every threshold one ID and one OOD: all collinear, equal steps
    yield np.repeat(np.arange(40.0), 2), np.r_[np.arange(40.0), -1 - np.arange(5.0)]  # ties of 2 ID + 1 OOD
    rng = np.random.default_rng(4)
    yield rng.integers(2, 9, 300).astype(float), rng.integers(0, 5, 200).astype(float)


@pytest.mark.parametrize("case", list(tied_cases()) + list(cases()))
def test_fpr_conventions_on_tied_scores_equal_slow_restatements(case):
    ind, ood = case
    assert metrics.fpr_at_tpr(ind, ood, "pytorch_ood") == pytest.approx(pytorch_ood_reference(ind, ood), abs=1e-15)
    assert metrics.fpr_at_tpr(ind, ood, "openood") == pytest.approx(openood_slow(ind, ood), abs=1e-15)
    assert openood_slow(ind, ood) == pytest.approx(openood_reference(ind, ood), abs=1e-15)
    assert metrics.fpr_at_tpr(ind, ood, "vim") == pytest.approx(vim_reference(ind, ood), abs=1e-15)
    assert metrics.fpr_at_tpr(ind, ood, "oe") == pytest.approx(oe_reference(ind, ood), abs=1e-15)
    assert metrics.evaluate(ind, ood, fpr="pytorch_ood")["fpr95"] == metrics.fpr_at_tpr(ind, ood, "pytorch_ood")


def test_pytorch_ood_and_openood_differ_on_a_collinear_stretch():
    # 20 tied ID-OOD pairs: the full curve crosses 95 % OOD TPR at the 19th pair (FPR 0.95); sklearn keeps only
    # the first pair's point and the end of the run, so OpenOOD reads FPR 1
    ind = ood = np.arange(20.0)
    assert metrics.fpr_at_tpr(ind, ood, "pytorch_ood") == 0.95
    assert metrics.fpr_at_tpr(ind, ood, "openood") == 1.0
    assert "pytorch-ood" in metrics.FPR_LABELS["pytorch_ood"]


@pytest.mark.parametrize("case", list(tied_cases()) + list(cases()))
def test_pytorch_ood_convention_equals_pytorch_oods_code(case):
    pom = pytest.importorskip("pytorch_ood.metrics.functional")  # pytorch-ood >= 0.4
    import torch
    ind, ood = case
    outlier = torch.tensor(-np.r_[ind, ood], dtype=torch.float64)
    labels = torch.tensor(np.r_[np.zeros(len(ind)), -np.ones(len(ood))], dtype=torch.long)  # OOD: label < 0
    assert float(pom.fpr_at_tpr(outlier, labels)) == pytest.approx(metrics.fpr_at_tpr(ind, ood, "pytorch_ood"),
                                                                   abs=1e-15)
