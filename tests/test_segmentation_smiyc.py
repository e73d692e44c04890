"""--curve smiyc: SegmentMeIfYouCan's binned pixel curve and component step against a slow restatement."""
import json

import numpy as np
import pytest
from scipy.ndimage import label as cc_label

from ood.segmentation import pixel_ood as po
from ood.segmentation.evaluate import evaluate_ood, main
from ood.segmentation.store import write_segmentation


def frames(seed, n=6):
    """Frames of class ids (0 ID, 1 OOD, 255 ignore) and float16 scores (higher = ID) with many exact ties at
    0 and at half units, one frame almost all OOD."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(12, 30)), int(rng.integers(12, 30))
        gt = np.zeros((h, w), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            gt[y:y + rng.integers(2, 9), x:x + rng.integers(2, 9)] = 1
        gt[:2] = 255
        if i == n - 1:  # fewer non-OOD pixels than a min_gt_size below: the benchmark ignores them all
            gt[:] = 1
            gt[:3, :6] = 0
            gt[-1, -2:] = 255
        score = rng.normal(size=(h, w)) * 2 - 2.5 * (gt == 1)
        if i % 2 == 0:
            score = np.round(score * 2) / 2
        out.append((score.astype(np.float16), gt))
    return out


def slow_quantile(values, q):
    """numpy 1.x's linear quantile of float16 values: neighbours a, b of (n - 1) q, b - a in float16."""
    s = sorted(float(v) for v in values)
    v = (len(s) - 1) * q
    if v >= len(s) - 1:
        return s[-1]
    i = int(np.floor(v))
    g, a, b = v - i, s[i], s[i + 1]
    d = float(np.float16(b) - np.float16(a))
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def slow_edges(anomaly, positive):
    """The benchmark's percentile edges, restated: float16 range, float64 eps and outer edges, 384 quantiles."""
    vmin, vmax = min(anomaly.tolist()), max(anomaly.tolist())
    eps = max(float(np.float16(vmax) - np.float16(vmin)) * 0.01, 0.01)
    edges = {vmin - eps, vmax + eps}
    for values in (anomaly[positive], anomaly[~positive]):
        if len(values):
            edges |= {slow_quantile(values, q) for q in np.linspace(0, 1, min(384, len(values)))}
    return sorted(edges)


def slow_curve(frame_list):
    """Cumulative counts at every distinct edge, high to low: a frame contributes its pixels at or above the
    lowest of its own edges (its top edge left out) that is at or above the threshold."""
    per_frame, pos, neg = [], 0, 0
    for score, gt in frame_list:
        roi = gt != 255
        anomaly = -score[roi].astype(np.float64)
        positive = gt[roi] == 1
        per_frame.append((slow_edges(-score[roi], positive)[:-1], anomaly.tolist(), positive.tolist()))
        pos += int(positive.sum())
        neg += int((~positive).sum())
    points = [(None, 0, 0)]
    for t in sorted({e for edges, _, _ in per_frame for e in edges}, reverse=True):
        tp = fp = 0
        for edges, values, flags in per_frame:
            above = [e for e in edges if e >= t]
            if above:
                e = min(above)
                tp += sum(1 for v, f in zip(values, flags) if f and v >= e)
                fp += sum(1 for v, f in zip(values, flags) if not f and v >= e)
        points.append((t, tp, fp))
    if points[-1][1:] != (pos, neg):
        points.append((None, pos, neg))
    tpr = [tp / pos for _, tp, _ in points]
    fpr = [fp / neg for _, _, fp in points]
    prec = [tp / (tp + fp) if tp + fp else 1.0 for _, tp, fp in points]
    f1 = [2 * tp / (2 * tp + fp + (pos - tp)) for _, tp, fp in points]
    best = f1.index(max(f1))
    reach = [k for k, r in enumerate(tpr) if r >= 0.95]
    return {"ap": sum((tpr[k] - tpr[k - 1]) * prec[k] for k in range(1, len(points))),
            "auroc": sum((fpr[k] - fpr[k - 1]) * (tpr[k] + tpr[k - 1]) / 2 for k in range(1, len(points))),
            "fpr95": fpr[reach[0]] if reach else 1.0, "best_f1": f1[best], "smiyc_threshold": points[best][0]}


def slow_frame(anomaly_pred, gt, min_pred, min_gt):
    """The benchmark's instancer (its size loop visits label 0 too) and segment metrics, set by set."""
    inst, n_inst = cc_label(gt == 1, np.ones((3, 3)))
    comp, n_comp = cc_label(anomaly_pred & (gt != 255), np.ones((3, 3)))
    for j in range(1, n_comp + 1):
        if np.sum(comp == j) < min_pred:
            comp[comp == j] = 0
    gt = gt.copy()
    for i in range(0, n_inst + 1):
        if np.sum(inst == i) < min_gt:
            gt[inst == i] = 255
    roi = gt < 255
    inst, comp = inst[roi], comp[roi]
    siou_gt, siou_pred, prec = [], [], []
    for a, b, out in ((inst, comp, siou_gt), (comp, inst, siou_pred)):
        for i in np.unique(a[a > 0]):
            hit = np.unique(b[(a == i) & (b > 0)])
            inter = np.sum((a == i) & np.isin(b, hit))
            adjust = np.sum(~np.isin(a, [0, i]) & np.isin(b, hit))
            out.append(inter / (np.sum(np.isin(b, hit)) + np.sum(a == i) - inter - adjust))
            if out is siou_pred:
                prec.append(inter / np.sum(a == i))
    return siou_gt, siou_pred, prec


