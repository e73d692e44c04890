"""LTS: logit scaling by the squared ratio of a row's activation sum to the sum of its largest activations.

Djurisic, Liu and Nikolic, "Logit scaling for out-of-distribution detection" (Machine Vision and Applications,
2025; arXiv 2409.01175). With a = max(h, 0), s1 = sum of a and s2 = the sum of its k largest elements,
k = D - round(D * percentile / 100), the logits are multiplied by S = (s1 / s2)^2 and scored by energy,
logsumexp(S z). Needs no train statistics.

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> W, b = rng.normal(size=(3, 8)), np.zeros(3)
>>> det = ood.create("lts", percentile=75).fit(rng.random((20, 8)), head=(W, b))
>>> det.score(rng.random((4, 8))).shape
(4,)
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, register
from .shaping import PERCENTILES, kept


def lts_scale(h: torch.Tensor, k: int) -> torch.Tensor:
    """(s1 / s2)^2 of each row of a = max(h, 0), float64; 1 (the logits unscaled) for a row with no positive
    activation, where s1 = s2 = 0 (the authors' code gives NaN there)."""
    a = h.relu().double()
    s1, s2 = a.sum(1), torch.topk(a, k, dim=1).values.sum(1)
    return torch.where(s2 > 0, s1 / torch.where(s2 > 0, s2, torch.ones_like(s2)), torch.ones_like(s1)) ** 2


@register("lts")
class LTS(Detector):
    """LTS (Djurisic et al., MVA 2025): energy of S(h) z with S = (sum of max(h, 0) / sum of its k largest)^2.

    ``percentile`` 95 keeps the top 5 % of activations, pytorch-ood's default (its p = 0.05); the authors'
    ``lts`` function defaults to 65. The ReLU is the authors' code's (the paper does not state it; it matters only
    for features that can be negative); the head gets the features unchanged. k is at least 1, as pytorch-ood
    guards it (the authors' code would take k = 0 for a narrow feature and a high percentile).
    """

    grid = {"percentile": PERCENTILES}

    def __init__(self, percentile: float = 95):
        self.percentile = percentile

    def score(self, split):
        k = max(1, kept(split.dim, self.percentile))
        z = split.logits  # kept for the run: no product of its own
        return split.map_blocks(
            lambda lo, hi, h: torch.logsumexp(lts_scale(h, k)[:, None] * split.tensor(z[lo:hi], torch.float64), dim=1),
            dtype=np.float64)
