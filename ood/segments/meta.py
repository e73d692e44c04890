"""Meta classification and meta regression of segments (MetaSeg: Rottmann et al., "Prediction Error Meta
Classification in Semantic Segmentation", IJCNN 2020): from a segment's metrics alone, tell a false positive
(adjusted IoU = 0) from a true one, and predict its IoU, so segments of a store without ground truth can be
ranked by how wrong they probably are (the input of the OOD retrieval of Oberdiek et al., CVPR-W 2020).

Two model families from scikit-learn: ``linear`` (standardised features; logistic regression for the
classification, least squares for the regression) and ``gb`` (histogram gradient boosting). Each is
cross-validated with folds by image (``GroupKFold``: no image is in a training and a test fold at once), with
all metric columns and, as MetaSeg's baseline, with the mean entropy ``E`` alone. Figures are computed on the
pooled out-of-fold predictions: classification accuracy (threshold 0.5) and AUROC of IoU > 0, regression R²
and σ, the standard deviation of the residual IoU - prediction (MetaSeg's σ); each fold's spread is reported
beside them. Segments without an IoU (only ignored ground truth) are left out of training and figures.

The out-of-fold IoU predictions of the chosen family (clipped to [0, 1]) are written back as
``segments/iou_pred``; segments without an IoU get the prediction of the model fit on all segments, which is
saved: a ``linear`` model as plain JSON (column names, standardisation, coefficients), a ``gb`` model with
skops (``.skops``; a zip of JSON and arrays, never pickle); the file's suffix follows the family, and
``--apply`` uses it on another store.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> e = rng.random(400); iou = np.clip(1 - e + 0.1 * rng.normal(size=400), 0, 1)
>>> X = np.stack([e, rng.random(400)], 1)
>>> res = cross_validate(X, ["E", "S"], iou, np.arange(400) // 8, families=["linear"], folds=4)
>>> [(r["model"], r["features"]) for r in res.rows]
[('linear', 'E'), ('linear', 'all')]
>>> res.rows[1]["r2"] > 0.7
True
"""
from __future__ import annotations

import argparse
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ..errors import FeatureFileError, InputError, ParameterError

FAMILIES = ("linear", "gb")
BASELINE = "E"
_GB_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


