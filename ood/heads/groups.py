"""Group-softmax heads (MOS, Huang & Li, CVPR 2021): group layouts, the group softmax, and the head file.

The classes are divided into groups; each group has a softmax over its own classes plus one extra "others"
category. A group head holds the class logits z = W h + b [C] (in class order) and one "others" logit per group
o = W_o h + b_o [G]; ``group_of_class`` [C] says which group each class belongs to. Everything is vectorised over
groups (a scatter-max and a one-hot product), so K groups cost the same as one flat softmax.

The head file is an fc file (``fc/weight``, ``fc/bias`` = the class rows, so every logit detector can read it)
plus ``groups/others_weight`` [G, D], ``groups/others_bias`` [G], ``groups/group_of_class`` [C]; root attribute
``head_type`` = "group_softmax".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch

from ..features import FeatureFileError, Head, base_attrs, h5_writing, read_head
from ..split import resolve_device
from ..errors import InputError

GROUP_HEAD = "group_softmax"
FLAT_HEAD = "flat_softmax"
#: more classes than any group file describes: a larger count is a mistake, refused before memory is spent on it
MAX_CLASSES = 10_000_000


@dataclass(kw_only=True)
class GroupHead(Head):
    """A head's class rows (weight [C, D], bias [C]) plus per-group "others" rows (others_weight [G, D],
    others_bias [G]) and the group of every class."""

    others_weight: np.ndarray
    others_bias: np.ndarray
    group_of_class: np.ndarray

    @property
    def num_groups(self) -> int:
        return self.others_weight.shape[0]

    def class_head(self) -> Head:
        return Head(self.weight, self.bias, self.class_names, self.attrs)


# --------------------------------------------------------------------------------------------- layouts


def check_layout(group_of_class, source="groups") -> np.ndarray:
    """``group_of_class`` as int64, every group 0..G-1 holding at least one class."""
    g = np.asarray(group_of_class)
    if g.ndim != 1 or g.size == 0 or not np.issubdtype(g.dtype, np.integer):
        raise InputError(f"{source}: expected one integer group index per class, got shape {g.shape} {g.dtype}")
    if g.min() < 0:
        raise InputError(f"{source}: negative group index {int(g.min())}")
    if g.max() >= g.size:
        raise InputError(f"{source}: group index {int(g.max())} for {g.size} classes leaves some group empty")
    empty = np.setdiff1d(np.arange(g.max() + 1), g)
    if empty.size:
        raise InputError(f"{source}: group {int(empty[0])} has no classes")
    return g.astype(np.int64)


def layout_from_counts(counts, source="groups") -> np.ndarray:
    """MOS form (its ``classes_per_group``): the class count of each group, classes taken in class order."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or (counts <= 0).any():
        raise InputError(f"{source}: class counts per group must be positive integers")
    if counts.sum() > MAX_CLASSES:
        raise InputError(f"{source}: the class counts add up to {int(counts.sum())} classes, more than "
                         f"{MAX_CLASSES} (is it a group index per class?)")
    return np.repeat(np.arange(counts.size), counts)


def read_groups(path) -> np.ndarray:
    """A group file (.npy, or integers in a text file): class counts per group, or one group index per class.

    The two forms cannot be confused: an index list always contains group 0, a count list never contains 0.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such group file")
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.array(path.read_text(encoding="utf-8").replace(",", " ").split(), dtype=np.float64)
    except (ValueError, OSError, UnicodeDecodeError, EOFError) as e:
        raise InputError(f"{path}: not a group file of integers ({e.__class__.__name__}: {e})") from None
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind not in "fiu":
        raise InputError(f"{path}: expected integers, got an array of {values.dtype}")
    if values.size == 0 or not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)) \
            or np.abs(values).max() > MAX_CLASSES:
        raise InputError(f"{path}: expected integers (class counts per group, or a group index per class)")
    values = values.astype(np.int64)
    return check_layout(values, str(path)) if (values == 0).any() else layout_from_counts(values, str(path))


def kmeans_groups(class_means: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Cluster the L2-normalised class-mean features into ``k`` groups (k-means, 10 restarts).

    Groups are numbered in order of their smallest class index, so the layout does not depend on the
    arbitrary cluster numbering.
    """
    from sklearn.cluster import KMeans

    C = class_means.shape[0]
    if not 1 <= k <= C:
        raise InputError(f"kmeans:{k}: the number of groups must be between 1 and the {C} classes")
    m = np.asarray(class_means, dtype=np.float64)
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(m)
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(np.argsort(first))
    return check_layout(order[raw], f"kmeans:{k}")


