"""Post-hoc OOD detectors: one registry, filled by ``@register`` next to each implementation."""
from .base import Detector, create, get_detector_class, list_detectors, parse_param_args, register
from . import logits, react, vim, mahalanobis, kl_matching  # noqa: F401  (fill the registry)
from . import temperature, knn, shaping, dice, she, boundary, neco, rmd  # noqa: F401
from . import mos, mcm  # noqa: F401
from . import openmax, relation, cfood  # noqa: F401
from . import gmm, pnml, lts, grad_uncertainty  # noqa: F401

__all__ = ["Detector", "create", "get_detector_class", "list_detectors", "parse_param_args", "register"]
