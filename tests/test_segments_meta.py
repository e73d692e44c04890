"""python -m ood.segments meta: cross-validated figures against scikit-learn called here, written predictions,
saved models (JSON coefficients, skops) applied to a store without ground truth, bad input."""
import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ood.segments import meta
from ood.segments.__main__ import main as segments_main
from ood.segments.table import read_segments
from ood.segmentation.store import write_segmentation

GB_ITER = 15


def scene(rng, h=20, w=28, num=3):
    gt = np.zeros((h, w), np.int64)
    for c in (1, 2, 1):
        y, x = rng.integers(0, h - 6), rng.integers(0, w - 6)
        gt[y:y + rng.integers(3, 8), x:x + rng.integers(3, 10)] = c
    pred = gt.copy()
    for _ in range(3):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        pred[y:y + rng.integers(2, 5), x:x + rng.integers(2, 6)] = rng.integers(0, num)
    z = rng.normal(scale=0.5, size=(num, h, w))
    boost = np.where(pred == gt, 2.5, 0.4) + 0.3 * rng.random((h, w))
    np.put_along_axis(z, pred[None], z.max(0)[None] + boost[None], 0)
    p = np.exp(z)
    gt[0, :4] = 255
    return (p / p.sum(0)).astype(np.float32), pred, gt


def make_store(path, n=14, seed=0, with_gt=True):
    rng = np.random.default_rng(seed)
    probs, preds, gts = zip(*[scene(rng) for _ in range(n)])
    write_segmentation(path, {"msp": [p.max(0) for p in probs]}, list(preds), gt=list(gts) if with_gt else None,
                       paths=[f"{i}.png" for i in range(n)], probs=list(probs))
    return path


def models(family):
    if family == "linear":
        return (make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                make_pipeline(StandardScaler(), LinearRegression()))
    return (HistGradientBoostingClassifier(max_iter=GB_ITER, random_state=0),
            HistGradientBoostingRegressor(max_iter=GB_ITER, random_state=0))


def expected(table, family, cols, folds):
    has = np.isfinite(table.iou)
    X, y, g = table.metrics[has].astype(np.float64)[:, cols], table.iou[has].astype(np.float64), table.image[has]
    proba, pred = np.zeros(len(y)), np.zeros(len(y))
    for tr, te in GroupKFold(n_splits=folds).split(X, groups=g):
        assert not set(g[tr]) & set(g[te])
        clf, reg = models(family)
        proba[te] = clf.fit(X[tr], y[tr] > 0).predict_proba(X[te])[:, 1]
        pred[te] = reg.fit(X[tr], y[tr]).predict(X[te])
    return {"accuracy": np.mean((proba >= 0.5) == (y > 0)), "auroc": roc_auc_score(y > 0, proba),
            "r2": r2_score(y, pred), "sigma": np.sqrt(np.mean((y - pred - np.mean(y - pred)) ** 2))}, pred


def test_meta_figures_predictions_and_models(tmp_path, capsys):
    store = make_store(tmp_path / "s.h5")
    table = read_segments(store)
    assert (table.iou == 0).sum() > 5 and (table.iou > 0).sum() > 5
    rc = segments_main(["meta", str(store), "--json", str(tmp_path / "m.json"), "--model_out",
                        str(tmp_path / "model.skops"), "--folds", "4", "--use", "gb", "--gb_iter", str(GB_ITER),
                        "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "E only (baseline)" in out and "gradient boosting" in out and "AUROC" in out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["folds"] == 4 and report["predicted_with"] == "gb"
    e = table.columns.index("E")
    preds = {}
    for row in report["rows"]:
        cols = [e] if row["features"] == "E" else list(range(len(table.columns)))
        want, preds[row["model"], row["features"]] = expected(table, row["model"], cols, 4)
        for key, value in want.items():
            assert row[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (row["model"], row["features"], key)
    assert {(r["model"], r["features"]) for r in report["rows"]} == {(f, s) for f in ("linear", "gb")
                                                                     for s in ("E", "all")}
    after = read_segments(store)
    has = np.isfinite(after.iou)
    np.testing.assert_allclose(after.iou_pred[has], np.clip(preds["gb", "all"], 0, 1), atol=1e-6)
    # the saved gradient boosting model, applied to a store without ground truth
    bare = make_store(tmp_path / "bare.h5", n=3, seed=5, with_gt=False)
    assert segments_main(["meta", str(bare), "--apply", str(tmp_path / "model.skops"), "--quiet"]) == 0
    _, reg = models("gb")
    reg.fit(table.metrics[has].astype(np.float64), table.iou[has].astype(np.float64))
    bare_t = read_segments(bare)
    np.testing.assert_allclose(bare_t.iou_pred, np.clip(reg.predict(bare_t.metrics.astype(np.float64)), 0, 1),
                               atol=1e-6)


def test_linear_model_saved_as_coefficients(tmp_path):
    store = make_store(tmp_path / "s.h5", n=10, seed=1)
    report = meta.run_meta(store, families=["linear"], folds=3, model_out=tmp_path / "lin.skops")
    assert report["model_file"] == str(tmp_path / "lin.json") and not (tmp_path / "lin.skops").exists()
    saved = json.loads((tmp_path / "lin.json").read_text())
    table = read_segments(store)
    assert report["predicted_with"] == "linear" and saved["family"] == "linear"
    assert saved["columns"] == table.columns
    has = np.isfinite(table.iou)
    _, reg = models("linear")
    reg.fit(table.metrics[has].astype(np.float64), table.iou[has].astype(np.float64))
    np.testing.assert_allclose(meta.predict_saved(tmp_path / "lin.json", table),
                               np.clip(reg.predict(table.metrics.astype(np.float64)), 0, 1), atol=1e-6)


def test_no_ground_truth_is_one_line_and_writes_nothing(tmp_path, capsys):
    bare = make_store(tmp_path / "bare.h5", n=3, with_gt=False)
    before = bare.read_bytes()
    rc = segments_main(["meta", str(bare), "--json", str(tmp_path / "m.json"), "--model_out",
                        str(tmp_path / "m.skops"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bare) in err[0] and "no ground truth" in err[0]
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.skops").exists()
    assert bare.read_bytes() == before and read_segments(bare).iou_pred is None
    store = make_store(tmp_path / "s.h5", n=4)
    assert segments_main(["meta", str(store), "--families", "linear", "--use", "gb", "--quiet"]) == 2
    assert "--use 'gb'" in capsys.readouterr().err
    assert segments_main(["meta", str(store), "--families", "svm", "--quiet"]) == 2
    assert "unknown meta model family 'svm'" in capsys.readouterr().err
    assert segments_main(["meta", str(store), "--apply", str(tmp_path / "none.json"), "--quiet"]) == 2
    assert "no such meta model file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert segments_main(["meta", str(store), "--apply", str(tmp_path / "bad.json"), "--quiet"]) == 2
    assert "not a meta model file" in capsys.readouterr().err
    assert read_segments(store).iou_pred is None
