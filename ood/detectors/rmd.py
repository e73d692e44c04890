"""Relative Mahalanobis distance (Ren et al., 2021, "A simple fix to Mahalanobis distance for improving
near-OOD detection").

RMD_c(h) = MD_c(h) - MD_0(h): MD_c the Mahalanobis distance to class mean c under the tied class-centred
covariance (as ``mahalanobis``), MD_0 the distance to the train mean under the covariance of all train
features; score = -min_c RMD_c = -min_c MD_c + MD_0 (OpenOOD's ``rmds``). Both precisions are pseudo-inverses,
as sklearn's EmpiricalCovariance.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats
from ..errors import InputError
from .base import register
from .mahalanobis import Mahalanobis, min_sq_distance, pinv_factor


@register("rmd")
class RMD(Mahalanobis):
    """-min_c (MD_c(h) - MD_0(h)), MD_0 under one Gaussian fitted to all train features."""

    def fit(self, train):
        super().fit(train)
        if len(self.classes_) < 2:
            raise InputError(f"rmd needs train labels of at least two classes: with one ({self.classes_[0]}), its "
                             f"class and background Gaussians are the same and every score is 0")
        m = stats.moments(train)
        self.background_ = train.memo("background_precision_factor", lambda: pinv_factor(m["gram"] / m["n"]))
        return self

    def score(self, split):
        L0, mu = split.tensor(self.background_), split.tensor(self.center_)
        zero = torch.zeros((1, L0.shape[1]), dtype=L0.dtype, device=L0.device)
        md0 = split.map_blocks(lambda lo, hi, h: min_sq_distance(h, mu, L0, zero, zero[0, :1]), dtype=np.float64)
        return super().score(split) + md0
