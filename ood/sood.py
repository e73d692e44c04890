"""The SOOD-ImageNet protocol: accuracy under semantic shift and detection of the shifted test sets.

SOOD-ImageNet (56 classes) keeps the training label space in its test sets but shifts their semantics:
``test_easy_ood`` a little, ``test_hard_ood`` a lot. One run reports (a) classification accuracy on every
split, overall and per superclass (the ``superclass`` column the extractor stores from a SOOD list), and
(b) every detector's AUROC / FPR95 for telling the IID test split from each shifted split, with the detectors
fitted on ``train_iid``. Where no IID test split exists, a seeded, class-stratified part of ``train_iid`` is
held out (and left out of the fit), and the output says so.
"""
from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

from .data import read_labels
from .errors import InputError
from .features import read_head
from .fileio import write_texts

if TYPE_CHECKING:  # torch and the registry load on first use, so `python -m ood.sood build --help` is quick
    from .engine import Result
    from .inputs import Inputs
    from .split import Split

HOLDOUT_FRACTION = 0.1
ALL = "all"


@dataclass
class SoodResult:
    detection: Result  # records: one per (method, shifted split), ID = the IID test split
    accuracy: List[dict]  # {"split", "superclass", "n", "accuracy"}; superclass "all" for the whole split
    splits: List[str]  # split names in table order


