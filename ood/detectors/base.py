"""The detector interface and the one registry every CLI builds detectors from.

A detector's constructor takes only hyperparameters (with the paper's defaults, checked when it is created),
``fit(train)`` learns what it needs from the ID train data, ``score(x)`` returns float64 scores, higher = more
in-distribution. Both take a :class:`~ood.split.Split` or plain arrays, as scikit-learn and pytorch-ood do:

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> W, b = rng.normal(size=(3, 8)), np.zeros(3)
>>> det = ood.create("energy").fit(rng.normal(size=(50, 8)), head=(W, b))
>>> det.score(rng.normal(size=(4, 8))).shape
(4,)

``@register("name")`` next to each implementation fills the registry; ``create("name", **params)`` builds.
Subclasses implement ``fit(train: Split)`` and ``score(split: Split)``; the base class wraps them so arrays are
turned into splits, an unfitted detector refuses to score (:class:`~ood.errors.NotFittedError`), and the
fitted train split's identity (``train_uid_``) is known to every cache key derived from the fit.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Dict, Optional, Type

import numpy as np

from ..errors import InputError, NotFittedError, ParameterError
from ..split import Split, as_split


@dataclass(frozen=True)
class Range:
    """The values a hyperparameter allows: ``kind`` int or float, bounds (open or closed), None allowed."""

    kind: type
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    none: bool = False

    def describe(self) -> str:
        lo = "" if self.lo is None else f"{self.lo} <{'' if self.lo_open else '='} "
        hi = "" if self.hi is None else f" <{'' if self.hi_open else '='} {self.hi}"
        text = f"{'an integer' if self.kind is int else 'a finite number'}" + (f" with {lo}x{hi}" if lo or hi else "")
        return text + (" (or None: chosen from the data)" if self.none else "")

    def check(self, where: str, value):
        if value is None and self.none:
            return None
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (self.kind is float or float(value).is_integer())
        ok = ok and not (self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)))
        ok = ok and not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))
        if not ok:
            raise ParameterError(f"{where} must be {self.describe()}; got {value!r}")
        return int(value) if self.kind is int else float(value)


#: the allowed values of the hyperparameters, by name (a detector's ``ranges`` overrides an entry)
PARAM_RANGES = {
    "k": Range(int, 1), "M": Range(int, 1), "dim": Range(int, 0, none=True), "seed": Range(int, 0),
    "gamma": Range(float, 0, lo_open=True), "T": Range(float, 0, lo_open=True),
    "alpha": Range(float, 0, 1, lo_open=True),
    "clip_quantile": Range(float, 0, 1), "clip_quantile_local": Range(float, 0, 1),
    "percentile": Range(float, 0, 100, hi_open=True), "percentile_low": Range(float, 0, 100),
    "percentile_high": Range(float, 0, 100), "sparsity": Range(float, 0, 1, hi_open=True),
    "variance": Range(float, 0, 1, lo_open=True),
    "nlist": Range(int, 0), "nprobe": Range(int, 0), "hnsw_m": Range(int, 2), "ef_search": Range(int, 0),
}


_REGISTRY: Dict[str, Type["Detector"]] = {}


class Detector:
    """Base class: subclasses set ``requires`` and implement ``score`` (and ``fit`` when they learn)."""

    name: str = ""
    #: what the inputs must provide: "train_labels" (class-conditional statistics), or the name of an
    #: extra input the run puts in ``split.extras`` (e.g. "group_head")
    requires: tuple = ()
    #: run when no --methods are given; False for detectors whose cost grows with train x test rows (kNN)
    default: bool = True
    #: the values --tune tries, next to the defaults
    grid: dict = {}
    #: allowed values of hyperparameters beyond (or instead of) PARAM_RANGES
    ranges: dict = {}
    #: prefixes of the memo keys of large per-row values this detector keeps on the scored splits for others
    #: (ReAct's clipped logits): a run drops them after the last detector that names them (ood.engine)
    shares: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = _fit_wrapper(cls.__dict__["fit"])
        if "score" in cls.__dict__:
            cls.score = _score_wrapper(cls.__dict__["score"])

    def fit(self, train: Split) -> "Detector":
        return self

    def score(self, split: Split) -> np.ndarray:
        raise NotImplementedError

    @property
    def is_fitted(self) -> bool:
        return getattr(self, "train_uid_", None) is not None

    def note(self, message: str):
        """Record something a reader of the results should know about this fit or score (the benchmark puts
        it beside the detector's row), e.g. a degenerate statistic or a fitted value at its search bound."""
        self.__dict__.setdefault("notes_", []).append(message)

    def fitted_values(self) -> dict:
        """The scalar values learnt by ``fit`` (attributes ending in ``_``: ViM's dim_ and alpha_, a fitted
        temperature T_, a clip value clip_), for the provenance of a result."""
        out = {}
        for k, v in vars(self).items():
            if k.endswith("_") and not k.startswith("_") and k not in ("train_uid_", "notes_"):
                if isinstance(v, (bool, int, float, np.integer, np.floating)):
                    out[k] = v.item() if hasattr(v, "item") else v
        return out

    def params(self) -> dict:
        """The hyperparameters and their current values."""
        return {k: getattr(self, k) for k in signature_defaults(type(self))}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _fit_wrapper(fn):
    @functools.wraps(fn)
    def fit(self, train, labels=None, head=None, logits=None, device="cpu"):
        """Fit on ``train``: a :class:`~ood.split.Split`, or features [N, D] with optional ``labels`` [N],
        ``head`` (W [C, D], b [C]) and ``logits`` [N, C]. Returns the detector."""
        split = as_split(train, "train", labels=labels, head=head, logits=logits, device=device)
        fn(self, split)
        self.train_uid_, self._fit_head, self._fit_device = split.uid, split.head, split.device
        return self
    return fit


def _score_wrapper(fn):
    @functools.wraps(fn)
    def score(self, split, logits=None) -> np.ndarray:
        """Scores of ``split`` (a :class:`~ood.split.Split`, or features [N, D] with optional ``logits``),
        float64, higher = more in-distribution."""
        stateless = type(self).fit is Detector.fit and isinstance(split, Split)
        if not (self.is_fitted or stateless):
            raise NotFittedError(f"this {self.name or type(self).__name__} detector is not fitted yet: call "
                                 f"fit(train_features, ...) before score")
        if not stateless or self.is_fitted:
            split = as_split(split, "scored", head=self._fit_head, logits=logits, device=self._fit_device)
        return np.asarray(fn(self, split), dtype=np.float64)
    return score


Detector.fit = _fit_wrapper(Detector.fit)
Detector.score = _score_wrapper(Detector.score)


def register(name: str):
    """Class decorator: add a detector to the registry under ``name``."""
    def deco(cls):
        if name in _REGISTRY:
            raise InputError(f"detector {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def signature_defaults(cls) -> dict:
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self" and p.default is not inspect._empty}


def list_detectors() -> list:
    return list(_REGISTRY)


def get_detector_class(name: str) -> Type[Detector]:
    if name not in _REGISTRY:
        raise ParameterError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def check_params(name: str, params: dict) -> dict:
    """The parameters of detector ``name``, each checked against its range (type, bounds, finite); an
    unknown parameter or a value out of range raises :class:`~ood.errors.ParameterError` naming it."""
    cls = get_detector_class(name)
    allowed = signature_defaults(cls)
    out = {}
    for key, value in params.items():
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise ParameterError(f"unknown parameter {name}.{key}; {name} takes: {known}")
        spec = cls.ranges.get(key) or PARAM_RANGES.get(key)
        default = allowed[key]
        if spec is None and isinstance(default, (int, float)) and not isinstance(default, bool):
            spec = Range(int if isinstance(default, int) else float, none=default is None)
        out[key] = spec.check(f"{name}.{key}", value) if spec is not None else value
    return out


def create(name: str, **params) -> Detector:
    """Build a detector by registry name, its hyperparameters checked before any data is read; unknown names
    or parameters and values out of range are errors, never ignored.

    >>> create("gen", gamma=0.2)
    GEN(gamma=0.2, M=100)
    """
    return get_detector_class(name)(**check_params(name, params))


def convert_param(name: str, key: str, text: str):
    """Turn a command-line string into the type of the parameter's default."""
    default = signature_defaults(get_detector_class(name)).get(key)
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(default, int) and not isinstance(default, bool):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if default is None:
            for cast in (int, float):
                try:
                    return cast(text)
                except ValueError:
                    continue
            return None if text.lower() == "none" else text
    except ValueError:
        raise InputError(f"parameter {name}.{key}: cannot read {text!r} as {type(default).__name__}") from None
    return text


def parse_param_args(items, flags: Optional[dict] = None, methods=None) -> dict:
    """``["vim.dim=512", ...]`` plus ViM/GEN flags ``{"gamma": "0.1"}`` into ``{method: {key: value}}``.

    A flag applies to every selected detector that has a parameter of that name.
    """
    out: dict = {}
    for item in items or ():
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise InputError(f"--param {item!r}: expected METHOD.NAME=VALUE, e.g. vim.dim=512")
        lhs, value = item.split("=", 1)
        method, key = lhs.split(".", 1)
        get_detector_class(method)
        check_params(method, {key: None} if key not in signature_defaults(get_detector_class(method)) else {})
        out.setdefault(method, {})[key] = convert_param(method, key, value)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        for method in methods or list_detectors():
            if key in signature_defaults(get_detector_class(method)):
                out.setdefault(method, {}).setdefault(key, convert_param(method, key, str(value)))
    return out
