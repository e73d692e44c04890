"""pNML: the regret of the predictive normalized maximum likelihood learner of the last layer.

Bibas, Feder and Hassner, "Single layer predictive normalized maximum likelihood for out-of-distribution
detection" (NeurIPS 2021). With x the L2-normalised feature, X the normalised train features, p the softmax of
the head applied to x, and g = x^T (X^T X)^+ x / (1 + x^T (X^T X)^+ x), the regret is

    Gamma(x) = log( sum_c p_c / (p_c + (1 - p_c) p_c^g) ) / log C,

0 for a row in the span the train features cover well, up to 1; the score is -Gamma (higher = more ID).

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> W, b = rng.normal(size=(3, 8)), np.zeros(3)
>>> det = ood.create("pnml").fit(rng.normal(size=(50, 8)), head=(W, b))
>>> s = det.score(rng.normal(size=(4, 8)))
>>> bool(((s <= 0) & (s >= -1)).all())
True
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import stats
from ..split import Split
from .base import Detector, register
from .mahalanobis import pinv_factor, rank_note


def row_norms(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows scaled to unit L2 norm, float32; their norms, float64). Each row is first divided by its largest
    absolute value, so a huge row cannot overflow the float32 sum of squares; zero rows stay zero (norm 0)."""
    peak = h.abs().amax(1, keepdim=True)
    scaled = h / torch.where(peak > 0, peak, torch.ones_like(peak))
    inner = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
    unit = scaled / torch.where(inner > 0, inner, torch.ones_like(inner))
    return unit, peak.double() * inner.double()


def normalized(h: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm; zero rows stay zero."""
    return row_norms(h)[0]


def normalized_gram(train: Split) -> np.ndarray:
    """X^T X of the L2-normalised train features, float64, in one streamed pass (memoised)."""
    return train.memo("normalized_gram", lambda: stats.symmetric_gram(
        (normalized(h) for _, _, h in train.blocks(rows=4096)), train.dim, train.device))


def log_regret_terms(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """log( p_c / (p_c + (1 - p_c) p_c^g) ) = -log(1 + (1 - p_c) p_c^(g - 1)) for p = softmax(z), float64 and
    in the log domain: a probability that underflows to 0 gives -inf (its term is 0), not 0 / 0, and
    1 - p_max is the sum of the other probabilities (no cancellation when p_max rounds to 1)."""
    zs = z.double() - z.max(1, keepdim=True).values.double()
    log_p = torch.log_softmax(zs, dim=1)
    top = torch.zeros_like(zs, dtype=torch.bool).scatter(1, zs.argmax(1, keepdim=True), True)
    others = torch.exp(zs).masked_fill(top, 0.0).sum(1, keepdim=True)
    log_1mp = torch.where(top, torch.log(others) - torch.log1p(others), torch.log1p(-torch.exp(log_p)))
    return -torch.nn.functional.softplus(log_1mp + (g[:, None] - 1) * log_p)


@register("pnml")
class PNML(Detector):
    """-pNML regret of the last layer (Bibas et al., NeurIPS 2021), as the authors' code and pytorch-ood compute it.

    Both apply the head (weights and bias) to the L2-normalised feature for p, and take (X^T X)^+ of the
    normalised train features (the authors: the inverse when X^T X is full rank, else the pseudo-inverse;
    pytorch-ood: pinv of X^T X); here (X^T X)^+ is the inverse when Cholesky succeeds, else the eigen
    pseudo-inverse with numpy's cutoff, with a note naming the rank. pytorch-ood clamps p to [1e-12, 1 - 1e-12];
    here the terms are computed in the log domain, which needs no clamp (rows with probabilities below 1e-12
    differ from pytorch-ood's by its clamp). No hyperparameters: nothing to tune.
    """

    def fit(self, train):
        F = train.memo("normalized_gram_pinv_factor", lambda: pinv_factor(normalized_gram(train)))
        rank_note(self, F, "Gram matrix of the normalised train features", train.dim, train.n)
        self.F_ = F
        return self

    def score(self, split):
        F = split.tensor(self.F_)
        C = split.num_classes

        z_all = split.logits  # kept for the run: the head of a normalised row is (z - b) / |h| + b

        def block(lo, hi, h):
            x, norm = row_norms(h)
            q = ((x @ F).double() ** 2).sum(1)
            b = split.bias.double()
            z = (split.tensor(z_all[lo:hi], dtype=torch.float64) - b) / torch.where(norm > 0, norm, 1.0) + b
            bad = ~torch.isfinite(z).all(1)  # logits that overflowed float32 before the division
            if bool(bad.any()):
                z[bad] = split.apply_head(x[bad]).double()
            terms = log_regret_terms(z, q / (1 + q))
            regret = torch.logsumexp(terms, dim=1)
            return -regret / math.log(C) if C > 1 else -regret
        return split.map_blocks(block, dtype=np.float64)
