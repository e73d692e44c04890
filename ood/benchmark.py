"""benchmark.py: fit every detector on the ID train features, score ID test and each OOD set, report metrics.

The positional arguments are those of the ViM / GEN benchmark.py (fc, ID train, ID test, OOD ...), and their
.pkl files are read too. Everything runs from the feature files alone, on CPU or a GPU through torch.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import metrics, report, tuning
from .data import read_labels
from .detectors import create, get_detector_class, list_detectors, parse_param_args
from .features import FeatureFile, Head, read_head
from .heads.groups import GROUP_HEAD, group_accuracy, is_group_head, read_group_head
from .split import Split, resolve_device
from .errors import InputError

VIM_FLAGS = ("clip_quantile", "clip_quantile_local", "gamma", "M")
#: what a detector may name in ``requires`` beyond the train labels: (whether the inputs have it, how to give it)
REQUIREMENTS = {
    "group_head": (lambda inputs: "group_head" in inputs.train.extras,
                   "a group-softmax head: give --head HEAD.h5 "
                   "(python -m ood.heads train TRAIN.h5 HEAD.h5 --groups GROUPS)"),
    "zeroshot_head": (lambda inputs: "logit_scale" in inputs.head.attrs,
                      "a CLIP zero-shot fc head with its logit_scale (python -m ood.heads zeroshot)"),
}


@dataclass
class Inputs:
    head: Head
    train: Split
    test: Split
    oods: List[Split]
    notes: List[str] = field(default_factory=list)

    @property
    def has_train_labels(self) -> bool:
        return bool((self.train.labels >= 0).any())


@dataclass
class Result:
    records: List[dict]
    scores: Dict[str, Dict[str, np.ndarray]]
    timings: Dict[str, float]
    accuracy: Optional[float]
    fpr: str
    notes: List[str]
    params: Dict[str, dict]
    datasets: List[str]


def load_split(name: str, path, head: Head, device) -> Split:
    split = Split(name, FeatureFile(path), head, device)
    if split.n == 0:
        raise InputError(f"{path}: has no rows (empty data set)")
    split.features  # load and check for NaN / Inf now, not halfway through the run
    return split


def load_inputs(fc, train, test, oods: Sequence, device="cpu", train_label=None, group_head=None) -> Inputs:
    device = resolve_device(device)
    head = read_head(fc)
    tr = load_split("train", train, head, device)
    tr.keep_logits = False  # N x C train logits are streamed where needed, never kept
    inputs = Inputs(head, tr, load_split("id", test, head, device),
                    [load_split(Path(p).stem, p, head, device) for p in oods])
    if train_label is not None:
        labels = read_labels(train_label)
        if labels.size != tr.n:
            raise InputError(f"{train_label}: {labels.size} labels, but {train} has {tr.n} rows")
        tr.labels = labels
    names = [s.name for s in inputs.oods]
    if len(set(names)) != len(names):
        raise InputError(f"OOD files must have distinct names, got {', '.join(names)}")
    attach_group_head(inputs, fc, group_head)
    return inputs


def attach_group_head(inputs: Inputs, fc, group_head=None):
    """The group-softmax head (``--head``, or the fc file when it is one) goes to every split's extras."""
    if group_head is not None and is_group_head(fc) and Path(group_head).resolve() != Path(fc).resolve():
        raise InputError(f"{fc}: is a group head already; give the group head either as the fc file or with "
                         f"--head, not both")
    path = group_head if group_head is not None else (fc if is_group_head(fc) else None)
    if path is None:
        return
    group = read_group_head(path)
    if group.dim != inputs.train.dim:
        raise InputError(f"{path}: the group head takes features of width {group.dim}, the feature files have "
                         f"width {inputs.train.dim}")
    for split in [inputs.train, inputs.test, *inputs.oods]:
        split.extras["group_head"] = group
    if not is_group_head(fc):
        acc = group_accuracy(group, inputs.test.features, inputs.test.labels, inputs.test.device)
        if acc is not None:
            inputs.notes.append(f"group head {path}: ID accuracy {100 * acc:.2f}% (group and class both right)")


