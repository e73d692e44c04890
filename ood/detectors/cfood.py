"""CF-OOD (Angiulli, Fassetti & Zupi, SISAP 2025, "CF-OOD: Concentration-Free Density Estimation for Reliable
Out-of-Distribution Detection"), after the Concentration Free Outlier Factor (CFOF; Angiulli, ACM TKDD 2020):
a reverse-nearest-neighbour statistic, OpenOOD's ``cfood`` postprocessor.

The reference set is a seeded random ``alpha`` share of the L2-normalised train features (n rows; OpenOOD draws
it with an unseeded ``randperm``). For each neighbourhood size in a fixed grid of shares kappa of n (0.001 to
0.99, 230 values, OpenOOD's; sizes that round to the same neighbour are merged), every reference row's radius
is the squared distance to its max(1, floor(kappa n))-th nearest other reference row (OpenOOD's position
int(kappa n - 1) + 1 of its sorted distances, itself first). A scored row x is covered at kappa by reference row
i when its squared distance to i is at most i's radius; CFOF(x) is the smallest kappa at which at least a share
``k`` of the reference rows cover x (1 when none does): the neighbourhood size that makes x an inlier for
that share of the data. Score = -CFOF (higher = more in-distribution). ``k`` is CFOF's rho, a share of the
reference rows, not a neighbour count; "at least a share k" is OpenOOD's float32 count / n >= k, exactly.

Scores take at most 230 values, so ties are common and the FPR conventions can differ on them.

Each scored row is compared with every reference row, and the reference rows with each other: the cost grows
with train x scored rows, so the detector is opt-in, as kNN. Distances come from the kNN bank's normalised
rows as |x|^2 + |r|^2 - 2 x . r (a zero row has |x| = 0, as in OpenOOD), in blocks of scored and reference rows;
per scored row the coverage counts of all kappa are kept (the grid over ``k`` then costs no new distances).

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> centers, y = rng.normal(size=(3, 8)), rng.integers(0, 3, 400)
>>> det = ood.create("cfood", alpha=0.5).fit(centers[y] + 0.3 * rng.normal(size=(400, 8)))
>>> s = det.score(np.r_[centers, rng.normal(size=(3, 8))])  # the cluster centres, then random directions
>>> bool(s[:3].min() > s[3:].max())
True
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..split import BLOCK_ELEMENTS, Split, fit_key
from .base import Detector, Range, register
from .knn import BANK_ROWS, QUERY_ROWS, Bank, normalize


def kappa_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(kappa, positions): OpenOOD's shares of the n reference rows and the sorted-distance position (self at
    0) of each, merged where two shares reach the same position."""
    kval = np.concatenate((np.linspace(0.001, 0.1, 100), np.linspace(0.105, 0.5, 81), np.linspace(0.51, 0.99, 49)))
    kpos = np.array(kval * n - 1, dtype=int)
    keep = np.concatenate(([True], kpos[:-1] < kpos[1:]))
    return kval[keep], kpos[keep] + 1


def min_cover(n: int, k: float) -> int:
    """The fewest covering rows m with float32(m) / float32(n) >= float32(k), OpenOOD's test."""
    share = np.arange(1, n + 1, dtype=np.float32) / np.float32(n)
    return int(np.argmax(share >= np.float32(k))) + 1


def sq_distances(q: torch.Tensor, r: torch.Tensor, r_sq: torch.Tensor) -> torch.Tensor:
    """[len(r), len(q)] squared distances between normalised rows, clamped at 0."""
    return (r_sq[:, None] + (q * q).sum(1)[None, :] - 2 * (r @ q.T)).clamp_min_(0)


class Reference:
    """The normalised reference rows of a train split and their radii [n, len(kappa)] at each kappa."""

    def __init__(self, train: Split, alpha: float, seed: int):
        n = train.n if alpha >= 1 else int(alpha * train.n)
        if n < 2:
            raise InputError(f"cfood: alpha = {alpha} of {train.n} train rows leaves {n} reference row(s); at "
                             f"least 2 are needed (each row's neighbours are the others)")
        rows = None if n == train.n else np.sort(np.random.default_rng(seed).choice(train.n, n, replace=False))
        bank = Bank(("cfood", n, seed), train, rows)
        self.key, self.n = bank.key, n
        self.rows = bank.x * bank.scale[:, None]
        self.sq = (self.rows * self.rows).sum(1)
        self.kappa, positions = kappa_grid(n)
        pos = torch.as_tensor(positions, device=train.device)
        step = max(1, BLOCK_ELEMENTS // n)
        self.radii = torch.cat([torch.sort(sq_distances(self.rows[lo:lo + step], self.rows, self.sq), dim=0)
                                .values[pos].T for lo in range(0, n, step)])

    def cover_counts(self, split: Split) -> np.ndarray:
        """[N, len(kappa)] int32: how many reference rows cover each scored row at each kappa; memoised."""
        def compute():
            klen = len(self.kappa)

            def block(lo, hi, h):
                q = normalize(h)
                hist = torch.zeros((hi - lo) * (klen + 1), dtype=torch.int64, device=h.device)
                offset = torch.arange(hi - lo, device=h.device)[None, :] * (klen + 1)
                for j in range(0, self.n, BANK_ROWS):
                    d = sq_distances(q, self.rows[j:j + BANK_ROWS], self.sq[j:j + BANK_ROWS])
                    first = torch.searchsorted(self.radii[j:j + BANK_ROWS].contiguous(), d.contiguous())
                    hist += torch.bincount((first + offset).ravel(), minlength=hist.numel())
                return hist.view(hi - lo, klen + 1)[:, :klen].cumsum(1).int()
            return split.map_blocks(block, dtype=np.int32, rows=QUERY_ROWS)
        return split.memo(("cfood_cover", self.key), compute)


@register("cfood")
class CFOOD(Detector):
    """Minus the CFOF of the normalised feature: the smallest neighbourhood share kappa at which a share ``k``
    of the ``alpha`` reference rows count it among their nearest (Angiulli et al., SISAP 2025)."""

    grid = {"alpha": [0.1, 0.5, 1.0], "k": [0.001, 0.005, 0.01, 0.05]}
    ranges = {"k": Range(float, 0, 1, lo_open=True)}
    default = False  # reference x reference and scored x reference distances: quadratic, as kNN

    def __init__(self, alpha: float = 0.1, k: float = 0.01, seed: int = 0):
        self.alpha, self.k, self.seed = alpha, k, seed

    def fit(self, train):
        self.reference_ = train.memo(fit_key("cfood_reference", train, self.alpha, self.seed),
                                     lambda: Reference(train, self.alpha, self.seed))
        self.min_cover_ = min_cover(self.reference_.n, self.k)
        return self

    def score(self, split):
        ref = self.reference_
        covered = ref.cover_counts(split) >= self.min_cover_
        kappa = np.r_[ref.kappa, 1.0]
        return -kappa[np.where(covered.any(1), covered.argmax(1), len(ref.kappa))]
