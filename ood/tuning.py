"""Hyperparameter tuning on cached features (the OpenOOD protocol): every detector's grid, scored by AUROC of
ID validation features against a validation OOD set, before the test sets are touched.

Each detector class declares ``grid = {"param": [values, ...]}`` next to its defaults; the grid is the
cartesian product of those lists, less any parameter the user fixed (``--param``), and the value with the
highest validation AUROC wins (the first in grid order on a tie). Nothing is re-extracted: one fit per grid
point, on train statistics memoised across points. The ID validation features come from their own file, or
else from a seeded share of the ID test split, which is then left out of the reported results.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from . import metrics
from .detectors import create, get_detector_class
from .features import FeatureFile, file_sha256
from .split import Split
from .errors import InputError

VAL_SHARE = 0.1
SEED = 0


@dataclass
class Choice:
    """The chosen grid point of one detector, its validation AUROC, and how many points were scored."""
    params: dict
    auroc: float
    tried: int
    skipped: int = 0


def grid_points(name: str, fixed: Optional[dict] = None) -> list:
    """Every combination of the detector's grid, without the parameters in ``fixed``; [{}] when none."""
    grid = {k: list(v) for k, v in getattr(get_detector_class(name), "grid", {}).items() if k not in (fixed or {})}
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def tune_method(name: str, train: Split, id_val: Split, ood_val: Split, fixed: Optional[dict] = None) -> Choice:
    """Fit and score every grid point of one detector; keep the best validation AUROC."""
    fixed = fixed or {}
    best, tried, errors = None, 0, []
    for point in grid_points(name, fixed):
        try:
            det = create(name, **fixed, **point).fit(train)
            auroc = metrics.auroc(det.score(id_val), det.score(ood_val))
        except ValueError as e:
            errors.append(f"{name} {_fmt(point)}: {e}")
            continue
        tried += 1
        if best is None or auroc > best.auroc:
            best = Choice(point, auroc, 0)
    if best is None:
        raise InputError(f"tuning: no grid point of {name} could be scored ({errors[0]})")
    best.tried, best.skipped = tried, len(errors)
    return best


def tune(train: Split, id_val: Split, ood_val: Split, methods: Sequence[str], params: Optional[dict] = None,
         log: Optional[Callable] = None) -> Dict[str, Choice]:
    """The chosen grid point of every method that has a grid (after ``params``, which stay fixed)."""
    params = params or {}
    out = {}
    for name in methods:
        if grid_points(name, params.get(name)) == [{}]:
            continue
        out[name] = tune_method(name, train, id_val, ood_val, params.get(name))
        if log:
            log(f"tuned {name:<14s} {_fmt(out[name].params)} (validation AUROC {100 * out[name].auroc:.2f}%)")
    return out


def _fmt(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


# ------------------------------------------------------------------ validation sets


def same_file(a, b) -> bool:
    """The same resolved path, or the same size and content."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    return a.stat().st_size == b.stat().st_size and file_sha256(a) == file_sha256(b)


def refuse_test_files(path, role: str, tests: dict):
    """ValueError when ``path`` is one of the ``tests`` files ({description: path})."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file ({role})")
    for what, test in tests.items():
        if test is not None and Path(test).is_file() and same_file(path, test):
            raise InputError(f"{path}: the {role} is the same file as the {what} ({test}); tuning on a test set "
                             f"would bias every reported number, give a separate validation set")


def hold_out_rows(test: Split, share: float = VAL_SHARE, seed: int = SEED) -> np.ndarray:
    """A boolean mask of a seeded ``share`` of the rows of ``test``: the ID validation rows."""
    n_val = int(round(share * test.n))
    if not 0 < n_val < test.n:
        raise InputError(f"{test.path}: {test.n} rows are too few to hold out {share:.0%} for tuning; "
                         f"give --tune_id")
    val = np.zeros(test.n, bool)
    val[np.random.default_rng(seed).choice(test.n, n_val, replace=False)] = True
    return val


def subset(test: Split, rows: np.ndarray, name: str) -> Split:
    """A split of the given rows (a boolean mask) of ``test``: its features, logits and labels copied."""
    split = Split.from_arrays(name, test.features[rows], test.head, test.logits[rows], test.labels[rows],
                              test.device)
    split.extras.update(test.extras)
    return split


def hold_out(test: Split, share: float = VAL_SHARE, seed: int = SEED) -> tuple:
    """(a seeded ``share`` of the rows as the ID validation split, the rest as the ID test split)."""
    val = hold_out_rows(test, share, seed)
    return subset(test, val, "id_val"), subset(test, ~val, test.name)


def load_val(name: str, path, like: Split) -> Split:
    split = Split(name, FeatureFile(path), like.head, like.device)
    split.extras.update(like.extras)
    if split.n == 0:
        raise InputError(f"{path}: has no rows (empty data set)")
    split.features  # load and check for NaN / Inf now
    return split


def tune_inputs(inputs, methods: Sequence[str], params: dict, ood_val_path, id_val_path=None,
                log: Optional[Callable] = None) -> dict:
    """Check the validation files, build the validation splits (holding out part of the ID test split when
    no ``id_val_path``), tune, add notes to ``inputs.notes``; return ``params`` with the chosen values."""
    tests = {f"test OOD set {o.name}": o.path for o in inputs.oods}
    tests.update({"ID test set": inputs.test.path, "ID train set": inputs.train.path})
    refuse_test_files(ood_val_path, "tuning OOD set (--tune)", tests)
    ood_val = load_val(Path(ood_val_path).stem, ood_val_path, inputs.train)
    if id_val_path is not None:
        refuse_test_files(id_val_path, "tuning ID set (--tune_id)", {k: v for k, v in tests.items()
                                                                    if k != "ID train set"})
        id_val = load_val("id_val", id_val_path, inputs.train)
        source = f"{id_val_path} ({id_val.n} rows)"
    else:
        n_all = inputs.test.n
        id_val, inputs.test = hold_out(inputs.test)
        source = (f"a seeded {VAL_SHARE:.0%} of the ID test split ({id_val.n} of {n_all} rows, seed {SEED}), "
                  f"left out of the reported results, which use the other {inputs.test.n}")
    inputs.id_val = id_val  # also what the detectors that fit on ID validation data (temp_scaling) use
    inputs.notes.append(f"tuning: each grid point scored by AUROC of ID validation = {source} against "
                        f"{ood_val.name} ({ood_val.n} rows)")
    if log:
        log(f"tuning on {id_val.n} ID and {ood_val.n} OOD validation rows")
    choices = tune(inputs.train, id_val, ood_val, methods, params, log)
    out = {m: dict(p) for m, p in params.items()}
    for name, c in choices.items():
        out.setdefault(name, {}).update(c.params)
        skipped = f", {c.skipped} could not be scored" if c.skipped else ""
        inputs.notes.append(f"tuned {name}: {_fmt(c.params)} (validation AUROC {100 * c.auroc:.2f}%, "
                            f"best of {c.tried}{skipped})")
    fixed = [m for m in methods if m not in choices]
    if fixed:
        inputs.notes.append(f"not tuned (no grid, or every parameter fixed): {', '.join(fixed)}")
    return out