def make_models(family: str, seed: int = 0, gb_iter: int = 100):
    """(classifier, regressor) of one family, unfitted (``gb_iter`` boosting iterations)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if family == "linear":
        return (make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                make_pipeline(StandardScaler(), LinearRegression()))
    if family == "gb":
        if gb_iter < 1:
            raise ParameterError(f"--gb_iter must be at least 1, got {gb_iter}")
        return (HistGradientBoostingClassifier(max_iter=gb_iter, random_state=seed),
                HistGradientBoostingRegressor(max_iter=gb_iter, random_state=seed))
    raise ParameterError(f"unknown meta model family {family!r}; choose from {', '.join(FAMILIES)}")


def _fit_predict(family, seed, gb_iter, x_tr, y_tr, x_te):
    """P(IoU > 0) and predicted IoU of the test rows."""
    clf, reg = make_models(family, seed, gb_iter)
    positive = y_tr > 0
    if positive.all() or not positive.any():  # a fold with one class: its rate is the best constant
        proba = np.full(len(x_te), float(positive[0]) if len(positive) else 0.5)
    else:
        proba = clf.fit(x_tr, positive).predict_proba(x_te)[:, 1]
    return proba, reg.fit(x_tr, y_tr).predict(x_te)


def figures(iou: np.ndarray, proba: np.ndarray, pred: np.ndarray) -> dict:
    """accuracy, AUROC (IoU > 0), R² and σ (std of the residual) of one set of predictions."""
    from sklearn.metrics import r2_score, roc_auc_score

    positive = iou > 0
    both = 0 < positive.sum() < len(positive)
    return {"accuracy": float(np.mean((proba >= 0.5) == positive)),
            "auroc": float(roc_auc_score(positive, proba)) if both else float("nan"),
            "r2": float(r2_score(iou, pred)) if len(iou) > 1 else float("nan"),
            "sigma": float(np.std(iou - pred))}


@dataclass
class MetaResult:
    """Cross-validated figures (``rows``) and out-of-fold predictions per (family, features)."""

    rows: List[dict]
    proba: Dict[tuple, np.ndarray] = field(repr=False)
    pred: Dict[tuple, np.ndarray] = field(repr=False)
    folds: int = 0

    def best(self) -> str:
        """The family with the highest cross-validated R² on all metrics."""
        rows = [r for r in self.rows if r["features"] == "all"]
        return max(rows, key=lambda r: (np.nan_to_num(r["r2"], nan=-np.inf), -FAMILIES.index(r["model"])))["model"]


def cross_validate(X: np.ndarray, columns: Sequence[str], iou: np.ndarray, groups: np.ndarray,
                   families: Sequence[str] = FAMILIES, folds: int = 5, seed: int = 0,
                   gb_iter: int = 100) -> MetaResult:
    """Meta classification and regression with ``folds`` folds by ``groups`` (the image of each segment), each
    family with the baseline column ``E`` alone and with all columns; rows of ``X`` must all have an IoU."""
    from sklearn.model_selection import GroupKFold

    X = np.asarray(X, dtype=np.float64)
    iou = np.asarray(iou, dtype=np.float64)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise InputError(f"cross-validation by image needs at least 2 images with segments, got {n_groups}")
    folds = min(int(folds), n_groups)
    if folds < 2:
        raise ParameterError(f"--folds must be at least 2, got {folds}")
    splits = list(GroupKFold(n_splits=folds).split(X, groups=groups))
    sets = {"E": [list(columns).index(BASELINE)], "all": list(range(X.shape[1]))}
    rows, probas, preds = [], {}, {}
    for family in families:
        for name, cols in sets.items():
            proba, pred = np.empty(len(X)), np.empty(len(X))
            per_fold = []
            for tr, te in splits:
                proba[te], pred[te] = _fit_predict(family, seed, gb_iter, X[tr][:, cols], iou[tr], X[te][:, cols])
                per_fold.append(figures(iou[te], proba[te], pred[te]))
            row = {"model": family, "features": name, **figures(iou, proba, pred)}
            for key in ("accuracy", "auroc", "r2", "sigma"):
                vals = np.array([f[key] for f in per_fold])
                row[f"{key}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else float("nan")
            rows.append(row)
            probas[family, name], preds[family, name] = proba, pred
    return MetaResult(rows, probas, preds, folds)


def fit_model(family: str, X: np.ndarray, iou: np.ndarray, seed: int = 0, gb_iter: int = 100):
    """The (classifier, regressor) of ``family`` fit on every row."""
    clf, reg = make_models(family, seed, gb_iter)
    positive = np.asarray(iou) > 0
    if 0 < positive.sum() < len(positive):
        clf.fit(X, positive)
    else:
        clf = None
    return clf, reg.fit(X, iou)


def save_model(path, family: str, columns: Sequence[str], clf, reg, **info):
    """``linear``: JSON with the standardisation and coefficients; ``gb``: a skops file. Written atomically."""
    from ..fileio import atomic_path, write_text

    if family == "linear":
        def linear(pipe):
            scaler, model = pipe[0], pipe[-1]
            return {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                    "coef": np.ravel(model.coef_).tolist(), "intercept": float(np.ravel(model.intercept_)[0])}
        doc = {"format": "ood-segments-meta", "family": "linear", "columns": list(columns), **info,
               "regression": linear(reg), "classification": linear(clf) if clf is not None else None}
        write_text(path, json.dumps(doc, indent=1) + "\n")
        return
    import skops.io as sio

    with atomic_path(path) as tmp:
        sio.dump({"format": "ood-segments-meta", "family": family, "columns": list(columns), "info": info,
                  "classifier": clf, "regressor": reg}, tmp)


def model_path(path, family: str) -> Path:
    """``path`` with the suffix of the family's format (``.json`` for linear, ``.skops`` for gb)."""
    return Path(path).with_suffix(".json" if family == "linear" else ".skops")


