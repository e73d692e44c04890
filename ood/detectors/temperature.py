"""Maximum softmax of temperature-scaled logits: temperature scaling (T fitted) and ODIN without noise."""
from __future__ import annotations

import numpy as np
import torch

from ..split import Split
from .base import Detector, register

T_RANGE = (1e-3, 1e3)


def msp_at(split: Split, T: float) -> np.ndarray:
    """max softmax(z / T) for every row."""
    return split.map_blocks(lambda lo, hi, z: torch.softmax(z / T, dim=1).max(1).values, source="logits",
                            dtype=np.float64)


def fit_temperature(train: Split, iterations: int = 50, tol: float = 1e-10) -> float:
    """The T minimising the mean NLL of softmax(z / T) on the train labels.

    The NLL is convex in beta = 1 / T, with derivative mean(E_p[z] - z_y) and second derivative mean(Var_p[z])
    under p = softmax(beta z): Newton's method on beta, one blocked pass over the logits a step.
    """
    y = torch.as_tensor(train.labels, device=train.device)
    beta = 1.0
    for _ in range(iterations):
        grad = hess = 0.0
        for lo, hi, z in train.blocks("logits"):
            z = z.double()
            p = torch.softmax(beta * z, dim=1)
            mean = (p * z).sum(1)
            grad += float((mean - z.gather(1, y[lo:hi, None])[:, 0]).sum())
            hess += float(((p * z * z).sum(1) - mean * mean).sum())
        if hess <= 0:
            break
        step = grad / hess
        new = min(max(beta - step, beta / 4, 1 / T_RANGE[1]), 4 * beta, 1 / T_RANGE[0])
        done = abs(new - beta) <= tol * beta
        beta = new
        if done:
            break
    return 1.0 / beta


@register("temp_scaling")
class TempScaling(Detector):
    """Temperature scaling (Guo et al., ICML 2017): max softmax(z / T), T fitted by the NLL of the ID train
    labels (exactly, by Newton's method on 1/T, kept in [1e-3, 1e3]). OpenOOD fits T by L-BFGS on its ID
    validation split; a feature-file benchmark has the train labels at hand.
    """

    requires = ("train_labels",)

    def fit(self, train):
        self.T_ = train.memo("fitted_temperature", lambda: fit_temperature(train))
        return self

    def score(self, split):
        return msp_at(split, self.T_)


@register("odin")
class ODIN(Detector):
    """ODIN (Liang et al., ICLR 2018) without input perturbation, as MOS runs it (noise 0): max softmax(z / T).

    The perturbation needs the network; on stored features only the temperature is left.
    """

    grid = {"T": [1.0, 10.0, 100.0, 1000.0]}

    def __init__(self, T: float = 1000.0):
        self.T = T

    def score(self, split):
        return msp_at(split, self.T)