def holdout_mask(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A seeded, class-stratified held-out part: round(fraction * n_c) rows of every class c (unlabelled rows
    count as one class)."""
    if not 0 < fraction < 1:
        raise InputError(f"the held-out fraction must lie in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    _, cls = np.unique(labels, return_inverse=True)
    key = np.random.default_rng(seed).random(labels.size)
    order = np.lexsort((key, cls))  # by class, then random
    counts = np.bincount(cls)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.empty(labels.size, dtype=np.int64)
    rank[order] = np.arange(labels.size) - starts[cls[order]]
    held = rank < np.round(fraction * counts)[cls]
    if held.all() or not held.any():
        raise InputError(f"holding out {fraction} of {labels.size} train rows leaves an empty part")
    return held


def _superclass(split: Split) -> Optional[np.ndarray]:
    return split.source.read("superclass") if split.source.has("superclass") else None


def accuracy_records(name: str, split: Split, superclass: Optional[np.ndarray],
                     class_names: Optional[Sequence[str]] = None) -> List[dict]:
    """Top-1 accuracy of the head on the labelled rows, overall and per superclass (per class name, or per
    label, when the file has no superclass column)."""
    y = split.labels
    known = y >= 0
    if not known.any():
        return []
    correct = split.logits[known].argmax(1) == y[known]
    if superclass is not None:
        group = np.asarray(superclass, dtype=object)[known]
    elif class_names is not None:
        group = np.asarray(class_names, dtype=object)[y[known]]
    else:
        group = y[known].astype(str)
    names, inv = np.unique(group.astype(str), return_inverse=True)
    n = np.bincount(inv, minlength=names.size)
    hits = np.bincount(inv, weights=correct, minlength=names.size)
    out = [{"split": name, "superclass": ALL, "n": int(known.sum()), "accuracy": float(correct.mean())}]
    out += [{"split": name, "superclass": str(s), "n": int(k), "accuracy": float(h / k)}
            for s, k, h in zip(names, n, hits)]
    return out


def load(fc, train, tests: Sequence, device="auto", train_label=None, holdout: Optional[float] = None,
         seed: int = 0):
    """(Inputs, {split name: superclass column or None}).

    ``tests`` is ``[iid_test, shifted ...]``, or only the shifted sets when ``holdout`` is a fraction (then
    the IID test split is held out of ``train``). With two files and ``holdout`` None, ``HOLDOUT_FRACTION``
    is held out.
    """
    from .inputs import Inputs, load_split
    from .split import resolve_device
    from .tuning import subset

    device = resolve_device(device)
    head = read_head(fc)
    tests = list(tests)
    if holdout is None and len(tests) == 2:
        holdout = HOLDOUT_FRACTION
    if holdout is None and len(tests) < 3:
        raise InputError("the sood protocol needs the IID test split and the shifted sets (easy, hard), "
                         "or only the shifted sets with --holdout")
    tr = load_split(Path(train).stem, train, head, device)
    if train_label is not None:
        labels = read_labels(train_label)
        if labels.size != tr.n:
            raise InputError(f"{train_label}: {labels.size} labels, but {train} has {tr.n} rows")
        tr.labels = labels
    superclass = {tr.name: _superclass(tr)}
    notes = []
    if holdout is not None:
        held = holdout_mask(tr.labels, holdout, seed)
        test_name = f"{tr.name}_heldout"
        test = subset(tr, held, test_name)
        train_sc = superclass.pop(tr.name)
        fit = subset(tr, ~held, tr.name)
        superclass[tr.name] = None if train_sc is None else train_sc[~held]
        superclass[test_name] = None if train_sc is None else train_sc[held]
        notes.append(f"no IID test split given: {test.n} rows ({100 * holdout:g}% of each class, seed {seed}) "
                     f"held out of {Path(train).name} as the IID test split; detectors fit on the other {fit.n}")
        tr, shifted = fit, tests
    else:
        test = load_split(Path(tests[0]).stem, tests[0], head, device)
        superclass[test.name] = _superclass(test)
        shifted = tests[1:]
    oods = [load_split(Path(p).stem, p, head, device) for p in shifted]
    for s in oods:
        superclass[s.name] = _superclass(s)
    names = [tr.name, test.name] + [s.name for s in oods]
    if len(set(names)) != len(names):
        raise InputError(f"the splits must have distinct file names, got {', '.join(names)}")
    return Inputs(head, tr, test, oods, notes), superclass


def run_sood(inputs: Inputs, superclass: Dict[str, Optional[np.ndarray]], methods: Sequence[str],
             params: Optional[dict] = None, fpr: str = "vim", log=None) -> SoodResult:
    """Accuracy on every split, then every detector (fit on train) on IID test vs each shifted split."""
    from .engine import run_detectors

    splits = [inputs.train, inputs.test] + list(inputs.oods)
    accuracy = []
    for s in splits:
        accuracy += accuracy_records(s.name, s, superclass.get(s.name), inputs.head.class_names)
    if all(v is None for v in superclass.values()):
        inputs.notes.append("the feature files have no 'superclass' column (extract them from the SOOD lists): "
                            "accuracy is shown per class")
    detection = run_detectors(inputs, methods, params, fpr, log)
    return SoodResult(detection, accuracy, [s.name for s in splits])


def _accuracy_rows(res: SoodResult):
    by = {(r["split"], r["superclass"]): r for r in res.accuracy}
    groups = [ALL] + sorted({r["superclass"] for r in res.accuracy} - {ALL})
    header = ["Superclass"] + [f"{s} acc" for s in res.splits]
    rows = [[g] + [f"{100 * by[s, g]['accuracy']:.2f}" if (s, g) in by else "-" for s in res.splits]
            for g in groups]
    return header, rows


def format_report(res: SoodResult, fmt: str = "table") -> str:
    """The detection table (IID test vs each shifted split) and the accuracy table (split x superclass)."""
    from . import report

    det = res.detection
    out = [f"SOOD protocol: train {res.splits[0]}, IID test {res.splits[1]}, shifted "
           + ", ".join(res.splits[2:])]
    out.append(report.format_table(det, fmt))
    if res.accuracy:
        comment = {"latex": "% ", "markdown": ""}.get(fmt, "")
        out += ["", f"{comment}Top-1 accuracy (%) per split, overall ({ALL}) and per superclass"]
        out += [""] if fmt == "markdown" else []
        out += report.render(*_accuracy_rows(res), fmt)
    return "\n".join(out)


def accuracy_csv(res: SoodResult) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["split", "superclass", "n", "accuracy"])
    w.writeheader()
    w.writerows(res.accuracy)
    return buf.getvalue()


def write_outputs(res: SoodResult, json_path=None, csv_path=None, plots=None):
    """The JSON (detection records, accuracy, notes), the detection CSV with the accuracy CSV beside it
    (``<csv>.accuracy.csv``), and the plots; the text files are all replaced or none."""
    from . import report

    texts = []
    if json_path:
        texts.append((json_path, report.to_json({"detection": report.records(res.detection),
                                                 "accuracy": res.accuracy, "notes": res.detection.notes,
                                                 "provenance": res.detection.provenance})))
    if csv_path:
        texts += [(csv_path, report.csv_text(res.detection)),
                  (Path(csv_path).with_suffix(".accuracy.csv"), accuracy_csv(res))]
    write_texts(texts)
    if plots:
        from . import plots as plotting
        plotting.write_plots(res.detection, plots)


def run_protocol(fc, train, tests: Sequence, methods=None, params: Optional[dict] = None, fpr: str = "vim",
                 device: str = "cpu", train_label=None, holdout: Optional[float] = None, seed: int = 0,
                 log=None) -> SoodResult:
    """``benchmark.py --protocol sood`` as a function of plain values: load, select, check, run."""
    from .detectors import create
    from .inputs import select_methods

    inputs, superclass = load(fc, train, tests, device, train_label, holdout, seed)
    methods = select_methods(methods, inputs, train_label or train)
    params = params or {}
    for method in params:
        create(method, **params[method])
    if log:
        log(f"SOOD: train {inputs.train.n} x {inputs.train.dim}, IID test {inputs.test.n}, "
            + ", ".join(f"{o.name} {o.n}" for o in inputs.oods) + f"; {len(methods)} methods on "
            f"{inputs.train.device}")
    return run_sood(inputs, superclass, methods, params, fpr, log)


def main(argv=None) -> int:
    """``python -m ood.sood build ...``: the SOOD data engine (:mod:`ood.sood_build`). The protocol itself runs
    through ``benchmark.py --protocol sood``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["build"]:
        from .sood_build import main as build_main
        return build_main(argv[1:])
    print("usage: python -m ood.sood build ...   (the SOOD data engine; the protocol: benchmark.py --protocol "
          "sood)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
