"""Heads made after extraction, from stored features or text: MOS group-softmax (and flat) heads trained on
cached train features, and CLIP zero-shot heads. ``python -m ood.heads`` is the command line."""
from .groups import (GroupHead, GroupScorer, group_accuracy, is_group_head, kmeans_groups, read_group_head,
                     read_groups, write_group_head)
from .train import train_head

__all__ = ["GroupHead", "GroupScorer", "group_accuracy", "is_group_head", "kmeans_groups", "read_group_head",
           "read_groups", "train_head", "write_group_head"]