def test_binned_curve_equals_slow_restatement():
    for seed in range(3):
        fl = frames(seed)
        c = po.SmiycCurve()
        for score, gt in fl:
            c.add(score, gt)
        got, want = c.metrics(), slow_curve(fl)
        for key in ("ap", "auroc", "fpr95", "best_f1", "smiyc_threshold"):
            assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), (seed, key)
        assert got["threshold"] == -got["smiyc_threshold"]


def test_edges_equal_slow_restatement_with_float16_rounding():
    rng = np.random.default_rng(5)
    for n in (1, 2, 7, 500, 3000):  # mixed magnitudes: b - a is not exact in float16
        anomaly = (rng.normal(size=n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float16)
        positive = rng.random(n) < 0.3
        assert po.smiyc_edges(anomaly, positive).tolist() == slow_edges(anomaly, positive), n


def test_few_bins_merge_pixels_and_differ_from_exact():
    fl = frames(7, 4)
    c = po.SmiycCurve(bins=6)  # three quantiles a class: pixels share bins, so the curve is not the exact one
    for score, gt in fl:
        c.add(score, gt)
    scores = np.concatenate([s.ravel() for s, _ in fl])
    labels = np.concatenate([g.ravel() for _, g in fl])
    assert c.metrics()["ap"] != pytest.approx(po.pixel_metrics(scores, labels)["ap"], abs=1e-6)


def test_threshold_is_rounded_to_float16_before_the_comparison():
    scores = -np.array([0.5, 0.50048828125, 0.5009765625], np.float16)  # consecutive float16 values
    assert po.smiyc_prediction(scores, 0.5004).tolist() == [False, False, True]  # 0.5004 rounds up to 0.50049
    assert po.smiyc_prediction(scores, 0.5001).tolist() == [False, True, True]  # ... and 0.5001 down to 0.5


@pytest.mark.parametrize("sizes", [(1, 1), (3, 4), (20, 30)])  # 30 > the last frame's 20 non-OOD
def test_file_evaluation_equals_slow_components(tmp_path, sizes):
    fl = frames(11, 8)
    path = tmp_path / "s.h5"
    write_segmentation(path, {"msp": [s for s, _ in fl]}, [np.zeros(g.shape, np.int16) for _, g in fl],
                       [g.astype(np.int16) for _, g in fl])
    rec = evaluate_ood(path, curve="smiyc", min_pred_size=sizes[0], min_gt_size=sizes[1])[0]
    assert rec["ap"] == pytest.approx(slow_curve(fl)["ap"], rel=1e-12)
    thr = np.float16(rec["smiyc_threshold"])
    g, p, prec = [], [], []
    for score, gt in fl:
        a, b, c = slow_frame(-score > thr, gt, *sizes)
        g, p, prec = g + a, p + b, prec + c
    g, p, prec = np.array(g), np.array(p), np.array(prec)
    assert rec["siou"] == pytest.approx(g.mean()) and rec["siou_pred"] == pytest.approx(p.mean())
    assert rec["ppv"] == pytest.approx(prec.mean())
    counts = []
    for t in np.linspace(0.25, 0.75, 11):
        counts.append([np.sum(g >= t), np.sum(g < t), np.sum(prec < t)])
    f1 = [2 * tp / (2 * tp + fn + fp) for tp, fn, fp in counts]
    assert rec["f1_mean"] == pytest.approx(np.mean(f1))
    for k, key in ((0, "25"), (5, "50"), (10, "75")):
        assert [rec[f"tp_{key}"], rec[f"fn_{key}"], rec[f"fp_{key}"]] == counts[k]
    assert [rec["tp_mean"], rec["fn_mean"], rec["fp_mean"]] == pytest.approx(np.mean(counts, axis=0).tolist())


def test_cli_smiyc(tmp_path, capsys):
    fl = frames(3, 4)
    path = tmp_path / "s.h5"
    write_segmentation(path, {"maxlogit": [s for s, _ in fl]}, [np.zeros(g.shape, np.int16) for _, g in fl],
                       [g.astype(np.int16) for _, g in fl])
    assert main(["ood", str(path), "--curve", "smiyc", "--min_pred_size", "3", "--min_gt_size", "2", "--json",
                 str(tmp_path / "r.json"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "binned curve, 768 percentile bins" in out and "TP@25" in out and "sIoU pred" in out
    rec = json.loads((tmp_path / "r.json").read_text())[0]
    assert rec["curve"] == "smiyc" and rec["ap"] == pytest.approx(slow_curve(fl)["ap"], rel=1e-12)
    assert main(["ood", str(path), "--curve", "smiyc", "--mode", "streaming", "--quiet"]) == 2
    assert "--mode streaming applies to --curve exact" in capsys.readouterr().err
