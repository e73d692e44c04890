"""Per-split quantities that several of the extra detectors share, memoised on the split they come from.

``feature_mean`` (the train mean of DICE, NCI and fDBD), ``predicted`` (argmax of the logits: SHE, NCI),
``max_logit`` (NECO) and ``energies`` (logsumexp of the logits: NNGuide's bank and queries): the last three
from the one streamed pass of ``stats.logit_stats`` that ViM and KL-Matching share.
"""
from __future__ import annotations

import numpy as np

from .. import stats
from ..split import Split


def feature_mean(split: Split) -> np.ndarray:
    """Mean feature [D], float64 (the same numbers as ``stats.moments(split)["mean"]``, without the Gram)."""
    return stats.mean(split)


def predicted(split: Split) -> np.ndarray:
    """Predicted class of every row, argmax of the logits [N] int64."""
    return stats.logit_stats(split)["pred"]


def max_logit(split: Split) -> np.ndarray:
    """Max logit [N], float64."""
    return stats.logit_stats(split)["max_logit"]


def energies(split: Split) -> np.ndarray:
    """logsumexp of the logits [N], float64."""
    return stats.logit_stats(split)["energy"]