# --------------------------------------------------------------------------------------------- math


def _group_exp(z, o, group_of_class, onehot):
    """Per-group max m [B, G], exp(z - m_group) [B, C], exp(o - m) [B, G] and their per-group sums s [B, G]."""
    idx = group_of_class.expand(z.shape[0], -1)
    m = o.scatter_reduce(1, idx, z, reduce="amax", include_self=True)
    ez, eo = torch.exp(z - m.gather(1, idx)), torch.exp(o - m)
    return m, ez, eo, eo + ez @ onehot


def group_lse(z: torch.Tensor, o: torch.Tensor, group_of_class: torch.Tensor, onehot: torch.Tensor
              ) -> torch.Tensor:
    """logsumexp over each group's softmax inputs (its "others" logit and its class logits): [B, G].

    ``onehot`` [C, G] is ``group_of_class`` one-hot; the per-group maximum keeps every exp in range.
    """
    m, _, _, s = _group_exp(z, o, group_of_class, onehot)
    return m + torch.log(s)


def one_hot(group_of_class: torch.Tensor, num_groups: int, dtype=torch.float32) -> torch.Tensor:
    return torch.nn.functional.one_hot(group_of_class, num_groups).to(dtype)


def group_loss_grad(z, o, labels, group_of_class, onehot):
    """MOS loss, mean over the batch, and its gradients with respect to z and o: (loss, dz, do).

    The loss is the cross-entropy summed over groups, where the sample's own group targets its class and every
    other group targets "others". Its gradient is each group's softmax minus that group's one-hot target, so
    no autograd graph is needed (two matrix products a step: logits and the weight gradient).
    """
    B = z.shape[0]
    rows = torch.arange(B, device=z.device)
    own = group_of_class[labels]
    m, ez, eo, s = _group_exp(z, o, group_of_class, onehot)
    target = o.sum(1) - o[rows, own] + z[rows, labels]
    loss = (m + torch.log(s)).sum(1).sub(target).mean()
    dz = ez / s.gather(1, group_of_class.expand(B, -1))
    dz[rows, labels] -= 1
    do = eo / s - 1
    do[rows, own] += 1
    return loss, dz / B, do / B


class GroupScorer:
    """A group head on a torch device: ``logits(h)`` gives (z [B, C], o [B, G]) with one matrix product."""

    def __init__(self, head: GroupHead, device: torch.device = torch.device("cpu")):
        w = np.concatenate([head.weight, head.others_weight]).astype(np.float32)
        b = np.concatenate([head.bias, head.others_bias]).astype(np.float32)
        self.C, self.G = head.num_classes, head.num_groups
        self.w = torch.as_tensor(w, device=device)
        self.b = torch.as_tensor(b, device=device)
        self.g = torch.as_tensor(head.group_of_class, device=device)
        self.onehot = one_hot(self.g, self.G)

    def logits(self, h: torch.Tensor):
        out = torch.addmm(self.b, h, self.w.T)
        return out[:, :self.C], out[:, self.C:]

    def others_log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """log p("others") in every group: [B, G]."""
        z, o = self.logits(h)
        return o - group_lse(z, o, self.g, self.onehot)

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """MOS prediction: the class with the highest probability within its own group's softmax."""
        z, o = self.logits(h)
        lse = group_lse(z, o, self.g, self.onehot)
        return (z - lse.gather(1, self.g.expand(z.shape[0], -1))).argmax(1)


