"""The inputs of a benchmark run: the head, the train, ID test and OOD splits, loaded and checked up front.

Everything that can be wrong with the files (missing, empty, NaN rows, widths, labels, features of another
model) is found here, before any detector runs, and reported as one :class:`~ood.errors.InputError` line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from . import stats
from .checks import check_labels
from .data import read_labels
from .detectors import get_detector_class, list_detectors
from .errors import InputError
from .features import FeatureFile, Head, read_head
from .heads.groups import GROUP_HEAD, group_accuracy, is_group_head, read_group_head
from .split import Split, resolve_device

#: what a detector may name in ``requires`` beyond the train labels: (whether the inputs have it, how to give it)
REQUIREMENTS = {
    "group_head": (lambda inputs: "group_head" in inputs.train.extras,
                   "a group-softmax head: give --head HEAD.h5 "
                   "(python -m ood.heads train TRAIN.h5 HEAD.h5 --groups GROUPS)"),
    "zeroshot_head": (lambda inputs: "logit_scale" in inputs.head.attrs,
                      "a CLIP zero-shot fc head with its logit_scale (python -m ood.heads zeroshot)"),
    "id_val": (lambda inputs: True, "an ID validation split (--tune_id)"),
}
#: the file attributes that say which model made a file; files of one run must agree on them
MODEL_KEYS = ("model", "checkpoint_sha256")


@dataclass
class Inputs:
    head: Head
    train: Split
    test: Split
    oods: List[Split]
    notes: List[str] = field(default_factory=list)
    #: the ID validation split (``--tune_id``, or a seeded hold-out of the ID test split)
    id_val: Optional[Split] = None
    #: which ID test rows are left (a boolean mask) when ``id_val`` was held out of it for the use of the
    #: detectors that fit on it: they score the whole split and report these rows, so nothing is copied
    id_rest: Optional[np.ndarray] = None

    @property
    def has_train_labels(self) -> bool:
        return bool((self.train.labels >= 0).any())

    @property
    def splits(self) -> List[Split]:
        return [self.train, self.test, *self.oods]


def load_split(name: str, path, head: Head, device, stream: bool = False) -> Split:
    """A split of a feature file, its features read and checked for NaN / Inf now, not halfway through;
    ``stream``: read block by block whenever needed and never held (the train split)."""
    split = Split(name, FeatureFile(path), head, device)
    if split.n == 0:
        raise InputError(f"{path}: has no rows (empty data set)")
    split.keep_features = not stream
    split.keep_logits = not stream
    split.check_features()
    return split


def file_record(role: str, path) -> dict:
    """Provenance of one input file: its role, path, size and the attributes that say how it was made."""
    path = Path(path)
    out = {"role": role, "path": str(path), "bytes": os.path.getsize(path) if path.exists() else None}
    attrs = {}
    if path.suffix.lower() not in (".pkl", ".pickle"):  # ViM/GEN pickles carry no attributes
        try:
            with FeatureFile(path) as f:
                attrs = f.attrs
                out["rows"] = f.n
        except InputError:
            pass
    for key in ("model", "backend", "weights", "checkpoint", "checkpoint_sha256", "random_init_seed", "created"):
        if key in attrs:
            value = attrs[key]
            out[key] = value.item() if hasattr(value, "item") else value
    return out


def check_same_model(files: Sequence[dict], allow_mixed: bool = False) -> Optional[str]:
    """Refuse files that different models made (their ``model`` or ``checkpoint_sha256`` attributes differ);
    with ``allow_mixed`` the difference becomes a note (returned) instead."""
    for key in MODEL_KEYS:
        seen = {}
        for f in files:
            if f.get(key) not in (None, ""):
                seen.setdefault(str(f[key]), f["path"])
        if len(seen) > 1:
            (a, pa), (b, pb) = list(seen.items())[:2]
            text = f"{pa} and {pb} were made by different models ({key} {a!r} vs {b!r})"
            if not allow_mixed:
                raise InputError(f"{text}; pass --allow_mixed_models to compare them anyway")
            return f"mixed models allowed: {text}"
    return None


def load_inputs(fc, train, test, oods: Sequence, device="cpu", train_label=None, group_head=None) -> Inputs:
    """Read the head and every split; check widths, labels, distinct OOD names and the group head."""
    device = resolve_device(device)
    head = read_head(fc)
    tr = load_split("train", train, head, device, stream=True)  # N x D features, N x C logits: never held
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
    for split in inputs.splits:
        split.extras["group_head"] = group
    if not is_group_head(fc):
        acc = group_accuracy(group, inputs.test.features, inputs.test.labels, inputs.test.device)
        if acc is not None:
            inputs.notes.append(f"group head {path}: ID accuracy {100 * acc:.2f}% (group and class both right)")


def missing_inputs(method: str, inputs: Inputs) -> List[str]:
    """How to give each input that ``method`` requires and the inputs lack (train labels are checked apart)."""
    return [REQUIREMENTS[r][1] for r in get_detector_class(method).requires
            if r in REQUIREMENTS and not REQUIREMENTS[r][0](inputs)]


def select_methods(spec, inputs: Inputs, label_source: str) -> List[str]:
    """The detectors to run: those named (each must have its inputs), or every default one the inputs allow
    (the others are named in a note, with what they need)."""
    if spec:
        methods = [m.strip() for m in spec.split(",") if m.strip()] if isinstance(spec, str) else list(spec)
        for m in methods:
            for hint in missing_inputs(m, inputs):
                raise InputError(f"{m} needs {hint}")
    else:
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
        check_labels(inputs.train.labels, inputs.train.n, inputs.head.num_classes, label_source)
    return methods


def id_accuracy(test: Split) -> Optional[float]:
    """Top-1 accuracy of the head on the labelled ID test rows (MOS's group accuracy for a group head)."""
    y = test.labels
    known = y >= 0
    if not known.any():
        return None
    if test.head.attrs.get("head_type") == GROUP_HEAD:
        return group_accuracy(test.extras["group_head"], test.features, y, test.device)
    return float((stats.logit_stats(test)["pred"][known] == y[known]).mean())  # the run's shared argmax: no copy
