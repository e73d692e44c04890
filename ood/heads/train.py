"""Training a classification head on cached features, with the MOS fine-tuning recipe (Huang & Li, CVPR 2021).

MOS fine-tunes only the head of a frozen BiT backbone with the BiT-HyperRule: zero-initialised head, SGD with
momentum 0.9 and no weight decay, batch 512, base learning rate 0.003, a linear warm-up, then the rate divided
by 10 at fixed steps, with the number of steps chosen by the size of the train set. On cached features the
head is all there is to train, so this is the whole recipe; MOS's image-space augmentation (random crops,
mixup) has no counterpart on stored features and is left out. ``group_of_class=None`` trains the flat-softmax
head MOS compares against, under the same recipe.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ..features import Head
from ..split import resolve_device
from .groups import GroupHead, group_loss_grad, one_hot
from ..errors import InputError
from ..progress import Progress

BATCH = 512
BASE_LR = 0.003
MOMENTUM = 0.9


def bit_schedule(num_samples: int) -> list:
    """Warm-up end, three decay steps and the last step, by train-set size (BiT-HyperRule, as MOS uses it)."""
    if num_samples < 20_000:
        return [100, 200, 300, 400, 500]
    if num_samples < 500_000:
        return [500, 3000, 6000, 9000, 10_000]
    return [500, 6000, 12_000, 18_000, 20_000]


def schedule(num_samples: int, epochs: Optional[float] = None, batch_size: int = BATCH) -> list:
    """The BiT schedule, or with ``epochs`` the same proportions stretched to that many passes over the data."""
    steps = bit_schedule(num_samples)
    if epochs is None:
        return steps
    if epochs <= 0:
        raise InputError(f"--epochs must be positive, got {epochs}")
    total = max(1, math.ceil(epochs * num_samples / batch_size))
    return [max(1, round(s * total / steps[-1])) for s in steps[:-1]] + [total]


def learning_rate(step: int, steps: Sequence[int], base_lr: float = BASE_LR) -> float:
    """Linear warm-up to ``base_lr`` over steps[0] steps, then divided by 10 after each of steps[1:-1]."""
    if step < steps[0]:
        return base_lr * step / steps[0]
    return base_lr / 10 ** sum(step > s for s in steps[1:-1])


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int, rows: int = 65536) -> np.ndarray:
    """Mean train feature of every class [C, D] (float64); a class without train rows is an error."""
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise InputError(f"class {int(np.argmin(counts))} has no train rows, so it has no mean to cluster")
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    y = torch.as_tensor(labels)
    for lo in range(0, len(features), rows):
        sums.index_add_(0, y[lo:lo + rows], torch.as_tensor(features[lo:lo + rows]).double())
    return sums.numpy() / counts[:, None]


def softmax_loss_grad(z: torch.Tensor, labels: torch.Tensor):
    """Cross-entropy, mean over the batch, and its gradient softmax(z) - onehot(y) with respect to z."""
    rows = torch.arange(z.shape[0], device=z.device)
    lse = torch.logsumexp(z, 1)
    dz = torch.exp(z - lse[:, None])
    dz[rows, labels] -= 1
    return (lse - z[rows, labels]).mean(), dz / z.shape[0]


def train_head(features: np.ndarray, labels: np.ndarray, num_classes: int,
               group_of_class: Optional[np.ndarray] = None, *, epochs: Optional[float] = None, seed: int = 0,
               device: str = "auto", batch_size: int = BATCH, base_lr: float = BASE_LR, progress: bool = False):
    """Train a flat (``group_of_class=None``) or group-softmax head; returns (Head or GroupHead, recipe dict).

    The loss gradients with respect to the logits have closed forms, so a step is two matrix products (logits,
    weight gradient) and an SGD update, with no autograd graph.
    """
    n, d = features.shape
    C = num_classes
    G = 0 if group_of_class is None else int(np.max(group_of_class)) + 1
    dev = resolve_device(device)
    steps = schedule(n, epochs, batch_size)
    gen = torch.Generator().manual_seed(seed)

    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32)).to(dev)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(dev)
    weight = torch.zeros(C + G, d, device=dev)
    bias = torch.zeros(C + G, device=dev)
    opt = torch.optim.SGD([weight, bias], lr=base_lr, momentum=MOMENTUM)
    if G:
        g = torch.as_tensor(group_of_class, device=dev)
        onehot = one_hot(g, G)

    def loss_grad(out, target):
        if not G:
            return softmax_loss_grad(out, target)
        loss, dz, do = group_loss_grad(out[:, :C], out[:, C:], target, g, onehot)
        return loss, torch.cat([dz, do], 1)

    bar = Progress(total=steps[-1], desc="train head", unit="step", quiet=not progress)
    order, pos, smooth = torch.randperm(n, generator=gen), 0, None
    for step in range(steps[-1]):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch_size].to(dev)
        pos += batch_size
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, base_lr)
        xb = x[idx]
        loss, dout = loss_grad(torch.addmm(bias, xb, weight.T), y[idx])
        weight.grad, bias.grad = dout.T @ xb, dout.sum(0)
        opt.step()
        if progress and (step % 20 == 0 or step == steps[-1] - 1):
            value = float(loss)
            smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
            bar.set_postfix_str(f"loss {smooth:.4f} lr {opt.param_groups[0]['lr']:.1e}")
        bar.update(1)
    bar.close()

    w = weight.cpu().numpy()
    b = bias.cpu().numpy()
    recipe = {"steps": steps, "batch_size": batch_size, "base_lr": base_lr, "momentum": MOMENTUM,
              "weight_decay": 0.0, "init": "zeros", "seed": seed, "epochs": epochs, "train_rows": n}
    if not G:
        return Head(w, b), recipe
    return GroupHead(w[:C], b[:C], others_weight=w[C:], others_bias=b[C:],
                     group_of_class=np.asarray(group_of_class, dtype=np.int64)), recipe