def check_train_labels(inputs: Inputs, source: str):
    y, C = inputs.train.labels, inputs.head.num_classes
    if y.size != inputs.train.n:
        raise InputError(f"{source}: {y.size} train labels for {inputs.train.n} rows")
    bad = (y < 0) | (y >= C)
    if bad.any():
        raise InputError(f"{source}: {int(bad.sum())} train labels outside [0, {C}) (first: {int(y[bad][0])} at "
                         f"row {int(np.argmax(bad))}); Mahalanobis needs a class label for every train row")


def missing_inputs(method: str, inputs: Inputs) -> List[str]:
    """How to give each input that ``method`` requires and the inputs lack (train labels are checked apart)."""
    return [REQUIREMENTS[r][1] for r in get_detector_class(method).requires
            if r in REQUIREMENTS and not REQUIREMENTS[r][0](inputs)]


def select_methods(spec: Optional[str], inputs: Inputs, label_source: str) -> List[str]:
    if spec:
        methods = [m.strip() for m in spec.split(",") if m.strip()]
        for m in methods:
            for hint in missing_inputs(m, inputs):
                raise InputError(f"{m} needs {hint}")
        if any("train_labels" in get_detector_class(m).requires for m in methods):
            check_train_labels(inputs, label_source)
        return methods
    methods = []
    opt_in = [m for m in list_detectors() if not get_detector_class(m).default]
    if opt_in:
        inputs.notes.append(f"not run unless named in --methods (cost grows with train x test rows): "
                            f"{', '.join(opt_in)}")
    for m in list_detectors():
        if m in opt_in:
            continue
        if "train_labels" in get_detector_class(m).requires and not inputs.has_train_labels:
            inputs.notes.append(f"{m} skipped: the train split has no labels (give --train_label)")
            continue
        missing = missing_inputs(m, inputs)
        if missing:
            inputs.notes.append(f"{m} skipped: it needs {missing[0]}")
            continue
        methods.append(m)
    if any("train_labels" in get_detector_class(m).requires for m in methods):
        check_train_labels(inputs, label_source)
    return methods


def id_accuracy(test: Split) -> Optional[float]:
    y = test.labels
    known = y >= 0
    if not known.any():
        return None
    if test.head.attrs.get("head_type") == GROUP_HEAD:  # a group head as the fc: MOS's group accuracy
        return group_accuracy(test.extras["group_head"], test.features, y, test.device)
    return float((test.logits[known].argmax(1) == y[known]).mean())


