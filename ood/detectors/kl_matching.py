"""KL-Matching (Hendrycks et al., ICML 2022, "Scaling out-of-distribution detection for real-world settings").

q_c = the mean softmax of the train samples predicted as class c; score = -min_c KL(p || q_c) with
KL = sum_{p>0} p log(p / q). Classes that no train sample is predicted as are left out. Expanded as
sum p log p - max_c p . log q_c: one matrix product per block of rows.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, register
from .logits import neg_entropy

_LOG_TINY = float(np.log(np.finfo(np.float64).tiny))


@register("kl_matching")
class KLMatching(Detector):
    """-min_c KL(softmax(z) || mean train softmax of predicted class c)."""

    def fit(self, train):
        C = train.num_classes
        sums = torch.zeros(C, C, dtype=torch.float64, device=train.device)
        counts = torch.zeros(C, dtype=torch.float64, device=train.device)
        for _, _, z in train.blocks("logits"):
            p = torch.softmax(z, 1)
            pred = p.argmax(1)
            sums.index_add_(0, pred, p.double())
            counts.index_add_(0, pred, torch.ones_like(pred, dtype=torch.float64))
        keep = counts > 0
        q = sums[keep] / counts[keep, None]
        self.classes_ = torch.nonzero(keep).flatten().cpu().numpy()
        self.log_q_ = q.log().clamp(min=_LOG_TINY).cpu().numpy()
        return self

    def score(self, split):
        p = split.softmax()
        log_q = split.tensor(self.log_q_)

        def block(lo, hi, _):
            pb = split.tensor(p[lo:hi])
            return (pb @ log_q.T).max(1).values.double() - neg_entropy(pb.double())
        return split.map_blocks(block, source="logits", dtype=np.float64)
