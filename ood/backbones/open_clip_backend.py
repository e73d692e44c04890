"""open_clip backbones with a zero-shot head (Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021).

Features are the L2-normalised image embeddings. The head is CLIP's zero-shot classifier: for each class, the
text embeddings of every prompt template are normalised, averaged and normalised again; the logit scale (and a
SigLIP model's logit bias) are folded into W and b, so ``logits = W @ f + b`` are the model's own image-text
logits. :func:`zeroshot_head` is the plain function other tools (MCM, ``python -m ood.heads``) reuse.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..features import Head
from . import Backbone, read_lines, register, resize_transform, split_normalize
from ..errors import InputError

#: The 80 prompt templates CLIP used for ImageNet zero-shot classification ("{}" is the class name).
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)


def zeroshot_head(model, tokenizer, class_names: Sequence[str], templates: Sequence[str] = IMAGENET_TEMPLATES,
                  *, classes_per_batch: int = 32) -> Tuple[np.ndarray, np.ndarray, float]:
    """CLIP's zero-shot classifier as a linear head: (W [C, E], b [C], logit_scale).

    Row c of W is ``logit_scale * normalize(mean_t normalize(text(template_t(class_c))))``; b is the model's
    logit bias (SigLIP) or 0. So for a normalised image embedding f, ``W @ f + b`` are the model's logits and
    ``W / logit_scale`` are the unit class embeddings. Text is encoded on the model's device.
    """
    if not class_names:
        raise InputError("the zero-shot head needs at least one class name")
    for template in templates:
        if "{}" not in template:
            raise InputError(f"prompt template {template!r} has no '{{}}' for the class name")
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for lo in range(0, len(class_names), classes_per_batch):
            chunk = class_names[lo:lo + classes_per_batch]
            tokens = tokenizer([t.format(name) for name in chunk for t in templates]).to(device)
            emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
            rows.append(F.normalize(emb.view(len(chunk), len(templates), -1).mean(1), dim=-1))
        scale = float(model.logit_scale.exp())
        bias = getattr(model, "logit_bias", None)
        bias = 0.0 if bias is None else float(bias)
    weight = (torch.cat(rows) * scale).cpu().numpy().astype(np.float32)
    return weight, np.full(len(class_names), bias, dtype=np.float32), scale


@register("open_clip")
class OpenClipBackbone(Backbone):
    """An open_clip model (a name, or a JSON model config file) with weights from ``checkpoint`` (a file or tag)."""

    feature_source = "open_clip encode_image, L2-normalised"

    def __init__(self, model: str, checkpoint=None, *, resize: Optional[int] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 class_names=None, templates=None):
        import open_clip

        name = model
        if model.endswith(".json"):
            if not os.path.isfile(model):
                raise InputError(f"{model}: no such open_clip model config file")
            open_clip.add_model_config(model)
            name = Path(model).stem
        if name not in open_clip.list_models() and not name.startswith("hf-hub:"):
            raise InputError(f"open_clip: unknown model {model!r}")
        try:
            self.model, _, transform = open_clip.create_model_and_transforms(
                name, pretrained=checkpoint, image_mean=mean, image_std=std)
        except RuntimeError as e:
            raise InputError(f"open_clip: cannot build {model} from {checkpoint}: {e}") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.class_names = read_lines(class_names, "class names") if class_names else None
        self.templates = read_lines(templates, "templates") if templates else list(IMAGENET_TEMPLATES)
        self._head = None
        self._wb = None
        if resize:
            self.transform, self.mean, self.std, self.preprocess = resize_transform(resize, mean, std)
        else:
            cfg = dict(self.model.visual.preprocess_cfg)
            size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
            self.transform, self.mean, self.std = split_normalize(transform)
            self.preprocess = {"size": list(size), "crop": 1.0, "resize_mode": cfg.get("resize_mode"),
                               "interpolation": cfg.get("interpolation"), "mean": list(cfg["mean"]),
                               "std": list(cfg["std"]), "source": "open_clip preprocess_cfg"}

    def head(self) -> Optional[Head]:
        if self.class_names is None:
            return None
        if self._head is None:
            w, b, scale = zeroshot_head(self.model, self.tokenizer, self.class_names, self.templates)
            self._head = Head(w, b, list(self.class_names), {"logit_scale": scale, "templates": len(self.templates)})
        return self._head

    def forward(self, x):
        features = self.model.encode_image(x, normalize=True)
        head = self.head()
        if head is None:
            return features, None
        if self._wb is None or self._wb[0].device != features.device:
            self._wb = (torch.from_numpy(head.weight).to(features.device),
                        torch.from_numpy(head.bias).to(features.device))
        w, b = self._wb
        return features, features.float() @ w.T + b
