"""MOS: minimum "others" score under a group-softmax head (Huang & Li, CVPR 2021, "MOS: Towards Scaling
Out-of-distribution Detection for Large Semantic Space").

Each group's softmax runs over its own classes plus an "others" category; an ID sample is confidently inside
one group, so at least one group gives "others" a low probability. score = -min_g p_g("others").
The group head is an input of the run, like the fc head: it comes in through ``split.extras["group_head"]``
(``benchmark.py --head``, or a group head file given as the fc file), made by ``python -m ood.heads train``.
"""
from __future__ import annotations

import numpy as np
import torch

from ..features import FeatureFileError
from ..heads.groups import GroupScorer
from .base import Detector, register
from ..errors import InputError


@register("mos")
class MOS(Detector):
    """-min over groups of the "others" probability of a group-softmax head."""

    requires = ("group_head",)

    def fit(self, train):
        head = train.extras.get("group_head")
        if head is None:
            raise InputError("mos needs a group-softmax head: pass --head HEAD.h5 "
                             "(made by 'python -m ood.heads train TRAIN.h5 HEAD.h5 --groups GROUPS')")
        if head.dim != train.dim:
            raise FeatureFileError(f"{train.path}: feature width {train.dim} does not match the group head's "
                                   f"input width {head.dim}")
        self.head_ = head
        return self

    def score(self, split):
        scorer = GroupScorer(self.head_, split.device)
        return split.map_blocks(lambda lo, hi, h: -torch.exp(scorer.others_log_prob(h).min(1).values),
                                dtype=np.float64)
