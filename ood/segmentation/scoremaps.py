"""Per-pixel OOD scores from segmentation logits [B, C, H, W]: the pixel versions of the image-level detectors.

Each map is higher = more in-distribution, computed over the class axis with the composable functions of
:mod:`ood.detectors.logits`: ``msp`` max softmax (Hendrycks & Gimpel 2017), ``maxlogit`` max logit
(Hendrycks et al. 2022, the SegmentMeIfYouCan baseline), ``energy`` logsumexp (Liu et al. 2020), ``entropy``
sum p log p, ``gen`` generalized entropy (Liu et al., CVPR 2023).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Sequence

from ..errors import InputError

if TYPE_CHECKING:  # torch loads on first use, so segment_images.py --help answers at once
    import torch

PIXEL_DETECTORS = ("msp", "maxlogit", "energy", "entropy", "gen")


def check_detectors(names: Sequence[str]) -> list:
    names = list(names)
    unknown = [n for n in names if n not in PIXEL_DETECTORS]
    if unknown or not names:
        raise InputError(f"unknown pixel detector {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(PIXEL_DETECTORS)}")
    return names


def score_maps(logits: "torch.Tensor", detectors: Sequence[str], gamma: float = 0.1, M: int = 100,
               T: float = 1.0, probs: Optional["torch.Tensor"] = None) -> Dict[str, "torch.Tensor"]:
    """``{name: [B, H, W] float32}`` from logits [B, C, H, W]; the softmax is computed once and shared (or
    given as ``probs`` by a caller that needs it too)."""
    import torch

    from ..detectors.logits import energy, gen, neg_entropy

    z = logits.float()
    p = probs if probs is not None else torch.softmax(z, dim=1) if {"msp", "entropy", "gen"} & set(detectors) else None
    fns = {"msp": lambda: p.max(1).values, "maxlogit": lambda: z.max(1).values, "energy": lambda: energy(z, T),
           "entropy": lambda: neg_entropy(p), "gen": lambda: gen(p, gamma, M)}
    return {name: fns[name]() for name in check_detectors(detectors)}