def predict_saved(path, table) -> np.ndarray:
    """Predicted IoU of every segment of ``table`` with a model written by :func:`save_model`."""
    path = Path(path)
    if not path.exists():
        raise FeatureFileError(f"{path}: no such meta model file")
    if zipfile.is_zipfile(path):
        import skops.io as sio

        untrusted = sio.get_untrusted_types(file=path)
        if set(untrusted) - set(_GB_TRUSTED):
            raise FeatureFileError(f"{path}: holds types this reader does not trust: {', '.join(untrusted)}")
        model = sio.load(path, trusted=untrusted)
        columns, apply = model.get("columns", []), model["regressor"].predict
    else:
        try:
            model = json.loads(path.read_text())
            reg = model["regression"]
            columns = model["columns"]
        except (ValueError, KeyError, TypeError):
            raise FeatureFileError(f"{path}: not a meta model file (JSON or skops)") from None

        def apply(x):
            return ((x - np.array(reg["mean"])) / np.array(reg["scale"])) @ np.array(reg["coef"]) + reg["intercept"]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise FeatureFileError(f"{path}: the model needs columns the table of {table.store} lacks: "
                               f"{', '.join(missing[:5])}")
    X = table.metrics[:, [table.columns.index(c) for c in columns]].astype(np.float64)
    return np.clip(apply(X), 0, 1)


def format_rows(rows: Sequence[dict], fmt: str = "table") -> List[str]:
    """MetaSeg's table: accuracy and AUROC of IoU = 0 vs > 0, R² and σ of the IoU, mean ± std over folds."""
    from ..report import render

    def cell(r, key, scale, digits):
        v, s = r[key], r[f"{key}_std"]
        return "-" if not np.isfinite(v) else f"{scale * v:.{digits}f} ± {scale * s:.{digits}f}"
    names = {"linear": "logistic / linear", "gb": "gradient boosting"}
    header = ["model", "features", "accuracy %", "AUROC %", "R²", "σ"]
    body = [[names.get(r["model"], r["model"]), "E only (baseline)" if r["features"] == "E" else "all metrics",
             cell(r, "accuracy", 100, 2), cell(r, "auroc", 100, 2), cell(r, "r2", 1, 3), cell(r, "sigma", 1, 3)]
            for r in rows]
    return render(header, body, fmt)


def run_meta(store, *, families: Sequence[str] = FAMILIES, use: str = "best", folds: int = 5, seed: int = 0,
             gb_iter: int = 100, json_out=None, model_out=None, write: bool = True, log=lambda msg: None) -> dict:
    """Cross-validate, fit the ``use`` family (``best`` = highest R²) on all segments, save it, write the
    predicted IoU back into ``store``; returns the report (also written to ``json_out``)."""
    from ..fileio import check_writable, write_text
    from ..report import to_json
    from .table import read_segments, write_predictions

    families = list(dict.fromkeys(families))
    for f in families:
        make_models(f, seed, gb_iter)
    if use != "best" and use not in families:
        raise ParameterError(f"--use {use!r} is not among the families run ({', '.join(families)})")
    table = read_segments(store)
    if table.iou is None or not np.isfinite(table.iou).any():
        raise FeatureFileError(f"{store}: its segments have no IoU (the store has no ground truth); meta "
                               "training needs a store written with masks (use --apply MODEL to predict)")
    if BASELINE not in table.columns:
        raise FeatureFileError(f"{store}: the segment table has no {BASELINE!r} column")
    for path, what in ((json_out, "JSON report"), *((model_path(model_out, f), "meta model") for f in families
                                                    if model_out)):
        if path:
            check_writable(path, what)
    if write:
        check_writable(store, "segment table")
    has = np.isfinite(table.iou)
    X, iou, groups = table.metrics[has].astype(np.float64), table.iou[has].astype(np.float64), table.image[has]
    log(f"{store}: {int(has.sum())} segments with an IoU in {len(np.unique(groups))} images, "
        f"{len(table.columns)} metrics")
    result = cross_validate(X, table.columns, iou, groups, families, folds, seed, gb_iter)
    family = result.best() if use == "best" else use
    clf, reg = fit_model(family, X, iou, seed, gb_iter)
    iou_pred = np.empty(len(table))
    iou_pred[has] = result.pred[family, "all"]
    if (~has).any():
        iou_pred[~has] = reg.predict(table.metrics[~has].astype(np.float64))
    iou_pred = np.clip(iou_pred, 0, 1)
    if model_out:
        model_out = model_path(model_out, family)
    report = {"store": str(store), "segments": len(table), "segments_with_iou": int(has.sum()),
              "images": int(len(np.unique(groups))), "folds": result.folds, "seed": seed, "gb_iter": gb_iter,
              "rows": result.rows,
              "predicted_with": family, "model_file": str(model_out) if model_out else None,
              "columns": table.columns}
    if model_out:
        save_model(model_out, family, table.columns, clf, reg, store=str(store), folds=result.folds, seed=seed,
                   gb_iter=gb_iter)
    if json_out:
        write_text(json_out, to_json(report) + "\n")
    if write:
        write_predictions(store, iou_pred, model=family, cross_validated=True, folds=result.folds)
    return report


