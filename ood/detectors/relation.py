"""Neural Relation Graph (Kim, Yun & Song, NeurIPS 2023, "Neural Relation Graph: A Unified Framework for
Identifying Label Noise and Outlier Data"), scored as OpenOOD's ``relation`` postprocessor scores outliers.

Each scored row (normalised feature f, softmax p) is related to every train row i (f_i, p_i) by the kernel
rel_i = max(f . f_i, 0) * (p . p_i); edges with rel_i <= ``threshold`` are cut, and the score is the summed
relation, sum of rel_i ^ ``pow`` over the remaining edges (higher = more in-distribution). OpenOOD's defaults:
pow = 1 (its sweep 1, 2, 4, 6, 8), threshold 0.03 (``thres``), the whole train set as the graph's other side;
its ``chunk`` (50) is only a batch size. Features are normalised exactly, through the kNN bank (OpenOOD adds
1e-10 under the square root, which moves only rows of norm near 1e-5 or less); a zero row relates to nothing.

The cost grows with train x scored rows (every pair is a term, nothing is pruned): the detector is opt-in, as
kNN. Blocks of scored rows meet blocks of the bank, so memory stays two blocks in size.

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> W, y = rng.normal(size=(3, 8)), rng.integers(0, 3, 200)
>>> det = ood.create("relation").fit(W[y] + 0.3 * rng.normal(size=(200, 8)), head=(W, np.zeros(3)))
>>> s = det.score(np.r_[W, rng.normal(size=(3, 8))])  # the class prototypes, then random directions
>>> bool(s[:3].min() > s[3:].max())
True
"""
from __future__ import annotations

import numpy as np
import torch

from ..split import Split
from .base import Detector, Range, register
from .knn import BANK_ROWS, QUERY_ROWS, Bank, normalize


def softmax_bank(train: Split) -> torch.Tensor:
    """The softmax of every train row [N, C] on the device, from the streamed logits; memoised."""
    def compute():
        return torch.cat([torch.softmax(z, dim=1) for _, _, z in train.blocks("logits")])
    return train.memo("softmax_tensor", compute)


@register("relation")
class Relation(Detector):
    """Summed relation-graph edges to the train rows, max(cos, 0) x softmax inner product, each above
    ``threshold`` raised to ``pow`` (Kim et al., NeurIPS 2023; OpenOOD's ``relation``)."""

    grid = {"pow": [1, 2, 4, 6, 8]}
    ranges = {"pow": Range(float, 0, lo_open=True), "threshold": Range(float, 0)}
    default = False  # every train row against every scored row: 1.3M x 50,000 x (2048 + 1000) on ImageNet

    def __init__(self, pow: float = 1.0, threshold: float = 0.03):
        self.pow, self.threshold = pow, threshold

    def fit(self, train):
        self.bank_ = train.memo(("knn_bank", ("exact",)), lambda: Bank("knn", train))
        self.probs_ = softmax_bank(train)
        return self

    def score(self, split):
        bank, probs = self.bank_, self.probs_
        out = np.empty(split.n, np.float64)
        blocks = zip(split.blocks(rows=QUERY_ROWS), split.blocks("logits", rows=QUERY_ROWS))
        for (lo, hi, h), (_, _, z) in blocks:
            f, p = normalize(h), torch.softmax(z, dim=1)
            total = torch.zeros(hi - lo, dtype=torch.float64, device=split.device)
            for j in range(0, bank.n, BANK_ROWS):
                rel = (f @ bank.x[j:j + BANK_ROWS].T).mul_(bank.scale[j:j + BANK_ROWS]).clamp_min_(0)
                rel.mul_(p @ probs[j:j + BANK_ROWS].T).masked_fill_(rel <= self.threshold, 0)
                total += (rel if self.pow == 1 else rel.pow_(self.pow)).sum(1, dtype=torch.float64)
            out[lo:hi] = total.cpu().numpy()
        return out
