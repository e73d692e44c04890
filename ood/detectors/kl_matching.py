"""KL-Matching (Hendrycks et al., ICML 2022, "Scaling out-of-distribution detection for real-world settings").

q_c = the mean softmax of the train samples predicted as class c; score = -min_c KL(p || q_c) with
KL = sum_{p>0} p log(p / q). Classes that no train sample is predicted as are left out. Expanded as
sum p log p - max_c p . log q_c: one matrix product per block of rows.
"""
from __future__ import annotations

import numpy as np
import torch

from .. import stats
from .base import Detector, register
from .logits import neg_entropy

_LOG_TINY = float(np.log(np.finfo(np.float64).tiny))


@register("kl_matching")
class KLMatching(Detector):
    """-min_c KL(softmax(z) || mean train softmax of predicted class c)."""

    def fit(self, train):
        s = stats.logit_stats(train)
        keep = s["pred_counts"] > 0
        self.classes_ = np.flatnonzero(keep)
        q = s["softmax_sums"][keep] / s["pred_counts"][keep, None]
        with np.errstate(divide="ignore"):
            self.log_q_ = np.maximum(np.log(q), _LOG_TINY)
        return self

    def score(self, split):
        log_q = split.tensor(self.log_q_)

        def block(lo, hi, z):
            p = torch.softmax(z, dim=1)
            return (p @ log_q.T).max(1).values.double() - neg_entropy(p.double())
        return split.map_blocks(block, source="logits", dtype=np.float64)
