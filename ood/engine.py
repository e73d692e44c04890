"""Fit and score detectors over loaded inputs, one detector at a time, and keep the table up when one fails.

A detector that cannot fit, or gives non-finite scores for some rows, does not stop the run: its records carry
``null`` metrics and a note saying why, every other detector is reported. A bug (any exception that is not a
user's mistake or a numerical breakdown) keeps its traceback.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import metrics
from .detectors import create, get_detector_class
from .errors import InputError
from .inputs import Inputs, id_accuracy
from .split import Split

METRIC_KEYS = ("auroc", "fpr95", "aupr_in", "aupr_out")
#: exceptions that mean "this detector cannot cope with these inputs", not "the code is wrong"
DETECTOR_FAILURES = (InputError, np.linalg.LinAlgError, torch.linalg.LinAlgError, FloatingPointError)


@dataclass
class Result:
    """The outcome of a run: one record per (method, OOD set), the scores, and how they were made.

    ``records`` hold ``method``, ``dataset``, the metrics as fractions (None where a detector could not score)
    and ``note`` where something needs saying; ``scores[method][split]`` the float64 scores; ``params`` the
    hyperparameters as used (tuned values included); ``provenance`` the input files, versions, command, date.
    """

    records: List[dict]
    scores: Dict[str, Dict[str, np.ndarray]]
    timings: Dict[str, float]
    accuracy: Optional[float]
    fpr: str
    notes: List[str]
    params: Dict[str, dict]
    datasets: List[str]
    provenance: dict = field(default_factory=dict)

    def to_frame(self):
        """The records as a pandas DataFrame (pandas is an optional extra, imported only here); the
        hyperparameters of each method are in the ``params`` column."""
        try:
            import pandas as pd
        except ImportError:
            raise InputError("to_frame needs pandas: pip install 'ood[pandas]'") from None
        return pd.DataFrame([{**r, "params": self.params.get(r["method"], {})} for r in self.records])


def _score_split(det, split: Split, name: str) -> np.ndarray:
    s = det.score(split)
    bad = ~np.isfinite(s)
    if bad.any():
        raise FloatingPointError(f"{int(bad.sum())} of {split.n} {name} rows got a NaN/Inf score "
                                 f"(first at row {int(np.argmax(bad))})")
    return s


def run_order(methods: Sequence[str]) -> List[str]:
    """The order a run takes: the given one, except that a detector reading a value that an earlier one keeps
    for it (their ``shares`` meet) runs right after the first, so each such value is held for the shortest
    stretch and no two are held at once.

    >>> run_order(["react", "local_react", "gen_react", "gen_local_react", "msp"])
    ['react', 'gen_react', 'local_react', 'gen_local_react', 'msp']
    """
    shares = {m: set(get_detector_class(m).shares) for m in methods}
    order: List[str] = []
    for m in methods:
        if m not in order:
            order.append(m)
            order += [o for o in methods if o not in order and shares[m] & shares[o]]
    return order


def run_detectors(inputs: Inputs, methods: Sequence[str], params: Optional[dict] = None, fpr: str = "vim",
                  log: Optional[Callable[[str], None]] = None) -> Result:
    """Fit every method on the train split, score the ID test split and every OOD set; one record per
    (method, OOD set). A detector that needs an ID validation split (``requires`` "id_val") finds it in
    ``train.extras["id_val"]`` and is scored on the ID test rows left after the hold-out. Large values that
    detectors keep on the scored splits for each other (their ``shares``, e.g. ReAct's clipped logits) are
    dropped after the last method of the run that reads them, and the run takes :func:`run_order`, so they do
    not add up in memory; records, scores and parameters come in the order of ``methods``, ``timings`` in the
    order the run took."""
    params = params or {}
    records, scores, timings, used, fitted = [], {}, {}, {}, {}
    notes = list(inputs.notes)
    notes += [f"{o.name} has one row: its FPR95 can only be 0 or 1" for o in inputs.oods if o.n == 1]
    order = run_order(methods)
    shares = [set(get_detector_class(m).shares) for m in order]
    for i, name in enumerate(order, 1):
        t0 = time.perf_counter()
        det = create(name, **params.get(name, {}))
        rest = None  # the ID test rows this detector is reported on (all of them unless some were held out)
        note = []
        if "id_val" in get_detector_class(name).requires and inputs.id_val is not None:
            inputs.train.extras["id_val"] = inputs.id_val
            if inputs.id_rest is not None:
                rest = inputs.id_rest
                note.append(f"scored on the {int(rest.sum())} ID test rows left after holding out "
                            f"{inputs.id_val.n} as its ID validation split")
        s, failed = None, {}
        try:
            det.fit(inputs.train)
            s = {"id": _score_split(det, inputs.test, "ID test")}
            if rest is not None:
                s["id"] = s["id"][rest]
            for ood in inputs.oods:
                try:
                    s[ood.name] = _score_split(det, ood, ood.name)
                except DETECTOR_FAILURES as e:  # this set alone: the detector's other rows stand
                    failed[ood.name] = f"could not score {ood.name}: {e}"
        except DETECTOR_FAILURES as e:
            s = None
            note.append(f"could not be run: {e}")
        finally:
            inputs.train.extras.pop("id_val", None)
        note += getattr(det, "notes_", [])
        for ood in inputs.oods:
            rec = {"method": name, "dataset": ood.name, **dict.fromkeys(METRIC_KEYS)}
            rec_notes = list(note)
            if ood.name in failed:
                rec_notes.append(failed[ood.name])
            elif s is not None:
                rec.update(metrics.evaluate(s["id"], s[ood.name], fpr=fpr))
                both = np.concatenate([s["id"], s[ood.name]])
                if both.min() == both.max():
                    rec_notes.append(f"every ID and {ood.name} score is the same value (saturated): AUROC 50 "
                                     f"here means no ranking at all")
                if ood.n == 1:
                    rec_notes.append(f"{ood.name} has one row: FPR95 can only be 0 or 1")
            if rec_notes:
                rec["note"] = "; ".join(rec_notes)
            records.append(rec)
            notes += [f"{name}: {failed[ood.name]}"] if ood.name in failed else []
        timings[name] = time.perf_counter() - t0
        if s is not None:
            scores[name] = s
        used[name] = det.params()
        fitted[name] = det.fitted_values()
        notes += [f"{name}: {n}" for n in dict.fromkeys(note)]
        for prefix in shares[i - 1].difference(*shares[i:]):  # no later detector reads these: free them
            for split in [*inputs.splits, *([inputs.id_val] if inputs.id_val is not None else [])]:
                split.forget(prefix)
        if log:
            log(f"[{i:2d}/{len(methods)}] {name:<16s} {timings[name]:7.2f}s" + ("  (failed: see notes)" if s is None
                                                                               else ""))
    notes += [n for sp in inputs.splits for n in sp.notes]
    position = {m: k for k, m in enumerate(methods)}
    records.sort(key=lambda r: position[r["method"]])
    scores, used, fitted = ({m: d[m] for m in methods if m in d} for d in (scores, used, fitted))
    return Result(records, scores, timings, id_accuracy(inputs.test), fpr, list(dict.fromkeys(notes)), used,
                  [o.name for o in inputs.oods], {"fitted": fitted})
