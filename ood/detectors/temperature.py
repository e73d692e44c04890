"""Maximum softmax of temperature-scaled logits: temperature scaling (T fitted) and ODIN without noise.

Both score the log-odds of the top class, log(p / (1 - p)) with p = max softmax(z / T): a monotone function
of p, so every metric equals that of p itself, computed without p rounding to 1.0 when T is small.

A library caller gives the ID validation split in the train split's extras:

>>> import numpy as np, ood
>>> rng = np.random.default_rng(0)
>>> head = ood.Head(rng.normal(size=(3, 8)).astype("float32"), np.zeros(3, "float32"))
>>> train = ood.Split.from_arrays("train", rng.normal(size=(60, 8)), head, labels=rng.integers(0, 3, 60))
>>> val = rng.normal(size=(30, 8))
>>> train.extras["id_val"] = ood.Split.from_arrays("id_val", val, head, labels=rng.integers(0, 3, 30))
>>> det = ood.create("temp_scaling").fit(train)
>>> det.fitted_on_
'id_val'
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from ..errors import InputError
from ..split import LABELS, Split
from .base import Detector, register

T_RANGE = (1e-3, 1e3)
FIT_ROWS = 10_000  # a seeded sample this size pins one scalar down about as well as all the rows would
#: a fitted T within this factor of a search bound sits at that bound
AT_BOUND = 1.01


def msp_at(split: Split, T: float) -> np.ndarray:
    """max softmax(z / T) of every row as its log-odds, log(p_max / (1 - p_max)) = -logsumexp over the other
    classes of (z_j - z_max) / T: the same ranking as p_max (so the same AUROC and FPR), but a small fitted T
    cannot saturate p_max to 1.0 for every confident row and turn the ranking into ties."""
    def block(lo, hi, z):
        zs = (z.double() - z.max(1, keepdim=True).values.double()) / T
        others = zs.scatter(1, zs.argmax(1, keepdim=True), float("-inf"))
        return -torch.logsumexp(others, dim=1)
    return split.map_blocks(block, source="logits", dtype=np.float64)


def labelled_rows(split: Split) -> np.ndarray:
    """The rows of ``split`` with a class label (labels below 0 mean none); a label beyond the head's classes
    is an error naming the file."""
    y = split.labels
    bad = y >= split.num_classes
    if bad.any():
        raise InputError(f"{split.path}: {int(bad.sum())} labels outside [0, {split.num_classes}) (first: "
                         f"{int(y[bad][0])} at row {int(np.argmax(bad))}); temperature scaling fits on class labels")
    return np.flatnonzero(y >= 0)


def logit_rows(split: Split, rows: np.ndarray) -> torch.Tensor:
    """The logits of the given sorted rows on the split's device: from the held logits, else the head applied
    to just those rows' features (a streamed split is never read whole)."""
    if split.keep_logits or split.head is None:
        return split.tensor(split.logits[rows])
    x, step = split.take(rows), split.block_rows()
    return torch.cat([split.apply_head(split.tensor(x[lo:lo + step])) for lo in range(0, len(rows), step)])


def fit_temperature(split: Split) -> dict:
    """The T in T_RANGE minimising the mean NLL of softmax(z / T) on the labelled rows of ``split`` (at most
    FIT_ROWS of them, seeded), by bounded Brent search on log T; the logits are computed once and held on the
    device. Returns ``T``, ``rows`` (how many it was fitted on) and ``separable``: every one of those rows has
    its label as the strict argmax, so the NLL falls monotonically as T -> 0 and has no minimum (then T is the
    lower bound of the search)."""
    rows = labelled_rows(split)
    if rows.size == 0:
        raise InputError(f"{split.path}: no labelled rows to fit the temperature on")
    if rows.size > FIT_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(rows, FIT_ROWS, replace=False))
    z, step = logit_rows(split, rows), split.block_rows()
    y = torch.as_tensor(split.labels[rows], device=z.device)
    z_true = z.gather(1, y[:, None])
    separable = bool((z.scatter(1, y[:, None], float("-inf")).max(1, keepdim=True).values < z_true).all())
    if separable:
        return {"T": T_RANGE[0], "rows": int(rows.size), "separable": True}
    total_true = float(z_true.double().sum())

    def nll(log_t):
        T = float(np.exp(log_t))
        total = sum(float(torch.logsumexp(z[lo:lo + step].double() / T, dim=1).sum())
                    for lo in range(0, len(rows), step))
        return (total - total_true / T) / len(rows)
    best = minimize_scalar(nll, bounds=np.log(T_RANGE), method="bounded", options={"xatol": 1e-6})
    return {"T": float(np.exp(best.x)), "rows": int(rows.size), "separable": False}


@register("temp_scaling")
class TempScaling(Detector):
    """Temperature scaling (Guo et al., "On calibration of modern neural networks", ICML 2017): max softmax(z / T)
    with T minimising the NLL of labelled ID rows the head was NOT fitted on.

    On its own train split a head that separates every row (100 % train accuracy, common for a linear head on
    strong features) has an NLL that keeps falling as T -> 0: the fit collapses to the bound of the search and
    AUROC drops against both peers. So T is fitted on the ID validation split the benchmark puts in
    ``train.extras["id_val"]``: the ``--tune_id`` file when given, else a seeded 10 % hold-out of the ID test
    split, and then this detector is scored on the remaining ID test rows (the table's note says so). Without
    one (library use, sood) it falls back to the train labels, with a note that T is then biased low.

    T is the exact NLL minimum over [1e-3, 1e3] (bounded Brent search on log T, at most 10,000 seeded rows).
    When every fitting row is classified correctly the NLL has no minimum (it falls as T -> 0): T is set to the
    lower bound 1e-3, where the scores rank by the top-two logit margin, and a note says so; a T at the upper
    bound (predictions no better than uniform) is noted too.

    Peers: OpenOOD (TemperatureScalingPostprocessor) and pytorch-ood (TemperatureScaling) fit T on the ID
    validation split with L-BFGS, lr 0.01, 50 iterations, from T = 1.5 (OpenOOD) or 1.0 (pytorch-ood); the small
    learning rate makes that one optimizer step stop short of the NLL optimum, so their T stays nearer its start.
    We minimise exactly, and score the log-odds of max softmax(z / T) (the same ranking).
    """

    requires = ("id_val",)

    def fit(self, train):
        val = train.extras.get("id_val")
        split = val if val is not None and labelled_rows(val).size else train
        fit = split.memo(("fitted_temperature", LABELS), lambda: fit_temperature(split))
        self.T_, self.fitted_on_ = fit["T"], split.name
        if split is not train:
            self.note(f"T = {self.T_:.4g} fitted by NLL on {fit['rows']} labelled ID validation rows")
        else:
            self.note(f"no labelled ID validation split: T = {self.T_:.4g} fitted by NLL on {fit['rows']} train "
                      f"rows, which the head was fitted on (T is biased low; give --tune_id or labelled ID test "
                      f"rows)")
        if fit["separable"]:
            self.note(f"all {fit['rows']} rows T was fitted on are classified correctly, so their NLL falls as "
                      f"T -> 0 and has no minimum: T is the search's lower bound {T_RANGE[0]:g} (the scores rank "
                      f"by the top-two logit margin)")
        elif self.T_ >= T_RANGE[1] / AT_BOUND:
            self.note(f"fitted T = {self.T_:.4g} is at the upper bound of the search: the head's predictions on the "
                      f"fitting rows are no better than uniform")
        elif self.T_ <= T_RANGE[0] * AT_BOUND:
            self.note(f"fitted T = {self.T_:.4g} is at the lower bound of the search")
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
