"""Gradient uncertainty of the classification head, in closed form.

Lee and AlRegib, "Gradients as a measure of uncertainty in neural networks" (ICIP 2020): the squared L2 norm of
the gradient of the binary cross-entropy between the softmax output and the all-ones "confounding label",
L = -sum_c log p_c. pytorch-ood's ``GradUncertainty`` sums it over the parameters it is given and negates it
as an outlier score; restricted to the head (W, b) the gradient is (C p - 1) h^T for W and C p - 1 for b, so

    |dL/dW|^2 + |dL/db|^2 = |C p - 1|^2 (|h|^2 + 1),

large for a confident prediction, 0 for a uniform one. No backward pass, no per-row loop.

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> W, b = rng.normal(size=(3, 8)), np.zeros(3)
>>> det = ood.create("grad_uncertainty").fit(rng.normal(size=(20, 8)), head=(W, b))
>>> s = det.score(rng.normal(size=(4, 8)))
>>> bool((s >= 0).all())
True
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, register


@register("grad_uncertainty")
class GradUncertainty(Detector):
    """|C p - 1|^2 (|h|^2 + 1): the head's squared gradient norm of -sum_c log p_c (Lee & AlRegib, ICIP 2020).

    pytorch-ood's GradUncertainty with its parameters restricted to the head (weight and bias), as its
    documentation suggests, negated (higher = more ID). Its autograd goes through torch's binary cross-entropy,
    which clamps each log at -100 and each gradient denominator p (1 - p) at 1e-12: for rows with probabilities
    below about 1e-12 (or above 1 - 1e-12) its value departs from the formula, which is computed here exactly
    (float64). The paper's experiments feed per-layer gradient norms to a classifier trained on OOD data; like
    pytorch-ood, this is the unsupervised score. No hyperparameters: nothing to tune.
    """

    def score(self, split):
        C = split.num_classes
        sq_norm = split.map_blocks(lambda lo, hi, h: (h.double() ** 2).sum(1), dtype=np.float64)
        grad = split.map_blocks(lambda lo, hi, z: ((C * torch.softmax(z.double(), dim=1) - 1) ** 2).sum(1),
                                source="logits", dtype=np.float64)
        return grad * (sq_norm + 1)
