"""ood: feature extraction to HDF5 and fast, exact post-hoc OOD detector benchmarks.

The public API, three lines from arrays to metrics:

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> B, W, b = rng.normal(size=(8, 16)), rng.normal(size=(4, 16)), np.zeros(4)
>>> train, test = rng.normal(size=(200, 8)) @ B, rng.normal(size=(50, 8)) @ B  # ID: an 8-dim subspace
>>> far = 3 * rng.normal(size=(50, 16))  # OOD: every direction
>>> det = ood.create("vim").fit(train, head=(W, b))
>>> ood.evaluate(det.score(test), det.score(far))["auroc"]
1.0

Names are imported on first use, so ``import ood`` and the command lines' ``--help`` stay fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> (module, attribute)
_EXPORTS = {
    "create": ("ood.detectors", "create"),
    "list_detectors": ("ood.detectors", "list_detectors"),
    "register": ("ood.detectors", "register"),
    "Detector": ("ood.detectors", "Detector"),
    "evaluate": ("ood.metrics", "evaluate"),
    "FeatureFile": ("ood.features", "FeatureFile"),
    "Head": ("ood.features", "Head"),
    "Split": ("ood.split", "Split"),
    "run_benchmark": ("ood.benchmark", "run_benchmark"),
    "load_plugins": ("ood.benchmark", "load_plugins"),
    "Result": ("ood.engine", "Result"),
    "InputError": ("ood.errors", "InputError"),
    "FeatureFileError": ("ood.errors", "FeatureFileError"),
    "ListFormatError": ("ood.errors", "ListFormatError"),
    "ImageError": ("ood.errors", "ImageError"),
    "ParameterError": ("ood.errors", "ParameterError"),
    "NotFittedError": ("ood.errors", "NotFittedError"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ood' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
