"""Maximum softmax of temperature-scaled logits: temperature scaling (T fitted) and ODIN without noise."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from ..split import Split
from .base import Detector, register

T_RANGE = (1e-3, 1e3)
FIT_ROWS = 10_000  # a seeded sample this size pins one scalar down about as well as all the rows would


def msp_at(split: Split, T: float) -> np.ndarray:
    """max softmax(z / T) for every row."""
    return split.map_blocks(lambda lo, hi, z: torch.softmax(z / T, dim=1).max(1).values, source="logits",
                            dtype=np.float64)


def fit_temperature(train: Split) -> float:
    """The T in T_RANGE minimising the mean NLL of softmax(z / T) on the train labels (of at most FIT_ROWS
    seeded rows), by bounded Brent search on log T; the logits are computed once and held on the device."""
    rows = np.arange(train.n)
    if train.n > FIT_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(train.n, FIT_ROWS, replace=False))
    x, step = train.features[rows], train.block_rows()
    z = torch.cat([train.apply_head(train.tensor(x[lo:lo + step])) for lo in range(0, len(rows), step)])
    y = torch.as_tensor(train.labels[rows], device=train.device)
    z_true = float(z.gather(1, y[:, None]).double().sum())

    def nll(log_t):
        T = float(np.exp(log_t))
        total = sum(float(torch.logsumexp(z[lo:lo + step].double() / T, dim=1).sum())
                    for lo in range(0, len(rows), step))
        return (total - z_true / T) / len(rows)
    best = minimize_scalar(nll, bounds=np.log(T_RANGE), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(best.x))


@register("temp_scaling")
class TempScaling(Detector):
    """Temperature scaling (Guo et al., ICML 2017): max softmax(z / T), T fitted by the NLL of the ID train
    labels (bounded search, T in [1e-3, 1e3], on at most 10,000 seeded train rows). OpenOOD fits
    T by L-BFGS on its ID validation split; a feature-file benchmark has the train labels at hand.
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
