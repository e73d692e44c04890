"""ReAct and its GEN / local-quantile variants: clip the penultimate features, re-apply the head, then score.

ReAct (Sun et al., NeurIPS 2021): c = the ``clip_quantile`` quantile of all train feature elements;
score = logsumexp(W min(h, c) + b). Local ReAct (GEN repository): c is the ``clip_quantile_local`` quantile of
the scored split's own features. GEN + ReAct / GEN + Local ReAct: GEN on the softmax of the clipped logits.
Clipped logits depend only on c, so the energy and GEN variants share them.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats
from ..split import Split
from .base import Detector, register
from .logits import energy, gen_from_logits


#: memo keys of the clipped logits at the train quantile (ReAct) and at the split's own (Local ReAct)
TRAIN_CLIPPED, LOCAL_CLIPPED = ("clipped_logits", "train"), ("clipped_logits", "local")


def clipped_logits(split: Split, c: float, kind: tuple) -> np.ndarray:
    """W min(h, c) + b for every row, memoised per clip value under ``kind`` (TRAIN_CLIPPED, LOCAL_CLIPPED)."""
    return split.memo((*kind, float(c)), lambda: split.map_blocks(
        lambda lo, hi, h: split.apply_head(torch.clamp(h, max=c))))


def train_clip(train: Split, q: float) -> float:
    return train_clips(train, [q])[0]


def train_clips(train: Split, qs) -> list:
    """Train-feature quantiles, memoised one by one; those not yet known are found in shared passes."""
    missing = [float(q) for q in qs if not train.memoised(("quantile", float(q)))]
    if missing:
        for q, value in zip(missing, stats.quantiles(train, missing)):
            train.memo(("quantile", q), lambda value=value: value)
    return [train.memo(("quantile", float(q)), lambda: None) for q in qs]


def local_clip(split: Split, q: float) -> float:
    return split.memo(("quantile", float(q)), lambda: stats.quantile(split, q))


def _score_clipped(split: Split, c: float, kind: tuple, fn) -> np.ndarray:
    z = clipped_logits(split, c, kind)
    return split.map_blocks(lambda lo, hi, _: fn(split.tensor(z[lo:hi])), source="logits", dtype=np.float64)


@register("react")
class ReAct(Detector):
    """Energy of the logits of features clipped at the train quantile ``clip_quantile`` (Sun et al. 2021)."""

    grid = {"clip_quantile": [0.8, 0.85, 0.9, 0.95, 0.99, 0.995, 0.999]}
    shares = (TRAIN_CLIPPED,)

    def __init__(self, clip_quantile: float = 0.99):
        self.clip_quantile = clip_quantile

    def fit(self, train):
        self.clip_ = train_clip(train, self.clip_quantile)
        return self

    def score(self, split):
        return _score_clipped(split, self.clip_, TRAIN_CLIPPED, energy)


@register("gen_react")
class GENReAct(ReAct):
    """GEN on the softmax of ReAct-clipped logits (Liu et al., CVPR 2023)."""

    grid = {"clip_quantile": [0.9, 0.95, 0.99, 0.995, 0.999], "gamma": [0.01, 0.05, 0.1, 0.3]}

    def __init__(self, clip_quantile: float = 0.99, gamma: float = 0.1, M: int = 100):
        super().__init__(clip_quantile)
        self.gamma, self.M = gamma, M

    def score(self, split):
        return _score_clipped(split, self.clip_, TRAIN_CLIPPED, lambda z: gen_from_logits(z, self.gamma, self.M))


@register("local_react")
class LocalReAct(Detector):
    """ReAct with c = the ``clip_quantile_local`` quantile of the scored split's own features (GEN repo)."""

    grid = {"clip_quantile_local": [0.99, 0.995, 0.999, 0.9995, 0.9999]}
    shares = (LOCAL_CLIPPED,)

    def __init__(self, clip_quantile_local: float = 0.9995):
        self.clip_quantile_local = clip_quantile_local

    def score(self, split):
        return _score_clipped(split, local_clip(split, self.clip_quantile_local), LOCAL_CLIPPED, energy)


@register("gen_local_react")
class GENLocalReAct(LocalReAct):
    """GEN on the softmax of Local-ReAct-clipped logits (GEN repository)."""

    grid = {"clip_quantile_local": [0.99, 0.999, 0.9995, 0.9999], "gamma": [0.01, 0.05, 0.1, 0.3]}

    def __init__(self, clip_quantile_local: float = 0.9995, gamma: float = 0.1, M: int = 100):
        super().__init__(clip_quantile_local)
        self.gamma, self.M = gamma, M

    def score(self, split):
        c = local_clip(split, self.clip_quantile_local)
        return _score_clipped(split, c, LOCAL_CLIPPED, lambda z: gen_from_logits(z, self.gamma, self.M))
