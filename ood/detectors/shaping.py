"""Activation shaping: reshape each penultimate feature, re-apply the head, score by energy logsumexp(z).

ASH (Djurisic et al., ICLR 2023) keeps the k = D - round(D * percentile / 100) largest elements of each row
(s1 = the row sum before pruning, s2 = after): ASH-P zeroes the rest; ASH-B sets the kept ones to s1 / k;
ASH-S multiplies the pruned row by exp(s1 / s2). SCALE (Xu et al., ICLR 2024) multiplies the unpruned row by
exp(s1 / s2). VRA (Xu et al., NeurIPS 2023) clips every element to [the low, the high] train percentile.
Kept elements are chosen by ``torch.topk`` as in the papers' code, so ties fall the same way.
"""
from __future__ import annotations

import numpy as np
import torch

from ..split import Split
from .base import Detector, register
from .logits import energy
from .react import train_clips
from ..errors import InputError

PERCENTILES = [65, 70, 75, 80, 85, 90, 95]


def _energy_of(split: Split, logits_fn) -> np.ndarray:
    return split.map_blocks(lambda lo, hi, h: energy(logits_fn(h)), dtype=np.float64)


def kept(D: int, percentile: float) -> int:
    if not 0 <= percentile < 100:
        raise InputError(f"percentile must be in [0, 100), got {percentile}")
    return D - int(np.round(D * percentile / 100.0))


def sum_ratio(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """s1 / s2, and 0 where s2 = 0: a zero row (s1 = s2 = 0) is scaled by exp(0) = 1, and since the scale
    multiplies that zero row, its logits are b whatever the scale (0 / 0 would make them NaN)."""
    return torch.where(s2 != 0, s1 / torch.where(s2 != 0, s2, torch.ones_like(s2)), torch.zeros_like(s1))


def prune(h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row with all but its k largest elements zeroed, the indices kept, the kept values)."""
    v, i = torch.topk(h, k, dim=1)
    return torch.zeros_like(h).scatter_(1, i, v), i, v


class _Percentile(Detector):
    grid = {"percentile": PERCENTILES}

    def __init__(self, percentile: float = 90):
        self.percentile = percentile

    def score(self, split):
        k = kept(split.dim, self.percentile)
        return _energy_of(split, lambda h: self.logits(split, h, k))


def pruned_energies(split: Split, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ASH-P, ASH-S) energies of every row for ``k`` kept elements, from one product W prune(h) per block:
    ASH-S only rescales it, exp(s1 / s2) (W prune(h)) + b. Memoised per k, so the two detectors share it."""
    def compute():
        def block(lo, hi, h):
            p, _, v = prune(h, k)
            z = p @ split.weight.T
            scale = torch.exp(sum_ratio(h.sum(1), v.sum(1)))[:, None]
            return torch.stack([energy(z + split.bias), energy(scale * z + split.bias)], 1)
        both = split.map_blocks(block, dtype=np.float64)
        return both[:, 0].copy(), both[:, 1].copy()
    return split.memo(("ash_pruned_energies", k), compute)


@register("ash_p")
class ASHP(_Percentile):
    """ASH-P: energy of W prune(h) + b."""

    def score(self, split):
        return pruned_energies(split, kept(split.dim, self.percentile))[0]


@register("ash_b")
class ASHB(_Percentile):
    """ASH-B: energy of W b(h) + b, b(h) = s1 / k on the k largest elements and 0 elsewhere."""

    def logits(self, split, h, k):
        _, i, _ = prune(h, k)
        fill = (h.sum(1, keepdim=True) / k).expand(-1, k)
        return split.apply_head(torch.zeros_like(h).scatter_(1, i, fill))


@register("ash_s")
class ASHS(_Percentile):
    """ASH-S: energy of W (prune(h) exp(s1 / s2)) + b."""

    def score(self, split):
        return pruned_energies(split, kept(split.dim, self.percentile))[1]


@register("scale")
class SCALE(_Percentile):
    """SCALE: energy of W (h exp(s1 / s2)) + b, the row itself unpruned: exp(s1 / s2) (z - b) + b with the
    logits z kept for the run, so it costs no product of its own."""

    def __init__(self, percentile: float = 85):
        super().__init__(percentile)

    def score(self, split):
        k = kept(split.dim, self.percentile)
        z_all = split.logits

        def block(lo, hi, h):
            r = sum_ratio(h.sum(1), torch.topk(h, k, dim=1).values.sum(1))
            b = split.bias
            return energy(torch.exp(r)[:, None] * (split.tensor(z_all[lo:hi]) - b) + b)
        return split.map_blocks(block, dtype=np.float64)


@register("vra")
class VRA(Detector):
    """VRA as OpenOOD runs it: energy of W clip(h, t_low, t_high) + b, with t_low and t_high the
    ``percentile_low`` and ``percentile_high`` percentiles of all train feature elements. OpenOOD takes the
    percentiles of its ID validation features; here the train split gives them, as for ReAct (and shares its
    memoised quantiles).
    """

    grid = {"percentile_low": [1, 5, 10, 15], "percentile_high": [85, 90, 95, 99]}

    def __init__(self, percentile_low: float = 10, percentile_high: float = 90):
        self.percentile_low, self.percentile_high = percentile_low, percentile_high

    def fit(self, train):
        if not 0 <= self.percentile_low <= self.percentile_high <= 100:
            raise InputError(f"vra needs 0 <= percentile_low <= percentile_high <= 100, got "
                             f"{self.percentile_low} and {self.percentile_high}")
        self.low_, self.high_ = train_clips(train, [self.percentile_low / 100.0, self.percentile_high / 100.0])
        if self.low_ == self.high_:
            self.note(f"its low and high train percentiles are equal ({self.low_:g}): every feature is clipped to "
                      f"that value, so every row gets the same score")
        return self

    def score(self, split):
        return _energy_of(split, lambda h: split.apply_head(h.clamp(self.low_, self.high_)))
