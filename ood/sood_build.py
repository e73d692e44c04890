"""The SOOD data engine on cached CLIP features: ``python -m ood.sood build`` makes a semantic-shift benchmark
(train / IID test / easy shift / hard shift lists) from any labelled two-level hierarchy.

SOOD-ImageNet (Bacchin et al., "SOOD-ImageNet: a Large-Scale Dataset for Semantic Out-Of-Distribution Image
Classification and Semantic Segmentation", 2024) was made by a data engine whose reusable core this module
runs on one open_clip feature file (``extract_features.py --backend open_clip``), so it costs one extraction
pass and no image is read again:

1. **Score.** Every image gets the CLIP logit of its L2-normalised image embedding against the prompt-averaged
   text embedding of its own superclass (:func:`ood.backbones.open_clip_backend.zeroshot_head`: CLIP's 80
   ImageNet templates, or the user's; the engine itself used the bare superclass name, i.e. the one template
   ``{}``), min-max normalised over all images of that superclass (the engine's ``normalized_logit``).
2. **Outliers.** Per subclass, Tukey's fences on the scores: an image below ``Q1 - k IQR`` or above
   ``Q3 + k IQR`` (k = 1.5; quartiles by linear interpolation, as pandas and ``np.percentile``) is removed and
   listed. The engine's ``outliers_detection.py`` does the same.
3. **Split.** Each subclass gets the mean score of its kept images. Within each superclass the cut points are
   the ``P_low``-th and ``P_high``-th percentiles of the subclass means (20 and 40): a subclass whose mean is at
   or above the ``P_high`` cut is IID, one below the ``P_low`` cut is the hard shift, the others the easy
   shift. As in the engine's ``dataset_split.py``, P_high = 40 is the 40th *percentile of the mean scores*
   (so about the top 60 %), not "the top 40 %", and the percentile is taken over the kept images, each
   carrying its subclass's mean (``cut_by="images"``: a subclass weighs by its size);
   ``cut_by="subclasses"`` takes it over the subclass means, one each. The IID subclasses' images are then
   split into train and IID test, ``round(iid_test * n)`` images of every IID subclass held out (seeded).
   Where this differs from the engine: the engine averaged each subclass's scores before removing its
   outliers; here the mean is that of the kept images (the ranking the removed images would otherwise
   still move).

The lists are SOOD classification lists (``path class_id superclass subclass``, class id = the superclass's
position), which ``extract_features.py --list_format sood``, :func:`ood.data.read_list` and
``benchmark.py --protocol sood`` read as they are; with ``features=True`` the same rows are also cut out of
the feature file, next to a zero-shot fc head of the superclasses, so the protocol runs at once. Every choice
goes into ``sood_build.json`` beside the lists (the SOOD list reader takes no comment lines).

>>> import numpy as np
>>> score = np.array([.1, .2, .2, .3, .9, .5, .6, .7, .8])
>>> subclass = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
>>> tukey_fences(score, subclass, 2, 1.5)[0].tolist()
[False, False, False, False, True, False, False, False, False]
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .errors import FeatureFileError, InputError, ListFormatError, ParameterError
from .features import FeatureFile, FeatureWriter, Head, base_attrs, read_head, write_fc

#: the output lists, in the order of the split codes 0..3 (-1 = an outlier, in no list)
SPLITS = ("train_iid", "test_iid", "test_easy_ood", "test_hard_ood")
BANDS = ("iid", "easy", "hard")
OUTLIER = -1
#: the fewest images of a subclass Tukey's fences are computed on (Q1 and Q3 then come from distinct ranks)
MIN_FENCE_IMAGES = 4
#: the fewest subclasses of a superclass: one for each band
MIN_SUBCLASSES = len(BANDS)
CUT_BY = ("images", "subclasses")
#: the feature-file attributes the split feature files and the fc head keep (the model that made them)
MODEL_ATTRS = ("model", "backend", "weights", "checkpoint", "checkpoint_sha256", "random_init_seed",
               "preprocess", "data_root")
BAND_COLORS = ("#595959", "#E69F00", "#D55E00")  # IID grey, easy orange, hard vermillion (as ood.plots)


@dataclass
class BuildOptions:
    """The engine's choices: percentiles, fence, how the percentile weighs subclasses, the IID test share.

    >>> BuildOptions(p_high=20, p_low=40).check()
    Traceback (most recent call last):
    ood.errors.ParameterError: --p_low 40 must be below --p_high 20 (both percentiles in (0, 100))
    """

    p_high: float = 40.0
    p_low: float = 20.0
    fence: float = 1.5
    cut_by: str = "images"
    iid_test: float = 0.1
    seed: int = 0

    def check(self) -> "BuildOptions":
        if not 0 < self.p_low < self.p_high < 100:
            raise ParameterError(f"--p_low {self.p_low:g} must be below --p_high {self.p_high:g} (both "
                                 f"percentiles in (0, 100))")
        if not (math.isfinite(self.fence) and self.fence > 0):
            raise ParameterError(f"--fence must be a positive number of IQRs, got {self.fence}")
        if self.cut_by not in CUT_BY:
            raise ParameterError(f"--cut_by must be one of {', '.join(CUT_BY)}, got {self.cut_by!r}")
        if not 0 < self.iid_test <= 0.5:
            raise ParameterError(f"--iid_test must be a fraction in (0, 0.5], got {self.iid_test}")
        return self


@dataclass
class Hierarchy:
    """The candidate images in feature-file row order: their rows, paths, superclass and subclass codes.

    Superclass k is ``classes[k]`` (its class id); subclass j is ``subclasses[j]`` of superclass
    ``subclass_super[j]``, numbered by superclass, then name.
    """

    rows: np.ndarray  # [n] increasing rows of the feature file
    paths: np.ndarray  # [n] object
    superclass: np.ndarray  # [n] int64 in [0, K)
    subclass: np.ndarray  # [n] int64 in [0, S)
    classes: List[str]
    subclasses: List[str]
    subclass_super: np.ndarray  # [S] int64
    source: str  # where the hierarchy came from (the list, or the feature file's columns)
    notes: List[str] = field(default_factory=list)

    def __len__(self):
        return self.rows.size


# --------------------------------------------------------------------------------------------- the engine


def range_within(values: np.ndarray, group: np.ndarray, groups: int) -> np.ndarray:
    """[G, 2]: the min and max of each group's values (what the engine's min-max normalisation divides by).

    >>> range_within(np.array([1., 3., 2., 5., 7.]), np.array([0, 0, 0, 1, 1]), 2).tolist()
    [[1.0, 3.0], [5.0, 7.0]]
    """
    lo, hi = np.full(groups, np.inf), np.full(groups, -np.inf)
    np.minimum.at(lo, group, values)
    np.maximum.at(hi, group, values)
    return np.stack([lo, hi], axis=1)


def quantiles_within(values: np.ndarray, group: np.ndarray, groups: int, qs: Sequence[float]) -> np.ndarray:
    """[G, len(qs)]: the quantiles of each group's values, linearly interpolated exactly as
    ``np.percentile(v, 100 q)`` (and pandas' ``quantile``) does; every group needs a value.

    >>> quantiles_within(np.array([4., 1., 3., 2., 10.]), np.array([0, 0, 0, 0, 1]), 2, [0.25, 0.5]).tolist()
    [[1.75, 2.5], [10.0, 10.0]]
    """
    order = np.lexsort((values, group))
    v = values[order]
    counts = np.bincount(group, minlength=groups)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    out = np.empty((groups, len(qs)))
    for i, q in enumerate(qs):
        h = (counts - 1) * q
        k = np.floor(h).astype(np.int64)
        t = h - k
        a, b = v[starts + k], v[starts + np.minimum(k + 1, counts - 1)]
        diff = b - a
        out[:, i] = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)  # numpy's lerp, bit for bit
    return out


def tukey_fences(score: np.ndarray, subclass: np.ndarray, subclasses: int, k: float = 1.5):
    """(outlier mask [n], fences [S, 2]): an image is an outlier when its score lies below ``Q1 - k IQR`` or
    above ``Q3 + k IQR`` of its subclass (Tukey, "Exploratory Data Analysis", 1977)."""
    q1, q3 = quantiles_within(score, subclass, subclasses, (0.25, 0.75)).T
    fences = np.stack([q1 - k * (q3 - q1), q3 + k * (q3 - q1)], axis=1)
    out = (score < fences[subclass, 0]) | (score > fences[subclass, 1])
    return out, fences


def cut_points(means: np.ndarray, weights: np.ndarray, superclass: np.ndarray, classes: int,
               p_low: float, p_high: float) -> np.ndarray:
    """[K, 2]: the ``p_low``-th and ``p_high``-th percentiles of the subclass ``means`` of each superclass, each
    mean counted ``weights`` times (its kept images, or 1 for every subclass), as ``np.percentile``.

    >>> cut_points(np.array([.2, .5, .9]), np.array([1, 1, 2]), np.zeros(3, int), 1, 20, 40).round(3).tolist()
    [[0.38, 0.58]]
    """
    out = np.empty((classes, 2))
    for k in range(classes):  # one superclass at a time: K is small, the values per superclass are few
        mine = superclass == k
        out[k] = np.percentile(np.repeat(means[mine], weights[mine]), [p_low, p_high])
    return out


def band_of(means: np.ndarray, superclass: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Band code of each subclass: 0 IID (mean >= the high cut), 2 hard (mean < the low cut), else 1 easy.

    >>> band_of(np.array([.1, .5, .9]), np.zeros(3, int), np.array([[.3, .6]])).tolist()
    [2, 1, 0]
    """
    low, high = cuts[superclass, 0], cuts[superclass, 1]
    return np.where(means >= high, 0, np.where(means < low, 2, 1))


@dataclass
class SoodBuild:
    """Everything the engine decided, per image and per subclass; :func:`build_benchmark` makes one."""

    hierarchy: Hierarchy
    options: BuildOptions
    logit: np.ndarray  # [n] CLIP logit against the image's own superclass
    score: np.ndarray  # [n] min-max normalised within the superclass
    logit_range: np.ndarray  # [K, 2] the min and max the normalisation used
    fences: np.ndarray  # [S, 2]
    mean: np.ndarray  # [S] mean score of the kept images
    kept: np.ndarray  # [S] images left after the fences
    band: np.ndarray  # [S] 0 IID, 1 easy, 2 hard
    cuts: np.ndarray  # [K, 2] (P_low cut, P_high cut)
    split: np.ndarray  # [n] code into SPLITS, OUTLIER for a removed image
    notes: List[str] = field(default_factory=list)

    def counts(self, k: Optional[int] = None) -> dict:
        """{split or "outliers": images} of superclass ``k`` (all superclasses with None)."""
        mine = slice(None) if k is None else self.hierarchy.superclass == k
        n = np.bincount(self.split[mine] + 1, minlength=len(SPLITS) + 1)
        return {"outliers": int(n[0]), **{s: int(c) for s, c in zip(SPLITS, n[1:])}}


def check_hierarchy(h: Hierarchy, where: str):
    """Refuse a subclass too small for the fences, or a superclass with fewer subclasses than the bands."""
    sizes = np.bincount(h.subclass, minlength=len(h.subclasses))
    small = np.flatnonzero(sizes < MIN_FENCE_IMAGES)
    if small.size:
        j = small[0]
        raise InputError(f"{where}: subclass {h.subclasses[j]!r} of {h.classes[h.subclass_super[j]]!r} has "
                         f"{sizes[j]} images; Tukey's fences need at least {MIN_FENCE_IMAGES} ({small.size} "
                         f"subclasses are this small): drop them from the list")
    per_class = np.bincount(h.subclass_super, minlength=len(h.classes))
    few = np.flatnonzero(per_class < MIN_SUBCLASSES)
    if few.size:
        k = few[0]
        raise InputError(f"{where}: superclass {h.classes[k]!r} has {per_class[k]} subclasses; the split needs at "
                         f"least {MIN_SUBCLASSES} (IID, easy, hard) ({few.size} superclasses have fewer)")


def build_benchmark(h: Hierarchy, logit: np.ndarray, options: Optional[BuildOptions] = None,
                    where: str = "the list") -> SoodBuild:
    """Normalise, fence, rank and split (module docstring); ``where`` names the input in error messages."""
    options = (options or BuildOptions()).check()
    check_hierarchy(h, where)
    from .sood import holdout_mask

    K, S = len(h.classes), len(h.subclasses)
    logit = np.asarray(logit, dtype=np.float64)
    lo, hi = range_within(logit, h.superclass, K).T
    flat = np.flatnonzero(hi <= lo)
    if flat.size:
        raise InputError(f"{where}: every image of superclass {h.classes[flat[0]]!r} has the same CLIP logit "
                         f"({lo[flat[0]]:.6g}): nothing to rank")
    score = (logit - lo[h.superclass]) / (hi - lo)[h.superclass]  # min-max within the superclass
    outlier, fences = tukey_fences(score, h.subclass, S, options.fence)
    keep = ~outlier
    kept = np.bincount(h.subclass[keep], minlength=S)
    mean = np.bincount(h.subclass[keep], weights=score[keep], minlength=S) / kept
    weights = kept if options.cut_by == "images" else np.ones(S, dtype=np.int64)
    cuts = cut_points(mean, weights, h.subclass_super, K, options.p_low, options.p_high)
    band = band_of(mean, h.subclass_super, cuts)

    split = np.where(outlier, OUTLIER, np.array([0, 2, 3])[band[h.subclass]])  # IID: train until held out
    iid = np.flatnonzero(split == 0)
    try:
        held = holdout_mask(h.subclass[iid], options.iid_test, options.seed)
    except InputError:
        raise ParameterError(f"--iid_test {options.iid_test}: holding out that share of every IID subclass "
                             f"leaves the train or the IID test split empty ({iid.size} IID images)") from None
    split[iid[held]] = 1
    notes = list(h.notes)
    for k in range(K):
        mine = h.subclass_super == k
        c_low, c_high = cuts[k]
        empty = [f"the easy band (no subclass mean in [{c_low:.3f}, {c_high:.3f}), the P{options.p_low:g} and "
                 f"P{options.p_high:g} cuts)"] if not (mine & (band == 1)).any() else []
        empty += [f"the hard band (no subclass mean below {c_low:.3f}, the P{options.p_low:g} cut)"
                  ] if not (mine & (band == 2)).any() else []
        if empty:
            notes.append(f"superclass {h.classes[k]!r}: nothing in {' or '.join(empty)}: with {int(mine.sum())} "
                         f"subclasses a cut falls on one subclass's own mean; more subclasses, other --p_low / "
                         f"--p_high or --cut_by subclasses change that")
    for i, name in enumerate(SPLITS):
        if not (split == i).any():
            notes.append(f"{name} is empty")
    return SoodBuild(h, options, logit, score, np.stack([lo, hi], axis=1), fences, mean, kept, band, cuts,
                     split, notes)


# --------------------------------------------------------------------------------------------- inputs


def _one_word(names: Sequence[str], what: str, where: str, notes: List[str]):
    """(distinct names as single tokens, the code of each entry): the SOOD list columns are split on whitespace,
    so inner whitespace becomes '_'."""
    uniq, code = np.unique(np.char.strip(np.asarray(names, dtype=str)), return_inverse=True)  # short names
    fixed = [re.sub(r"\s+", "_", n) for n in uniq.tolist()]  # one per distinct name
    changed = [(a, b) for a, b in zip(uniq.tolist(), fixed) if a != b]
    if changed:
        if len(set(fixed)) < len(fixed):
            raise ListFormatError(f"{where}: two {what} names differ only in spaces and '_' (e.g. "
                                  f"{changed[0][0]!r}); the SOOD list format writes both the same")
        notes.append(f"{len(changed)} {what} names had spaces, written with '_' (e.g. {changed[0][0]!r} -> "
                     f"{changed[0][1]!r})")
    return fixed, code.reshape(-1)


def _read_csv(path) -> tuple:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ListFormatError(f"{path}: no such list file") from None
    except UnicodeDecodeError as e:
        raise ListFormatError(f"{path}: not UTF-8 text ({e})") from None
    need = ("path", "superclass", "subclass")
    if not rows or any(c not in rows[0] for c in need):
        raise ListFormatError(f"{path}: a CSV list needs a header with the columns {', '.join(need)} and a row "
                              f"per image")
    for number, row in enumerate(rows, 2):
        empty = [c for c in need if not (row.get(c) or "").strip()]
        if empty:
            raise ListFormatError(f"{path}:{number}: no {', '.join(empty)} on this row")
    return ([r["path"] for r in rows], [r["superclass"] for r in rows], [r["subclass"] for r in rows], None)


def _read_list(path) -> tuple:
    """(paths, superclass names, subclass names, class ids or None) of a SOOD list or a CSV."""
    if Path(path).suffix.lower() == ".csv":
        return _read_csv(path)
    from .data import read_list

    data = read_list(path)
    if "superclass" not in data.extra or "subclass" not in data.extra:
        raise ListFormatError(f"{path}: read as a {data.format} list, which has no superclass and subclass "
                              f"columns; give a SOOD list ('path class_id superclass subclass') or a CSV with "
                              f"the columns path, superclass, subclass")
    return data.paths, data.extra["superclass"], data.extra["subclass"], data.labels


def _id_order(ids, code: np.ndarray, names: List[str]) -> List[str]:
    """The superclass names by class id when the ids are 0..K-1 and each names one superclass, else []."""
    if ids is None:
        return []
    pairs = np.unique(np.asarray(ids, dtype=np.int64) * len(names) + code)
    ids, named = pairs // len(names), pairs % len(names)
    if np.unique(ids).size != ids.size or np.unique(named).size != ids.size or (ids != np.arange(ids.size)).any():
        return []
    return [names[i] for i in named]


def _match(feature_paths: np.ndarray, paths: np.ndarray, features, where) -> np.ndarray:
    """The feature-file row of every listed path (sorted search, no per-path loop)."""
    order = np.argsort(feature_paths, kind="stable")
    sorted_paths = feature_paths[order]
    dup = np.flatnonzero(sorted_paths[1:] == sorted_paths[:-1])
    if dup.size:
        raise FeatureFileError(f"{features}: path {sorted_paths[dup[0]]!r} is in more than one row; each image "
                               f"must have one")
    pos = np.minimum(np.searchsorted(sorted_paths, paths), max(0, sorted_paths.size - 1))
    found = sorted_paths[pos] == paths if sorted_paths.size else np.zeros(paths.size, bool)
    if not found.all():
        missing = paths[~found]
        raise FeatureFileError(f"{features}: {missing.size} of the {paths.size} images of {where} have no row "
                               f"in it (first: {missing[0]!r}); extract features of every listed image (paths "
                               f"must match the extraction list's exactly)")
    return order[pos]


def load_hierarchy(features, list_path=None, superclasses=None) -> Hierarchy:
    """The candidate images, matched to the rows of the feature file ``features``.

    The hierarchy comes from ``list_path`` (a SOOD list, or a CSV with the columns path, superclass,
    subclass) or, without one, from the file's own ``superclass`` and ``subclass`` columns (extracted from a
    SOOD list). Class ids follow ``superclasses`` (a file, one name a line), else the list's class ids (when
    they are 0..K-1, one name each), else the sorted names.
    """
    notes: List[str] = []
    with FeatureFile(features) as f:
        check_open_clip(f)
        feature_paths = f.paths()
        if feature_paths is None:
            raise FeatureFileError(f"{features}: has no 'paths' dataset to match the list's images with")
        if list_path is None:
            if not (f.has("superclass") and f.has("subclass")):
                raise FeatureFileError(f"{features}: has no superclass and subclass columns (extract it from a "
                                       f"SOOD list with --list_format sood), so the hierarchy needs --list")
            paths, sup, sub, ids = feature_paths, f.read("superclass"), f.read("subclass"), f.labels()
            where = f"{features} (its superclass and subclass columns)"
        else:
            paths, sup, sub, ids = _read_list(list_path)
            where = str(list_path)
    paths = np.asarray(paths, dtype=object)
    if paths.size == 0:
        raise ListFormatError(f"{where}: no images")
    uniq, count = np.unique(paths, return_counts=True)
    if (count > 1).any():
        raise ListFormatError(f"{where}: image {uniq[count > 1][0]!r} is listed {count[count > 1][0]} times; "
                              f"each image belongs to one subclass")
    rows = (np.arange(paths.size) if list_path is None
            else _match(np.asarray(feature_paths, dtype=object), paths, features, where))
    if rows.size < len(feature_paths):
        notes.append(f"{len(feature_paths) - rows.size} rows of {features} are not in {where}: left out")
    names, sup = _one_word(sup, "superclass", where, notes)  # sorted distinct names, code of each image
    sub_names, sub = _one_word(sub, "subclass", where, notes)
    if superclasses is not None:
        from .backbones import read_lines

        classes = [re.sub(r"\s+", "_", c) for c in read_lines(superclasses, "superclass names")]
        if len(set(classes)) != len(classes):
            raise InputError(f"{superclasses}: a superclass is named twice")
        unknown = sorted(set(names) - set(classes))
        unused = [c for c in classes if c not in set(names)]
        if unknown or unused:
            what = (f"superclass {unknown[0]!r} of {where} is not in it" if unknown
                    else f"superclass {unused[0]!r} has no image in {where}")
            raise InputError(f"{superclasses}: {what}; it must name each superclass of the list once")
    else:
        classes = _id_order(ids, sup, names) or sorted(names)
    position = {c: i for i, c in enumerate(classes)}
    sup_code = np.asarray([position[n] for n in names], dtype=np.int64)[sup]  # a lookup per name, not per image
    key, subclass = np.unique(sup_code * len(sub_names) + sub, return_inverse=True)
    order = np.argsort(rows, kind="stable")
    return Hierarchy(rows[order], paths[order], sup_code[order], subclass.reshape(-1)[order].astype(np.int64),
                     list(classes), [sub_names[i] for i in key % len(sub_names)],
                     (key // len(sub_names)).astype(np.int64), where, notes)


def check_open_clip(f: FeatureFile):
    """Refuse a feature file that open_clip did not make: the scores need CLIP's image-text space."""
    backend = _attr(f.attrs, "backend")
    if backend != "open_clip":
        raise FeatureFileError(f"{f.path}: not an open_clip feature file (backend {backend!r}); the engine scores "
                               f"images against CLIP text embeddings: extract with --backend open_clip")


def _attr(attrs, key, default=None):
    value = attrs.get(key, default)
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def prompt_name(superclass: str) -> str:
    """The text a superclass name stands for in a prompt: '_' read as a space.

    >>> prompt_name("sea_animal")
    'sea animal'
    """
    return superclass.replace("_", " ")


def head_from_file(fc, classes: Sequence[str], attrs: dict) -> Head:
    """The rows of a zero-shot fc file (``python -m ood.heads zeroshot``, ``--fc_save_path``) for ``classes``,
    looked up by name (``sea_animal`` or ``sea animal``); the file must come from the feature file's model."""
    head = read_head(fc)
    if _attr(head.attrs, "backend") != "open_clip" or "logit_scale" not in head.attrs:
        raise FeatureFileError(f"{fc}: not an open_clip zero-shot head (no logit_scale); make one with python -m "
                               f"ood.heads zeroshot")
    for key in ("model", "checkpoint_sha256"):
        mine, theirs = _attr(head.attrs, key) or "", _attr(attrs, key) or ""
        if mine and theirs and mine != theirs:
            raise FeatureFileError(f"{fc}: made with {key} {mine!r}, the features with {theirs!r}; the text "
                                   f"embeddings must come from the model that embedded the images")
    names = {n: i for i, n in enumerate(head.class_names or [])}
    rows = [names.get(c, names.get(prompt_name(c), -1)) for c in classes]
    if -1 in rows:
        raise FeatureFileError(f"{fc}: has no class named {classes[rows.index(-1)]!r} (its classes must include "
                               f"every superclass)")
    return Head(head.weight[rows], head.bias[rows], list(classes),
                {"logit_scale": float(_attr(head.attrs, "logit_scale")), "text_source": str(fc)})


def head_from_model(attrs: dict, classes: Sequence[str], templates: Optional[Sequence[str]] = None, *,
                    model: Optional[str] = None, checkpoint: Optional[str] = None, device: str = "auto") -> Head:
    """The zero-shot head of ``classes`` from the open_clip model that made a feature file (its ``model``,
    ``checkpoint`` and ``random_init_seed`` attributes, or ``model``/``checkpoint`` where the files moved).

    The checkpoint must hash to the file's ``checkpoint_sha256``; the text is CLIP's recipe
    (:func:`~ood.backbones.open_clip_backend.zeroshot_head`) over ``templates`` (CLIP's 80 by default).
    """
    from .backbones.open_clip_backend import IMAGENET_TEMPLATES, zeroshot_head
    from .extract import ModelSpec
    from .runtime import checkpoint_attrs
    from .split import resolve_device

    model = model or _attr(attrs, "model")
    checkpoint = checkpoint or _attr(attrs, "checkpoint") or None
    seed = _attr(attrs, "random_init_seed")
    if not model:
        raise InputError("the feature file names no model; pass --model (or --head)")
    want = _attr(attrs, "checkpoint_sha256") or ""
    got = checkpoint_attrs(checkpoint)["checkpoint_sha256"] if checkpoint else ""
    if want and got and want != got:
        raise InputError(f"{checkpoint}: its sha256 differs from the checkpoint the features were extracted with; "
                         f"the text embeddings must come from the same weights")
    spec = ModelSpec(model, "open_clip", checkpoint=checkpoint, random_init=seed is not None and not checkpoint,
                     seed=int(seed or 0))
    backbone = spec.build()
    backbone.model.to(resolve_device(device))
    templates = list(templates or IMAGENET_TEMPLATES)
    w, b, scale = zeroshot_head(backbone.model, backbone.tokenizer, [prompt_name(c) for c in classes], templates)
    return Head(w, b, list(classes), {"logit_scale": scale, "templates": templates,
                                      "text_source": f"{model} ({spec.weights})"})


def clip_logits(features, h: Hierarchy, head: Head, block: int = 8192, quiet: bool = True) -> np.ndarray:
    """[n] CLIP logit of each image against its own superclass: ``W_s . f / |f| + b_s``, one pass by blocks."""
    from .progress import Progress

    out = np.empty(len(h))
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    with FeatureFile(features) as f, Progress(total=f.n, desc="score", unit="row", quiet=quiet) as bar:
        if f.dim != head.dim:
            raise FeatureFileError(f"{features}: features of width {f.dim}, the text embeddings have {head.dim} "
                                   f"(another model?)")
        for lo, hi, x in f.blocks(block):
            a, z = np.searchsorted(h.rows, [lo, hi])
            v = x[h.rows[a:z] - lo].astype(np.float64)
            norm = np.linalg.norm(v, axis=1)
            bad = ~np.isfinite(norm) | (norm == 0)
            if bad.any():
                raise FeatureFileError(f"{features}: row {h.rows[a + np.argmax(bad)]} is zero or holds NaN or Inf")
            sup = h.superclass[a:z]
            out[a:z] = np.einsum("nd,nd->n", v / norm[:, None], w[sup]) + b[sup]
            bar.update(hi - lo)
    return out


# --------------------------------------------------------------------------------------------- outputs


def list_text(res: SoodBuild, split: str) -> str:
    """The SOOD classification list of one split: ``path class_id superclass subclass`` a line."""
    h = res.hierarchy
    idx = np.flatnonzero(res.split == SPLITS.index(split))
    classes, subs = np.asarray(h.classes, dtype=object), np.asarray(h.subclasses, dtype=object)
    return "".join(f"{p} {c} {n} {s}\n" for p, c, n, s in
                   zip(h.paths[idx], h.superclass[idx], classes[h.superclass[idx]], subs[h.subclass[idx]]))


def _csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def outliers_csv(res: SoodBuild) -> str:
    """The removed images: path, superclass, subclass, score and the fences they fell outside."""
    h = res.hierarchy
    idx = np.flatnonzero(res.split == OUTLIER)
    j = h.subclass[idx]
    return _csv(["path", "class_id", "superclass", "subclass", "logit", "score", "fence_low", "fence_high"],
                [[h.paths[i], h.superclass[i], h.classes[h.superclass[i]], h.subclasses[s], f"{res.logit[i]:.6g}",
                  f"{res.score[i]:.6f}", f"{res.fences[s, 0]:.6f}", f"{res.fences[s, 1]:.6f}"]
                 for i, s in zip(idx, j)])


def subclass_csv(res: SoodBuild) -> str:
    """One row per subclass: its images, outliers, mean score, band and images in each split."""
    h = res.hierarchy
    S = len(h.subclasses)
    per = np.zeros((S, len(SPLITS) + 1), dtype=np.int64)
    np.add.at(per, (h.subclass, res.split + 1), 1)
    order = np.lexsort((-res.mean, h.subclass_super))
    return _csv(["superclass", "class_id", "subclass", "images", "outliers", "mean_score", "band", *SPLITS],
                [[h.classes[h.subclass_super[j]], h.subclass_super[j], h.subclasses[j], per[j].sum(), per[j, 0],
                  f"{res.mean[j]:.6f}", BANDS[res.band[j]], *per[j, 1:]] for j in order])


def _range(values) -> str:
    return f"{values.min():.3f}-{values.max():.3f}" if values.size else "-"


def summary_rows(res: SoodBuild):
    """(header, rows) of the summary: per superclass (and all) the subclasses per band, the images per split,
    the outliers, the cut points and the range of the subclass means in each band."""
    h, o = res.hierarchy, res.options
    header = ["Superclass", "Id", "Subclasses", "IID/easy/hard", "Train", "IID test", "Easy", "Hard", "Outliers",
              f"Cut P{o.p_low:g}", f"Cut P{o.p_high:g}", "IID means", "Easy means", "Hard means"]
    rows = []
    for k in list(range(len(h.classes))) + [None]:
        mine = np.ones(len(h.subclasses), bool) if k is None else h.subclass_super == k
        n = res.counts(k)
        bands = [int((mine & (res.band == b)).sum()) for b in range(3)]
        cuts = ["-", "-"] if k is None else [f"{c:.3f}" for c in res.cuts[k]]
        rows.append(["all" if k is None else h.classes[k], "-" if k is None else str(k), str(int(mine.sum())),
                     "/".join(map(str, bands)), *(str(n[s]) for s in SPLITS), str(n["outliers"]), *cuts,
                     *(_range(res.mean[mine & (res.band == b)]) for b in range(3))])
    return header, rows


def format_summary(res: SoodBuild, fmt: str = "table") -> str:
    from .report import render

    o = res.options
    title = (f"SOOD build: {len(res.hierarchy)} images, {len(res.hierarchy.classes)} superclasses, "
             f"{len(res.hierarchy.subclasses)} subclasses; IID = subclass mean >= the P{o.p_high:g} cut, hard < "
             f"the P{o.p_low:g} cut (percentiles over {o.cut_by}), fences {o.fence:g} IQR, IID test "
             f"{100 * o.iid_test:g}% (seed {o.seed})")
    lines = [("% " if fmt == "latex" else "") + title, ""] + render(*summary_rows(res), fmt)
    lines += [("% " if fmt == "latex" else "") + f"note: {n}" for n in res.notes]
    return "\n".join(lines) + "\n"


def record(res: SoodBuild, head: Head, inputs: dict) -> dict:
    """The JSON beside the lists: every choice, the inputs, the per-superclass and per-subclass figures."""
    h = res.hierarchy
    meta = {k: v for k, v in base_attrs().items() if k in ("created", "library_versions")}
    meta["library_versions"] = json.loads(meta["library_versions"])
    per_class = []
    for k, name in enumerate(h.classes):
        per_class.append({"class_id": k, "superclass": name, "prompt": prompt_name(name),
                          "logit_min": float(res.logit_range[k, 0]), "logit_max": float(res.logit_range[k, 1]),
                          "cut_low": float(res.cuts[k, 0]), "cut_high": float(res.cuts[k, 1]),
                          "subclasses": {b: [h.subclasses[j] for j in np.flatnonzero((h.subclass_super == k)
                                                                                      & (res.band == i))]
                                         for i, b in enumerate(BANDS)},
                          "images": res.counts(k)})
    subs = [{"superclass": h.classes[h.subclass_super[j]], "subclass": h.subclasses[j],
             "kept": int(res.kept[j]), "mean_score": float(res.mean[j]), "band": BANDS[res.band[j]],
             "fence_low": float(res.fences[j, 0]), "fence_high": float(res.fences[j, 1])}
            for j in range(len(h.subclasses))]
    return {"engine": "ood.sood_build (SOOD-ImageNet data engine: CLIP score, Tukey fences, percentile split)",
            "options": asdict(res.options),
            "rules": {"score": "CLIP logit vs the own superclass's prompt-averaged text embedding, min-max "
                               "normalised over the superclass's images",
                      "outliers": f"score < Q1 - {res.options.fence:g} IQR or > Q3 + {res.options.fence:g} IQR of "
                                  f"the subclass (linear quartiles)",
                      "rank": "mean score of the subclass's kept images",
                      "cuts": f"np.percentile of the subclass means over {res.options.cut_by} of the superclass",
                      "bands": "IID: mean >= high cut; easy: low cut <= mean < high cut; hard: mean < low cut",
                      "iid_test": "round(iid_test * n) images of every IID subclass (seeded, ood.sood.holdout_mask)"},
            "inputs": {**inputs, "hierarchy": h.source},
            "text": {"source": head.attrs.get("text_source"), "logit_scale": head.attrs.get("logit_scale"),
                     "templates": head.attrs.get("templates")},  # None: in the --head file's making
            "files": {s: f"{s}.txt" for s in SPLITS},
            "counts": res.counts(), "superclasses": per_class, "subclasses": subs, "notes": res.notes, **meta}


def score_figure(res: SoodBuild, bins: int = 40):
    """Per superclass: histograms of the kept images' scores by band, the subclass means as triangles along the
    top (coloured by band), the two cut points as lines; returns the matplotlib Figure. The counts come from one
    ``bincount`` over (superclass, band, bin) and the layout is fixed, so 56 panels draw in a few seconds."""
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    from .plots import _RC, _figure

    h, o = res.hierarchy, res.options
    K = len(h.classes)
    cols = min(K, max(2, math.ceil(math.sqrt(K))))
    rows = math.ceil(K / cols)
    edges = np.linspace(0, 1, bins + 1)
    kept = res.split != OUTLIER
    cell = (h.superclass[kept] * 3 + res.band[h.subclass[kept]]) * bins + np.minimum(
        (res.score[kept] * bins).astype(np.int64), bins - 1)
    counts = np.bincount(cell, minlength=K * 3 * bins).reshape(K, 3, bins)
    outliers = np.bincount(h.superclass[~kept], minlength=K)
    styles = (":", "--")
    width, height, top, bottom, left = 2.6 * cols, 1.8 * rows + 0.95, 0.72, 0.42, 0.45
    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        fig.subplots_adjust(left=left / width, right=1 - 0.12 / width, bottom=bottom / height,
                            top=1 - top / height, wspace=0.28, hspace=0.55)
        for k in range(K):
            ax = fig.add_subplot(rows, cols, k + 1)
            for b, color in enumerate(BAND_COLORS):
                ax.stairs(counts[k, b], edges, fill=True, color=color, alpha=0.35, lw=0)
                ax.stairs(counts[k, b], edges, color=color, lw=0.8)
            subs = h.subclass_super == k
            ax.scatter(res.mean[subs], np.full(subs.sum(), 0.97), marker="v", s=22, lw=0.5, edgecolors="black",
                       c=[BAND_COLORS[b] for b in res.band[subs]], transform=ax.get_xaxis_transform(), zorder=3,
                       clip_on=False)
            for c, style in zip(res.cuts[k], styles):
                ax.axvline(c, color="black", ls=style, lw=0.9)
            ax.set_title(f"{h.classes[k]} ({int(subs.sum())} subclasses, {outliers[k]} outliers)", pad=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, max(1, counts[k].max()) * 1.12)
            ax.set_xticks([0, 0.5, 1], ["0", "0.5", "1"])
            ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
            if k % cols == 0:
                ax.set_ylabel("images")
        handles = ([Patch(facecolor=c, edgecolor=c, alpha=0.6, label=f"{name} images")
                    for name, c in zip(("IID", "easy shift", "hard shift"), BAND_COLORS)]
                   + [Line2D([], [], ls="", marker="v", color="white", markeredgecolor="black",
                             label="subclass means (band colour)")]
                   + [Line2D([], [], color="black", ls=st, lw=0.9, label=f"P{p:g} cut")
                      for st, p in zip(styles, (o.p_low, o.p_high))])
        fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.04 / height),
                   ncol=6 if cols >= 3 else 3, frameon=False)
        fig.text(0.5, 0.06 / height, "CLIP score against the superclass prompt (min-max normalised in the "
                 "superclass)", ha="center", va="bottom")
    return fig


def write_split_features(features, res: SoodBuild, head: Head, out_dir, overwrite: bool = False,
                         block: int = 8192, quiet: bool = True) -> List[Path]:
    """``<split>.h5`` for every split (the listed rows of ``features``, class ids as labels, superclass and
    subclass columns) and ``fc.h5`` (the superclasses' zero-shot head): ``benchmark.py --protocol sood`` runs on
    them with no second extraction. One pass over the file; a failure leaves no split file."""
    from .progress import Progress

    h, out_dir = res.hierarchy, Path(out_dir)
    classes, subs = np.asarray(h.classes, dtype=object), np.asarray(h.subclasses, dtype=object)
    writers = []
    with FeatureFile(features) as f:
        attrs = {k: _attr(f.attrs, k) for k in MODEL_ATTRS if k in f.attrs}
        dtype = "float16" if f.read("features", 0, 1).dtype == np.float16 else "float32"
        try:
            for i, s in enumerate(SPLITS):
                writers.append(FeatureWriter(out_dir / f"{s}.h5", int((res.split == i).sum()), f.dim, dtype=dtype,
                                             extra=("superclass", "subclass"), overwrite=overwrite,
                                             attrs={**attrs, "list_file": str(out_dir / f"{s}.txt"),
                                                    "sood_build_source": str(features)}))
            with Progress(total=f.n, desc="write", unit="row", quiet=quiet) as bar:
                for lo, hi, x in f.blocks(block):
                    a, z = np.searchsorted(h.rows, [lo, hi])
                    for i, w in enumerate(writers):
                        idx = a + np.flatnonzero(res.split[a:z] == i)
                        if idx.size:
                            w.append(x[h.rows[idx] - lo], labels=h.superclass[idx], paths=list(h.paths[idx]),
                                     superclass=classes[h.superclass[idx]], subclass=subs[h.subclass[idx]])
                    bar.update(hi - lo)
            for w in writers:
                w.close()
        except BaseException:
            for w in writers:
                if w.tmp.exists():
                    w.discard()
            raise
    write_fc(out_dir / "fc.h5", head.weight, head.bias, h.classes, **attrs,
             logit_scale=head.attrs["logit_scale"])
    return [out_dir / f"{s}.h5" for s in SPLITS] + [out_dir / "fc.h5"]


def text_outputs(res: SoodBuild, rec: dict, out_dir, fmt: str = "table") -> list:
    """(path, text) of every text output: the four lists, outliers.csv, subclasses.csv, summary.txt and
    sood_build.json."""
    from .report import to_json

    out_dir = Path(out_dir)
    return ([(out_dir / f"{s}.txt", list_text(res, s)) for s in SPLITS]
            + [(out_dir / "outliers.csv", outliers_csv(res)), (out_dir / "subclasses.csv", subclass_csv(res)),
               (out_dir / "summary.txt", format_summary(res, fmt)), (out_dir / "sood_build.json", to_json(rec))])


OUTPUT_NAMES = tuple(f"{s}.txt" for s in SPLITS) + ("outliers.csv", "subclasses.csv", "summary.txt",
                                                    "sood_build.json", "scores.png")


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from .cli import add_device_option

    p = argparse.ArgumentParser(prog="python -m ood.sood build", description=__doc__.splitlines()[0])
    p.add_argument("features", help="open_clip feature file of the candidate images (extract_features.py "
                                    "--backend open_clip)")
    p.add_argument("out_dir", help="folder for the lists, summary, JSON and scores.png")
    p.add_argument("--list", help="SOOD list ('path class_id superclass subclass') or CSV (path,superclass,"
                                  "subclass) of the candidates (default: the feature file's own columns)")
    p.add_argument("--superclasses", help="superclass names, one a line, in class-id order")
    p.add_argument("--head", help="zero-shot fc file with the superclasses' text embeddings (python -m ood.heads "
                                  "zeroshot); default: computed with the feature file's open_clip model")
    p.add_argument("--model", help="open_clip model (name or JSON config) when the file's has moved")
    p.add_argument("--checkpoint", help="open_clip weights when the file's have moved")
    p.add_argument("--templates", help="prompt templates, one a line, '{}' = superclass (default: CLIP's 80; "
                                       "a single '{}' line is the engine's bare name)")
    p.add_argument("--p_high", type=float, default=40.0, help="IID: subclass mean >= this percentile (40)")
    p.add_argument("--p_low", type=float, default=20.0, help="hard shift: subclass mean < this percentile (20)")
    p.add_argument("--fence", type=float, default=1.5, help="Tukey's fences at k IQR (1.5)")
    p.add_argument("--cut_by", choices=CUT_BY, default="images",
                   help="percentiles over images (the engine: a subclass weighs by its size) or over subclasses")
    p.add_argument("--iid_test", type=float, default=0.1, help="share of every IID subclass held out as IID test")
    p.add_argument("--seed", type=int, default=0, help="seed of the IID train / test split")
    p.add_argument("--features_out", action="store_true",
                   help="also write <split>.h5 (rows of FEATURES) and fc.h5, ready for benchmark.py --protocol sood")
    p.add_argument("--format", choices=("table", "markdown", "latex"), default="table", help="summary table format")
    add_device_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in OUT_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines; the summary still prints")
    return p


def run(args) -> int:
    from .backbones import read_lines
    from .cli import stderr_log
    from .fileio import check_writable, write_texts
    from .plots import _save

    log = stderr_log(args.quiet)
    options = BuildOptions(args.p_high, args.p_low, args.fence, args.cut_by, args.iid_test, args.seed).check()
    out_dir = Path(args.out_dir)
    names = OUTPUT_NAMES + ((tuple(f"{s}.h5" for s in SPLITS) + ("fc.h5",)) if args.features_out else ())
    for name in names:
        check_writable(out_dir / name, "output")
        if (out_dir / name).exists() and not args.overwrite:
            raise InputError(f"{out_dir / name}: exists already; pass --overwrite to replace it")
    templates = read_lines(args.templates, "templates") if args.templates else None
    if templates:
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise InputError(f"{args.templates}: template {bad[0]!r} has no '{{}}' for the superclass name")
    h = load_hierarchy(args.features, args.list, args.superclasses)
    check_hierarchy(h, h.source)
    with FeatureFile(args.features) as f:
        attrs = dict(f.attrs)
    if args.head:
        head = head_from_file(args.head, h.classes, attrs)
    else:
        log(f"text: {len(h.classes)} superclass prompts through {args.model or _attr(attrs, 'model')}")
        head = head_from_model(attrs, h.classes, templates, model=args.model, checkpoint=args.checkpoint,
                               device=args.device)
    logit = clip_logits(args.features, h, head, quiet=args.quiet)
    res = build_benchmark(h, logit, options, h.source)
    inputs = {"features": str(args.features), "list": args.list, "superclasses": args.superclasses,
              "head": args.head, "model": _attr(attrs, "model"), "checkpoint": _attr(attrs, "checkpoint"),
              "checkpoint_sha256": _attr(attrs, "checkpoint_sha256"), "templates_file": args.templates}
    rec = record(res, head, inputs)
    if args.features_out:
        write_split_features(args.features, res, head, out_dir, overwrite=True, quiet=args.quiet)
        rec["files"].update({s + "_features": f"{s}.h5" for s in SPLITS}, fc="fc.h5")
    _save(score_figure(res), out_dir / "scores.png", 150)
    write_texts(text_outputs(res, rec, out_dir, args.format))
    sys.stdout.write(format_summary(res, args.format))
    log(f"wrote {out_dir}/: " + ", ".join(names))
    return 0


def main(argv=None) -> int:
    """``python -m ood.sood build FEATURES OUT_DIR [options]`` (see :func:`build_parser`)."""
    from .cli import run_main

    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))
