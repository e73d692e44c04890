"""NECO (Ammar et al., ICLR 2024, "NECO: NEural Collapse based Out-of-distribution detection").

Standardise the features by the train mean and standard deviation (sklearn's StandardScaler: population
std, 1 where it is 0), project on the ``dim`` leading principal components of the standardised train
features; score = ||projection|| / ||standardised h|| * max z. ``dim=None`` takes the fewest components that
explain ``variance`` of the train variance (OpenOOD's port uses 90%; the paper picks dim per model).
The paper's code drops the max-logit factor for ResNets and the scaler in the norm for DeiT / Swin; here
both are always applied, as in the method's definition.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import stats
from .base import Detector, register
from .boundary import norm64, safe_ratio
from .mahalanobis import check_gram
from .shared import max_logit
from ..errors import InputError


@register("neco")
class NECO(Detector):
    """Share of the standardised feature's norm in the leading principal subspace, times the max logit."""

    grid = {"variance": [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]}

    def __init__(self, dim: Optional[int] = None, variance: float = 0.9):
        self.dim, self.variance = dim, variance

    def fit(self, train):
        m = stats.moments(train)
        check_gram(train, m)
        std = np.sqrt(np.diag(m["gram"]) / m["n"])
        if not std.any():
            raise InputError("the train features do not vary (zero variance in every dimension): there is no "
                             "principal subspace")
        if (std == 0).any():
            self.note(f"{int((std == 0).sum())} of {train.dim} features have zero train variance: their standard "
                      f"deviation is taken as 1 (as sklearn's StandardScaler)")
        std[std == 0] = 1.0
        vals, vecs = train.memo("neco_eig", lambda: stats.eigh_desc(m["gram"] / m["n"] / np.outer(std, std)))
        if self.dim is None:
            if not 0 < self.variance <= 1:
                raise InputError(f"neco variance must be in (0, 1], got {self.variance}")
            ratio = np.cumsum(np.clip(vals, 0, None)) / np.clip(vals, 0, None).sum()
            self.dim_ = int(min(np.searchsorted(ratio, self.variance - 1e-12) + 1, train.dim))
        else:
            if not 1 <= self.dim <= train.dim:
                raise InputError(f"neco dim must be in [1, {train.dim}], got {self.dim}")
            self.dim_ = int(self.dim)
        rank = int((vals > max(vals.size, 1) * np.finfo(np.float64).eps * vals[0]).sum())
        if self.dim_ > rank:
            self.note(f"the standardised train covariance has rank {rank} of {train.dim}: {self.dim_ - rank} of "
                      f"the {self.dim_} principal directions have no train variance")
        self.mean_, self.std_ = m["mean"], std
        self.basis_ = np.ascontiguousarray(vecs[:, :self.dim_] / std[:, None])
        return self

    def score(self, split):
        B = split.tensor(self.basis_)
        mu, sd = split.tensor(self.mean_), split.tensor(self.std_)
        # a row at the train mean has no direction: its share is 0
        share = split.map_blocks(lambda lo, hi, h: safe_ratio(norm64((h - mu) @ B), norm64((h - mu) / sd)),
                                 dtype=np.float64)
        return share * max_logit(split)
