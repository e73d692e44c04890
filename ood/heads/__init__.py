"""Heads made after extraction, from stored features or text: MOS group-softmax (and flat) heads trained on
cached train features, and CLIP zero-shot heads. ``python -m ood.heads`` is the command line.

The names load on first use (torch with them), so the command line's help and argument errors come back at
once."""
import importlib

_EXPORTS = {name: "ood.heads.groups" for name in ("GroupHead", "GroupScorer", "group_accuracy", "is_group_head",
                                                  "kmeans_groups", "read_group_head", "read_groups",
                                                  "write_group_head")}
_EXPORTS["train_head"] = "ood.heads.train"
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ood.heads' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
