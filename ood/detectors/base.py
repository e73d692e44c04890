"""The detector interface and the one registry every CLI builds detectors from.

A detector's constructor takes only hyperparameters (with the paper's defaults), ``fit(train)`` learns what
it needs from the ID train split, ``score(split)`` returns float64 scores, higher = more in-distribution.
``@register("name")`` next to each implementation fills the registry; ``create("name", **params)`` builds.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional, Type

import numpy as np

from ..split import Split
from ..errors import InputError

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

    def fit(self, train: Split) -> "Detector":
        return self

    def score(self, split: Split) -> np.ndarray:
        raise NotImplementedError

    def note(self, message: str):
        """Record something a reader of the results should know about this fit or score (the benchmark puts
        it beside the detector's row), e.g. a degenerate statistic or a fitted value at its search bound."""
        self.__dict__.setdefault("notes_", []).append(message)

    def params(self) -> dict:
        """The hyperparameters and their current values."""
        return {k: getattr(self, k) for k in signature_defaults(type(self))}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


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
        raise InputError(f"unknown method {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def create(name: str, **params) -> Detector:
    """Build a detector by registry name; unknown names or parameters are errors, never ignored."""
    cls = get_detector_class(name)
    allowed = signature_defaults(cls)
    for key in params:
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise InputError(f"unknown parameter {name}.{key}; {name} takes: {known}")
    return cls(**params)


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
        if key not in signature_defaults(get_detector_class(method)):
            create(method, **{key: None})  # raises the unknown-parameter error
        out.setdefault(method, {})[key] = convert_param(method, key, value)
    for key, value in (flags or {}).items():
        if value is None:
            continue
        for method in methods or list_detectors():
            if key in signature_defaults(get_detector_class(method)):
                out.setdefault(method, {}).setdefault(key, convert_param(method, key, str(value)))
    return out