def run_apply(store, model, write: bool = True) -> np.ndarray:
    """Predict the IoU of every segment of ``store`` with a saved meta model and write it back."""
    from .table import read_segments, write_predictions

    table = read_segments(store)
    iou_pred = predict_saved(model, table)
    if write:
        write_predictions(store, iou_pred, model=str(model), cross_validated=False)
    return iou_pred


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ood.segments meta",
        description="MetaSeg meta classification (IoU = 0 vs > 0) and regression (IoU) of the segments of a "
                    "segmentation store, cross-validated by image, next to the mean-entropy baseline; writes the "
                    "predicted IoU back into the store (segments/iou_pred).")
    p.add_argument("store", help="segmentation store written by segment_images.py (with --segments)")
    p.add_argument("--json", dest="json_out", help="write the figures here")
    p.add_argument("--model_out", help="save the model fit on all segments: linear as .json coefficients, gb "
                                       "as .skops (the suffix follows the family written)")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma list of linear, gb")
    p.add_argument("--use", default="best", help="family whose predictions are written (default: best R²)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds by image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gb_iter", type=int, default=100, help="boosting iterations of the gb family")
    p.add_argument("--format", choices=("table", "markdown", "latex"), default="table")
    p.add_argument("--apply", metavar="MODEL", help="no training: predict with a saved model and write the IoU")
    p.add_argument("--no_write", action="store_true", help="do not write the predicted IoU into the store")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    from ..cli import run_main, stderr_log

    args = build_parser().parse_args(argv)
    log = stderr_log(args.quiet)

    def go():
        if args.apply:
            pred = run_apply(args.store, args.apply, write=not args.no_write)
            log(f"{args.store}: predicted IoU of {len(pred)} segments with {args.apply}")
            return 0
        model_out = args.model_out
        report = run_meta(args.store, families=[f.strip() for f in args.families.split(",") if f.strip()],
                          use=args.use, folds=args.folds, seed=args.seed, gb_iter=args.gb_iter,
                          json_out=args.json_out,
                          model_out=model_out, write=not args.no_write, log=log)
        print(f"{report['store']}: {report['segments_with_iou']} segments, {report['images']} images, "
              f"{report['folds']}-fold cross-validation by image")
        print("\n".join(format_rows(report["rows"], args.format)))
        if not args.no_write:
            log(f"{args.store}: segments/iou_pred written ({report['predicted_with']}, out of fold)")
        if report["model_file"]:
            log(f"{report['model_file']}: the {report['predicted_with']} model fit on all segments")
        return 0
    return run_main(go)
