"""Pixel-level OOD metrics (exact, streaming) and SegmentMeIfYouCan component metrics on synthetic maps."""
import json

import numpy as np
import pytest
from scipy.ndimage import label as cc_label
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from ood.segmentation import pixel_ood as po
from ood.segmentation.evaluate import evaluate_ood, main
from ood.segmentation.store import write_segmentation


def sklearn_reference(scores, labels):
    keep = labels != 255
    s, y = scores[keep].astype(np.float64), labels[keep] == 1
    prec, rec, thr = precision_recall_curve(y, -s)
    f1 = 2 * prec * rec / np.maximum(prec + rec, 1e-300)
    i = int(np.argmax(f1[:-1]))
    return {"auroc": roc_auc_score(y, -s), "ap": average_precision_score(y, -s), "best_f1": f1[i],
            "threshold": -thr[i]}


def test_perfect_and_constant_scores():
    labels = np.array([0] * 30 + [1] * 10 + [255] * 5, np.uint8)
    perfect = np.where(labels == 1, -1.0, 1.0)
    perfect[labels == 255] = -5  # ignored pixels do not count
    m = po.pixel_metrics(perfect, labels)
    assert (m["auroc"], m["ap"], m["fpr95"], m["best_f1"]) == (1.0, 1.0, 0.0, 1.0)
    c = po.pixel_metrics(np.zeros(labels.shape), labels)
    assert c["auroc"] == 0.5 and c["ap"] == pytest.approx(10 / 40) and c["fpr95"] == 1.0
    h = po.PixelHistogram(8, -2, 2)
    h.add(perfect, labels)
    assert h.metrics()["auroc"] == 1.0 and h.metrics()["ap"] == 1.0


def test_exact_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.2).astype(np.uint8)
    labels[rng.random(5000) < 0.05] = 255
    scores = (rng.normal(size=5000) - 1.2 * (labels == 1)).astype(np.float16)  # float16: many ties
    got, want = po.pixel_metrics(scores, labels), sklearn_reference(scores, labels)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    keep = labels != 255
    s, y = scores[keep].astype(np.float64), labels[keep] == 1
    t = np.sort(np.unique(s))  # FPR95 by definition: first threshold (low to high) catching 95 % of OOD
    first = t[np.argmax([(s[y] <= v).mean() >= 0.95 for v in t])]
    assert got["fpr95"] == pytest.approx((s[~y] <= first).mean())


def test_streaming_equals_exact_on_bin_aligned_scores_and_within_resolution():
    rng = np.random.default_rng(1)
    labels = (rng.random(20000) < 0.3).astype(np.uint8)
    ints = rng.integers(0, 10, 20000) - 3 * labels
    h = po.PixelHistogram(13, -3.5, 9.5)  # one integer per bin: the binned curve is the exact curve
    for part in np.array_split(np.arange(ints.size), 7):
        h.add(ints[part], labels[part])
    exact, streamed = po.pixel_metrics(ints, labels), h.metrics()
    for key in ("auroc", "ap", "fpr95", "best_f1", "threshold"):
        assert streamed[key] == pytest.approx(exact[key], abs=1e-12 if key != "threshold" else 0.5), key
    cont = rng.normal(size=20000) - labels
    fine = po.PixelHistogram(20000, -8, 8)
    fine.add(cont, labels)
    exact, streamed = po.pixel_metrics(cont, labels), fine.metrics()
    for key in ("auroc", "ap", "fpr95", "best_f1"):
        assert abs(streamed[key] - exact[key]) < 2e-3, key


def test_streaming_rejects_scores_outside_range():
    h = po.PixelHistogram(10, 0, 1)
    with pytest.raises(ValueError, match=r"score 1\.5 is outside the histogram range \[0, 1\]"):
        h.add(np.array([0.2, 1.5]), np.array([0, 1]))
    h.add(np.array([0.2, 7.0]), np.array([0, 255]))  # ignored pixels are not binned


def slow_components(anomaly, gt, min_pred, min_gt):
    """SegmentMeIfYouCan's instancer and segment metrics, restated pixel set by pixel set."""
    pred = anomaly & (gt != 255)
    inst, n_inst = cc_label(gt == 1, np.ones((3, 3)))
    comp, n_comp = cc_label(pred, np.ones((3, 3)))
    for j in range(1, n_comp + 1):
        if np.sum(comp == j) < min_pred:
            comp[comp == j] = 0
    gt = gt.copy()
    for i in range(1, n_inst + 1):
        if np.sum(inst == i) < min_gt:
            gt[inst == i] = 255
    roi = gt < 255
    inst, comp = inst[roi], comp[roi]
    siou_gt, ppv = [], []
    for i in np.unique(inst[inst > 0]):
        segs = np.unique(comp[(inst == i) & (comp > 0)])
        inter = np.sum((inst == i) & np.isin(comp, segs))
        adjust = np.sum(~np.isin(inst, [0, i]) & np.isin(comp, segs))
        siou_gt.append(inter / (np.sum(np.isin(comp, segs)) + np.sum(inst == i) - inter - adjust))
    for j in np.unique(comp[comp > 0]):
        ppv.append(np.sum((comp == j) & (inst > 0)) / np.sum(comp == j))
    return siou_gt, ppv


def blob_frame():
    gt = np.zeros((20, 30), np.uint8)
    gt[5:12, 3:10] = 1  # instance A, 49 px
    gt[5:12, 11:18] = 1  # instance B, 49 px, one ID column apart
    gt[0, :] = 255
    return gt


