"""Per-split quantities that several of the extra detectors share, memoised on the split they come from.

``feature_mean`` (the train mean of DICE, NCI and fDBD), ``predicted`` (argmax of the logits: SHE, NCI),
``max_logit`` (NECO) and ``energies`` (logsumexp of the logits: NNGuide's bank and queries). Logits are
streamed by blocks, never kept whole.
"""
from __future__ import annotations

import numpy as np

from ..split import Split
from .logits import energy


def feature_mean(split: Split) -> np.ndarray:
    """Mean feature [D], float64 (the same numbers as ``stats.moments(split)["mean"]``, without the Gram)."""
    return split.memo("feature_mean", lambda: split.features.mean(axis=0, dtype=np.float64))


def predicted(split: Split) -> np.ndarray:
    """Predicted class of every row, argmax of the logits [N] int64."""
    return split.memo("pred", lambda: split.map_blocks(lambda lo, hi, z: z.argmax(1), source="logits",
                                                       dtype=np.int64))


def max_logit(split: Split) -> np.ndarray:
    """Max logit [N], float64."""
    return split.memo("max_logit", lambda: split.map_blocks(lambda lo, hi, z: z.max(1).values, source="logits",
                                                            dtype=np.float64))


def energies(split: Split) -> np.ndarray:
    """logsumexp of the logits [N], float64."""
    return split.memo("energy", lambda: split.map_blocks(lambda lo, hi, z: energy(z), source="logits",
                                                         dtype=np.float64))

