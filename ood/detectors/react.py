"""ReAct and its GEN / local-quantile variants: clip the penultimate features, re-apply the head, then score.

ReAct (Sun et al., NeurIPS 2021): c = the ``clip_quantile`` quantile of all train feature elements;
score = logsumexp(W min(h, c) + b). Local ReAct (GEN repository): c is the ``clip_quantile_local`` quantile of
the scored split's own features. GEN + ReAct / GEN + Local ReAct: GEN on the softmax of the clipped logits.
Clipped logits depend only on c, so the energy and GEN variants share one product and one per-row summary of
it (:func:`clipped_summary`), never the N x C clipped logits themselves.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats
from ..split import Split
from .base import Detector, register
from .logits import centred_logits, energy, gen_from_top


#: memo keys of the clipped-logit summaries at the train quantile (ReAct) and at the split's own (Local ReAct)
TRAIN_CLIPPED, LOCAL_CLIPPED = ("clipped_logits", "train"), ("clipped_logits", "local")
#: largest clipped logits a summary keeps per row: GEN's default M
SUMMARY_TOP = 100


def clipped_summary(split: Split, c: float, kind: tuple, top: int = SUMMARY_TOP) -> np.ndarray:
    """What the energy and GEN of the clipped logits z = W min(h, c) + b need, per row, float64 [N, 2 + m]:
    logsumexp(z) (float32, as :func:`energy` gives it), the sum of exp(z - max z) over all entries but one
    maximum, and the m = min(top, C) largest entries of z - max z, sorted. Memoised per clip value under
    ``kind`` (TRAIN_CLIPPED, LOCAL_CLIPPED), so ReAct and GEN + ReAct share one product and keep about a tenth
    of the N x C logits; a GEN asking for more than m entries has the summary remade wider."""
    width = min(top, split.num_classes)
    key = (*kind, float(c))
    if split.memoised(key) and split.memo(key, lambda: None).shape[1] - 2 < width:
        split.forget(key)

    def block(lo, hi, h):
        z = split.apply_head(torch.clamp(h, max=c))
        zs, others = centred_logits(z)
        return torch.cat([energy(z).double()[:, None], others, torch.topk(zs, width, dim=1).values], 1)
    return split.memo(key, lambda: split.map_blocks(block, dtype=np.float64))


def clipped_energy(split: Split, c: float, kind: tuple) -> np.ndarray:
    return clipped_summary(split, c, kind)[:, 0].copy()


def clipped_gen(split: Split, c: float, kind: tuple, gamma: float, M: int) -> np.ndarray:
    s = split.tensor(clipped_summary(split, c, kind, M), dtype=torch.float64)
    width = min(M, split.num_classes)
    return gen_from_top(s[:, 2:2 + width], s[:, 1:2], gamma).cpu().numpy()


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
        return clipped_energy(split, self.clip_, TRAIN_CLIPPED)


@register("gen_react")
class GENReAct(ReAct):
    """GEN on the softmax of ReAct-clipped logits (Liu et al., CVPR 2023)."""

    grid = {"clip_quantile": [0.9, 0.95, 0.99, 0.995, 0.999], "gamma": [0.01, 0.05, 0.1, 0.3]}

    def __init__(self, clip_quantile: float = 0.99, gamma: float = 0.1, M: int = 100):
        super().__init__(clip_quantile)
        self.gamma, self.M = gamma, M

    def score(self, split):
        return clipped_gen(split, self.clip_, TRAIN_CLIPPED, self.gamma, self.M)


@register("local_react")
class LocalReAct(Detector):
    """ReAct with c = the ``clip_quantile_local`` quantile of the scored split's own features (GEN repo)."""

    grid = {"clip_quantile_local": [0.99, 0.995, 0.999, 0.9995, 0.9999]}
    shares = (LOCAL_CLIPPED,)

    def __init__(self, clip_quantile_local: float = 0.9995):
        self.clip_quantile_local = clip_quantile_local

    def score(self, split):
        return clipped_energy(split, local_clip(split, self.clip_quantile_local), LOCAL_CLIPPED)


@register("gen_local_react")
class GENLocalReAct(LocalReAct):
    """GEN on the softmax of Local-ReAct-clipped logits (GEN repository)."""

    grid = {"clip_quantile_local": [0.99, 0.999, 0.9995, 0.9999], "gamma": [0.01, 0.05, 0.1, 0.3]}

    def __init__(self, clip_quantile_local: float = 0.9995, gamma: float = 0.1, M: int = 100):
        super().__init__(clip_quantile_local)
        self.gamma, self.M = gamma, M

    def score(self, split):
        c = local_clip(split, self.clip_quantile_local)
        return clipped_gen(split, c, LOCAL_CLIPPED, self.gamma, self.M)
