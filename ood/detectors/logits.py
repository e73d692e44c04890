"""Detectors that read only the logits (and, for GradNorm, the feature norm), with composable score functions.

The functions take torch tensors of a block of rows and return one score a row, higher = more ID, so other
detectors compose them (ReAct's clipped logits feed ``energy``; GEN + ReAct feeds ``gen`` the clipped softmax).
"""
from __future__ import annotations

import numpy as np
import torch

from ..split import Split
from .base import Detector, register


def energy(z: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """T * logsumexp(z / T) (Liu et al. 2020, "Energy-based OOD detection"); T = 1 is logsumexp(z)."""
    return T * torch.logsumexp(z / T, dim=1) if T != 1.0 else torch.logsumexp(z, dim=1)


def gen(p: torch.Tensor, gamma: float = 0.1, M: int = 100) -> torch.Tensor:
    """-sum over the M largest probabilities of p^gamma (1-p)^gamma (Liu et al., CVPR 2023)."""
    top = torch.topk(p, min(M, p.shape[1]), dim=1, sorted=False).values
    return -(top.pow(gamma) * (1 - top).pow(gamma)).sum(1)


def gen_from_logits(z: torch.Tensor, gamma: float = 0.1, M: int = 100) -> torch.Tensor:
    """GEN of softmax(z), in float64 and the log domain.

    p^gamma weighs tiny probabilities heavily (1e-40 ** 0.1 = 1e-4), so they must not underflow, and
    (1 - p)^gamma amplifies the rounding of 1 - p near p = 1, so 1 - p_max is the sum of all the other
    probabilities (no cancellation). Only the M largest entries are raised to powers.
    """
    zs, others = centred_logits(z)
    top = torch.topk(zs, M, dim=1, sorted=False).values if M < zs.shape[1] else zs
    return gen_from_top(top, others, gamma)


def centred_logits(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z - its row maximum, float64; [B, 1] the sum of exp of every entry but one maximum): what GEN needs."""
    zs = z.double() - z.max(1, keepdim=True).values.double()  # the row maximum becomes 0
    others = torch.exp(zs).scatter(1, zs.argmax(1, keepdim=True), 0.0).sum(1, keepdim=True)
    return zs, others


def gen_from_top(top: torch.Tensor, others: torch.Tensor, gamma: float = 0.1) -> torch.Tensor:
    """GEN from the M largest centred logits ``top`` [B, M] (float64, the maximum at 0) and ``others`` [B, 1]
    of :func:`centred_logits`: -sum p^gamma (1 - p)^gamma over them, in the log domain."""
    log_p = top - torch.log1p(others)
    one_minus_p = torch.where(top == 0.0, others / (1 + others), -torch.expm1(log_p))
    return -(torch.exp(gamma * log_p) * one_minus_p.pow(gamma)).sum(1)


def neg_entropy(p: torch.Tensor) -> torch.Tensor:
    """sum p log p, with 0 log 0 = 0 (the reference yields NaN there)."""
    return torch.special.xlogy(p, p).sum(1)


def _on_logits(split: Split, fn) -> np.ndarray:
    return split.map_blocks(lambda lo, hi, z: fn(z), source="logits", dtype=np.float64)


def _on_softmax(split: Split, fn) -> np.ndarray:
    return _on_logits(split, lambda z: fn(torch.softmax(z, dim=1)))


@register("msp")
class MSP(Detector):
    """Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017)."""

    def score(self, split):
        return _on_softmax(split, lambda p: p.max(1).values)


@register("maxlogit")
class MaxLogit(Detector):
    """Maximum logit (Hendrycks et al., ICML 2022, "Scaling OOD detection to real-world settings")."""

    def score(self, split):
        return _on_logits(split, lambda z: z.max(1).values)


@register("energy")
class Energy(Detector):
    """Energy score T * logsumexp(z / T) (Liu et al., NeurIPS 2020)."""

    grid = {"T": [0.5, 1.0, 2.0, 5.0, 10.0]}

    def __init__(self, T: float = 1.0):
        self.T = T

    def score(self, split):
        return _on_logits(split, lambda z: energy(z, self.T))


@register("entropy")
class Entropy(Detector):
    """Negative Shannon entropy of the softmax, sum p log p (0 log 0 = 0)."""

    def score(self, split):
        return _on_softmax(split, neg_entropy)


@register("gen")
class GEN(Detector):
    """Generalized entropy over the M largest probabilities (Liu et al., CVPR 2023)."""

    grid = {"gamma": [0.01, 0.05, 0.1, 0.3, 0.5, 1.0], "M": [10, 50, 100, 1000]}

    def __init__(self, gamma: float = 0.1, M: int = 100):
        self.gamma, self.M = gamma, M

    def score(self, split):
        return _on_logits(split, lambda z: gen_from_logits(z, self.gamma, self.M))


@register("gradnorm")
class GradNorm(Detector):
    """GradNorm (Huang et al., NeurIPS 2021): L1 norm of d CE(softmax(Wh+b), all-ones) / dW.

    The gradient is (C p - 1) h^T, so its L1 norm is (sum_c |C p_c - 1|) * (sum_d |h_d|): no backward pass.
    """

    def score(self, split):
        C = split.num_classes
        l1 = split.map_blocks(lambda lo, hi, h: h.abs().sum(1), dtype=np.float64)
        return l1 * _on_softmax(split, lambda p: (C * p - 1).abs().sum(1))
