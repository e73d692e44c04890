"""DICE (Sun & Li, ECCV 2022, "DICE: Leveraging sparsification for out-of-distribution detection").

The contribution of input d to class c is m_d W_cd, m the train mean feature; the ``sparsity`` share of the
C x D contributions below their percentile (np.percentile over all of them) is zeroed in W, and the score is
the energy logsumexp(W_masked h + b). The default 0.7 is the paper's ImageNet value (OpenOOD uses 0.9).
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, register
from .logits import energy
from .shared import feature_mean
from ..errors import InputError


@register("dice")
class DICE(Detector):
    """Energy of the head with all but the top (1 - sparsity) train-mean contributions zeroed."""

    grid = {"sparsity": [0.5, 0.6, 0.7, 0.8, 0.9]}

    def __init__(self, sparsity: float = 0.7):
        self.sparsity = sparsity

    def fit(self, train):
        if not 0 <= self.sparsity < 1:
            raise InputError(f"dice sparsity must be in [0, 1), got {self.sparsity}")
        W = train.head.weight
        contrib = feature_mean(train)[None, :] * W
        self.weight_ = np.where(contrib > np.percentile(contrib, 100 * self.sparsity), W, 0).astype(np.float32)
        if not self.weight_.any():
            self.note("no train-mean contribution is above the sparsity percentile (a zero or constant train "
                      "mean?): the whole head is zeroed and every row gets the energy of the bias")
        return self

    def score(self, split):
        W = split.tensor(self.weight_)
        return split.map_blocks(lambda lo, hi, h: energy(torch.addmm(split.bias, h, W.T)), dtype=np.float64)
