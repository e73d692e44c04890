"""MCM: maximum concept matching (Ming et al., NeurIPS 2022, "Delving into Out-of-Distribution Detection with
Vision-Language Representations").

score = max_c softmax(cos(h, t_c) / T), with t_c the text embedding of class c's prompts and T = 1 by default.
A CLIP zero-shot fc head stores W = logit_scale * t_c / |t_c| (b = 0, or SigLIP's logit bias, which the
cosines leave out), with ``logit_scale`` as a root attribute of the fc file, so the cosines are
(h / |h|) (W / logit_scale)^T. A head without that attribute is not a zero-shot head and is refused.
"""
from __future__ import annotations

import numpy as np
import torch

from ..features import FeatureFileError
from .base import Detector, register

SCALE_ATTR = "logit_scale"


def text_embeddings(split) -> torch.Tensor:
    """The class text embeddings W / logit_scale [C, D] of a zero-shot head, or one clear error."""
    scale = split.head.attrs.get(SCALE_ATTR)
    if scale is None:
        raise FeatureFileError(f"mcm needs a CLIP zero-shot head: the fc head of {split.path} has no "
                               f"'{SCALE_ATTR}' attribute (make one with 'python -m ood.heads zeroshot')")
    return split.weight / float(scale)


@register("mcm")
class MCM(Detector):
    """max_c softmax(cosine(h, text_c) / T) over the class prompts of a CLIP zero-shot head."""

    requires = ("zeroshot_head",)

    def __init__(self, T: float = 1.0):
        self.T = T

    def score(self, split):
        t = text_embeddings(split)

        def block(lo, hi, h):
            cos = torch.nn.functional.normalize(h, dim=1) @ t.T
            return torch.softmax(cos / self.T, dim=1).max(1).values
        return split.map_blocks(block, dtype=np.float64)