def test_component_cases():
    gt = blob_frame()
    perfect = po.frame_components(gt == 1, gt, 1, 1)
    assert perfect.siou_gt == [1.0, 1.0] and perfect.ppv == [1.0, 1.0]  # a column apart: two components
    one = np.zeros_like(gt, bool)
    one[5:12, 3:18] = True  # one blob over both instances and the 7 px gap
    s = po.frame_components(one, gt, 1, 1)
    assert s.siou_gt == pytest.approx([49 / 56, 49 / 56])  # the other instance's pixels are not counted
    assert s.ppv == pytest.approx([98 / 105]) and s.siou_pred == pytest.approx([98 / 105])
    empty = po.frame_components(np.zeros_like(one), gt, 1, 1)
    assert empty.siou_gt == [0.0, 0.0] and empty.ppv == []
    summary = empty.summary()
    assert summary["f1_mean"] == 0.0 and np.isnan(summary["ppv"])
    speck = one.copy()
    speck[15:17, 25:27] = True  # a 4 px false positive, below min_pred_size
    assert po.frame_components(speck, gt, 5, 1).ppv == pytest.approx([98 / 105])
    assert len(po.frame_components(speck, gt, 4, 1).ppv) == 2
    small = gt.copy()
    small[16:18, 1:3] = 1  # a 4 px instance below min_gt_size is ignored, prediction on it too
    pred = one | (small == 1)
    s = po.frame_components(pred, small, 3, 5)
    assert len(s.siou_gt) == 2 and len(s.ppv) == 1


def test_components_equal_slow_restatement_on_random_frames():
    rng = np.random.default_rng(3)
    for _ in range(6):
        gt = (rng.random((40, 50)) < 0.5).astype(np.uint8)
        gt = np.where(np.cumsum(gt, 1) % 7 < 2, 1, 0).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.05] = 255
        anomaly = rng.random(gt.shape) < np.where(gt == 1, 0.7, 0.2)
        for min_pred, min_gt in ((1, 1), (3, 4), (8, 2)):
            got = po.frame_components(anomaly, gt, min_pred, min_gt)
            siou, ppv = slow_components(anomaly, gt, min_pred, min_gt)
            assert got.siou_gt == pytest.approx(siou) and got.ppv == pytest.approx(ppv)


def test_f1_over_siou_thresholds():
    s = po.ComponentStats([0.2, 0.5, 0.8], [0.2, 0.3, 0.9], [0.3, 0.6, 0.9])
    out = s.summary()
    t = np.linspace(0.25, 0.75, 11)
    tp = [(np.array([0.2, 0.5, 0.8]) >= x).sum() for x in t]
    fp = [(np.array([0.3, 0.6, 0.9]) < x).sum() for x in t]
    f1 = [2 * a / (2 * a + (3 - a) + b) for a, b in zip(tp, fp)]
    assert out["f1_mean"] == pytest.approx(np.mean(f1)) and out["f1_50"] == pytest.approx(f1[5])
    assert out["siou"] == pytest.approx(0.5) and out["ppv"] == pytest.approx(0.6)


def test_file_evaluation_and_cli(tmp_path, capsys):
    rng = np.random.default_rng(4)
    gts, msp, energy = [], [], []
    for h, w in ((24, 32), (30, 20), (16, 16)):
        gt = np.full((h, w), 3, np.int16)  # class ids: 7 is OOD, 255 ignore
        gt[4:12, 5:14] = 7
        gt[-2:] = 255
        gts.append(gt)
        msp.append(np.where(gt == 7, 0.3, 0.8) + 0.1 * rng.random((h, w)))
        energy.append(rng.normal(size=(h, w)))
    path = tmp_path / "seg.h5"
    write_segmentation(path, {"msp": msp, "energy": energy}, [np.zeros_like(g) for g in gts], gts,
                       [f"{i}.png" for i in range(3)])
    recs = evaluate_ood(path, None, [7], [255], min_pred_size=5, min_gt_size=5)
    assert [r["detector"] for r in recs] == ["msp", "energy"]
    assert recs[0]["auroc"] == 1.0 and recs[0]["f1_mean"] == 1.0
    labels = np.concatenate([po.ood_labels(g, [7], [255]).ravel() for g in gts])
    want = sklearn_reference(np.concatenate([np.asarray(e, np.float16).ravel() for e in energy]), labels)
    assert recs[1]["auroc"] == pytest.approx(want["auroc"]) and recs[1]["ap"] == pytest.approx(want["ap"])
    stream = evaluate_ood(path, ["energy"], [7], [255], mode="streaming", bins=4000, components=False)
    assert abs(stream[0]["auroc"] - recs[1]["auroc"]) < 5e-3
    assert main(["ood", str(path), "--ood_ids", "7", "--ignore_ids", "255", "--min_pred_size", "5",
                 "--min_gt_size", "5", "--json", str(tmp_path / "r.json"), "--quiet"]) == 0
    assert "OpenOOD" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())[0]["auroc"] == 1.0
    assert main(["ood", str(path), "--quiet"]) == 2  # class ids without --ood_ids
    assert "value 3 in a binary OOD mask" in capsys.readouterr().err
    assert main(["ood", str(path), "--ood_ids", "7", "--mode", "streaming", "--range", "0", "0.5",
                 "--detectors", "msp", "--quiet"]) == 2
    assert "outside the histogram range" in capsys.readouterr().err