def run(inputs: Inputs, methods: Sequence[str], params: Optional[dict] = None, fpr: str = "vim",
        log=None) -> Result:
    """Fit and score every method; one record per (method, OOD set)."""
    params = params or {}
    records, scores, timings, used = [], {}, {}, {}
    for i, name in enumerate(methods, 1):
        t0 = time.perf_counter()
        det = create(name, **params.get(name, {}))
        det.fit(inputs.train)
        s = {"id": det.score(inputs.test)}
        for ood in inputs.oods:
            s[ood.name] = det.score(ood)
        for ood in inputs.oods:
            try:
                m = metrics.evaluate(s["id"], s[ood.name], fpr=fpr)
            except ValueError as e:
                raise InputError(f"{name} on {ood.name}: {e}") from None
            records.append({"method": name, "dataset": ood.name, **m})
        timings[name] = time.perf_counter() - t0
        scores[name] = s
        used[name] = det.params()
        if log:
            log(f"[{i:2d}/{len(methods)}] {name:<16s} {timings[name]:7.2f}s")
    notes = inputs.notes + [n for s in [inputs.train, inputs.test, *inputs.oods] for n in s.notes]
    return Result(records, scores, timings, id_accuracy(inputs.test), fpr, notes, used,
                  [o.name for o in inputs.oods])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Post-hoc OOD detectors on stored features: fc, ID train, ID test, OOD sets "
                    "(HDF5 feature files or ViM/GEN .pkl files).")
    p.add_argument("fc", help="fc head file (.h5 from extract_features.py --fc_save_path, or ViM/GEN .pkl)")
    p.add_argument("id_train_feature", help="ID train features")
    p.add_argument("id_val_feature", help="ID test features")
    p.add_argument("ood_features", nargs="+", help="one or more OOD feature files (named by their stem)")
    p.add_argument("--methods", help=f"comma list (default: all the inputs allow): {', '.join(list_detectors())}")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                   help="set a hyperparameter, e.g. vim.dim=512 (repeatable)")
    p.add_argument("--fpr", choices=metrics.FPR_CONVENTIONS, default="vim", help="FPR95 convention")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--train_label", help="ViM-style list 'path label' overriding the train file's labels")
    p.add_argument("--head", help="group-softmax head for mos (python -m ood.heads train); a group head may "
                                  "also be given as the fc file")
    p.add_argument("--clip_quantile", help="ReAct train quantile (react, gen_react; default 0.99)")
    p.add_argument("--clip_quantile_local", help="Local ReAct quantile (default 0.9995)")
    p.add_argument("--gamma", help="GEN gamma (default 0.1)")
    p.add_argument("--M", help="GEN top-M classes (default 100)")
    p.add_argument("--tune", metavar="OOD_VAL", help="pick each detector's hyperparameters from its grid by "
                   "AUROC of ID validation features against this validation OOD file (never a test OOD file)")
    p.add_argument("--tune_id", metavar="ID_VAL", help="ID validation features for --tune (default: a seeded "
                   "10%% of the ID test split, then left out of the reported results)")
    p.add_argument("--json", help="write one record per (method, dataset) as JSON")
    p.add_argument("--csv", help="write one record per (method, dataset) as CSV")
    p.add_argument("--format", choices=("table", "markdown", "latex"), default="table", help="printed table")
    p.add_argument("--plots", metavar="DIR", help="write per-detector score histograms and ROC curves (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--protocol", choices=("standard", "sood"), default="standard",
                   help="sood: files are fc, train_iid, [IID test], shifted sets (easy, hard); reports accuracy "
                        "per split and superclass, and detection of each shifted set (see ood.sood)")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="sood: hold this part of train_iid out as the IID test split (no IID test file given; "
                        "default 0.1 when only two files follow the train file)")
    p.add_argument("--holdout_seed", type=int, default=0, help="sood: seed of the held-out part")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.protocol == "sood":
        from . import sood
        return sood.main(args, log)
    try:
        inputs = load_inputs(args.fc, args.id_train_feature, args.id_val_feature, args.ood_features,
                             args.device, args.train_label, args.head)
        methods = select_methods(args.methods, inputs, args.train_label or args.id_train_feature)
        flags = {k: getattr(args, k) for k in VIM_FLAGS}
        params = parse_param_args(args.param, flags, methods)
        for method in params:
            create(method, **params[method])  # an unknown parameter fails before any work
        if log:
            log(f"train {inputs.train.n} x {inputs.train.dim}, ID test {inputs.test.n}, "
                + ", ".join(f"{o.name} {o.n}" for o in inputs.oods) + f"; {len(methods)} methods on "
                f"{inputs.train.device}")
        if args.tune:
            params = tuning.tune_inputs(inputs, methods, params, args.tune, args.tune_id, log)
        elif args.tune_id:
            raise InputError("--tune_id needs --tune OOD_VAL")
        result = run(inputs, methods, params, args.fpr, log)
    except (InputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format_table(result, args.format))
    if args.json:
        report.write_json(result, args.json)
    if args.csv:
        report.write_csv(result, args.csv)
    if args.plots:
        from . import plots
        plots.write_plots(result, args.plots)
    return 0