# --------------------------------------------------------------------------------------------- files


def write_group_head(path, head: GroupHead, *, overwrite: bool = True, **attrs):
    """Write the group head file under a temporary name, then rename it into place."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FeatureFileError(f"{path}: exists already; pass --overwrite to replace it")
    with h5_writing(path) as h5:
        for key, value in base_attrs(**{**head.attrs, **attrs}, head_type=GROUP_HEAD,
                                     num_groups=head.num_groups).items():
            h5.attrs[key] = value
        h5.attrs["complete"] = True
        h5.create_dataset("fc/weight", data=np.asarray(head.weight, dtype=np.float32))
        h5.create_dataset("fc/bias", data=np.asarray(head.bias, dtype=np.float32))
        h5.create_dataset("groups/others_weight", data=np.asarray(head.others_weight, dtype=np.float32))
        h5.create_dataset("groups/others_bias", data=np.asarray(head.others_bias, dtype=np.float32))
        h5.create_dataset("groups/group_of_class", data=np.asarray(head.group_of_class, dtype=np.int64))
        if head.class_names is not None:
            h5.create_dataset("class_names", data=list(head.class_names), dtype=h5py.string_dtype("utf-8"))


def is_group_head(path) -> bool:
    """True for an HDF5 file holding a group layout (False for pickles and plain fc files)."""
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle") or not path.exists():
        return False
    try:
        with h5py.File(path, "r") as h5:
            return "groups/group_of_class" in h5
    except OSError:
        return False


def read_group_head(path) -> GroupHead:
    """The group head of a file written by :func:`write_group_head`; one clear error for anything else."""
    fc = read_head(path)
    if not is_group_head(path):
        raise FeatureFileError(f"{path}: has no group layout (groups/group_of_class); make one with "
                               f"'python -m ood.heads train TRAIN.h5 OUT.h5 --groups GROUPS'")
    try:
        with h5py.File(path, "r") as h5:
            ow = np.asarray(h5["groups/others_weight"][()], dtype=np.float32)
            ob = np.asarray(h5["groups/others_bias"][()], dtype=np.float32).reshape(-1)
            g = np.asarray(h5["groups/group_of_class"][()])
    except (KeyError, OSError, TypeError, ValueError, AttributeError) as e:
        raise FeatureFileError(f"{path}: groups/others_weight, others_bias and group_of_class must be arrays of "
                               f"numbers ({e.__class__.__name__}: {e})") from None
    try:
        g = check_layout(g, f"{path}: groups/group_of_class")
    except ValueError as e:
        raise FeatureFileError(str(e)) from None
    if g.size != fc.num_classes or ow.shape != (g.max() + 1, fc.dim) or ob.shape != (ow.shape[0],):
        raise FeatureFileError(f"{path}: group layout does not fit the head: {g.size} class groups, "
                               f"others weight {ow.shape}, others bias {ob.shape}, fc {fc.weight.shape}")
    if not (np.isfinite(ow).all() and np.isfinite(ob).all()):
        raise FeatureFileError(f"{path}: groups/others_weight or others_bias contains NaN or Inf")
    return GroupHead(fc.weight, fc.bias, fc.class_names, fc.attrs, others_weight=ow, others_bias=ob,
                     group_of_class=g)


def group_accuracy(head: GroupHead, features: np.ndarray, labels: np.ndarray, device="auto",
                   rows: int = 8192) -> Optional[float]:
    """Share of labelled rows whose group and class are both right (MOS's accuracy); None without labels."""
    known = np.asarray(labels) >= 0
    if not known.any():
        return None
    scorer = GroupScorer(head, resolve_device(device))
    x, y = features[known], np.asarray(labels)[known]
    right = 0
    for lo in range(0, len(x), rows):
        h = torch.as_tensor(np.ascontiguousarray(x[lo:lo + rows], dtype=np.float32), device=scorer.w.device)
        right += int((scorer.predict(h).cpu().numpy() == y[lo:lo + rows]).sum())
    return right / len(x)

