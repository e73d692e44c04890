"""A CLIP zero-shot fc head for any class list, made after extraction (no images re-read).

The open_clip backbone builds the head exactly as extraction does (its :func:`zeroshot_head`: prompt-averaged,
normalised text embeddings times the logit scale), and the fc file keeps ``logit_scale`` as a root attribute,
so MCM can recover cosine similarities and every logit detector runs on it like on a supervised head.
"""
from __future__ import annotations

from ..backbones import create_backbone
from ..runtime import checkpoint_attrs
from ..features import write_fc
from ..split import resolve_device


def write_zeroshot_head(model: str, checkpoint, class_names, out, *, templates=None, device: str = "auto",
                        overwrite: bool = False) -> str:
    """Write the zero-shot fc file of ``model`` for the class names in ``class_names``; returns a summary line."""
    backbone = create_backbone("open_clip", model, checkpoint=checkpoint, class_names=class_names,
                               templates=templates)
    backbone.to(resolve_device(device))
    head = backbone.head()
    write_fc(out, head.weight, head.bias, head.class_names, overwrite=overwrite, model=model, backend="open_clip",
             **checkpoint_attrs(checkpoint), **head.attrs)
    return (f"wrote {out}: zero-shot head, {head.num_classes} classes x {head.dim} features, "
            f"{head.attrs['templates']} prompt templates, logit scale {head.attrs['logit_scale']:.4g}")
