"""Per-split quantities that several of the extra detectors share, memoised on the split they come from.

``feature_mean`` (the train mean of DICE, NCI and fDBD), ``predicted`` (argmax of the logits: SHE, NCI,
fDBD), ``max_logit`` (NECO, and ViM's memo key), ``energies`` (logsumexp of the logits: NNGuide's bank and
queries) and ``row_norms``.
"""
from __future__ import annotations

import numpy as np
import torch

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
    return split.memo("max_logit", lambda: split.logits.max(axis=1).astype(np.float64))


def energies(split: Split) -> np.ndarray:
    """logsumexp of the logits [N], float64."""
    return split.memo("energy", lambda: split.map_blocks(lambda lo, hi, z: energy(z), source="logits",
                                                         dtype=np.float64))


def row_norms(split: Split) -> np.ndarray:
    """L2 norm of every feature row [N], float32."""
    return split.memo("row_norms", lambda: split.map_blocks(
        lambda lo, hi, h: torch.linalg.vector_norm(h, dim=1)))
