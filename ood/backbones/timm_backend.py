"""timm backbones: any timm model name, weights from a local checkpoint or timm's own pretrained loading.

Features are timm's pre-logits output (``forward_head(forward_features(x), pre_logits=True)``: pooled, after
any head norm or pre-logits layer), logits the model's own output, the head ``get_classifier()`` read as
[C, D] whatever its layout (Linear, BiT's 1x1 convolution, ...). Preprocessing defaults to timm's resolved
data config (``resolve_data_config`` + ``create_transform``), as timm's validation script uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


from ..features import Head
from . import Backbone, linear_params, register, resize_transform, split_normalize
from ..errors import InputError


def load_checkpoint(model, path) -> None:
    """Load a local .pth / .safetensors (timm's loader, strict) or a .npz (the model's own npz loader, e.g. BiT)."""
    import timm.models

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".npz":
            if not hasattr(model, "load_pretrained"):
                raise InputError(f"{type(model).__name__} cannot load .npz weights")
            model.load_pretrained(str(path))
        else:
            timm.models.load_checkpoint(model, str(path), strict=True)
    except (RuntimeError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise InputError(f"{path}: cannot load into {type(model).__name__} ({first}); "
                         f"is it the right model, and does --num_classes match?") from None


@register("timm")
class TimmBackbone(Backbone):
    """``timm.create_model(model)``; ``pretrained=True`` uses timm's own weights where the machine has them."""

    feature_source = "timm forward_head(pre_logits=True)"

    def __init__(self, model: str, checkpoint=None, *, resize: Optional[int] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 pretrained: bool = False, num_classes: Optional[int] = None):
        import timm
        import timm.data

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        try:
            self.model = timm.create_model(model, pretrained=pretrained, **kwargs)
        except RuntimeError as e:
            raise InputError(f"timm: {e}") from None
        if checkpoint:
            load_checkpoint(self.model, checkpoint)
        self.model.eval()
        if resize:
            self.transform, self.mean, self.std, self.preprocess = resize_transform(resize, mean, std)
        else:
            cfg = timm.data.resolve_data_config({}, model=self.model)
            if mean:
                cfg["mean"] = tuple(mean)
            if std:
                cfg["std"] = tuple(std)
            self.transform, self.mean, self.std = split_normalize(timm.data.create_transform(**cfg, is_training=False))
            self.preprocess = {"size": list(cfg["input_size"][1:]), "crop": cfg.get("crop_pct"),
                               "crop_mode": cfg.get("crop_mode"), "interpolation": cfg["interpolation"],
                               "mean": list(cfg["mean"]), "std": list(cfg["std"]), "source": "timm data config"}

    @property
    def has_head(self) -> bool:
        return getattr(self.model, "num_classes", 0) > 0

    def forward(self, x):
        h = self.model.forward_features(x)
        features = self.model.forward_head(h, pre_logits=True)
        logits = self.model.forward_head(h) if self.has_head else None
        return features, logits

    def head(self) -> Optional[Head]:
        if not self.has_head:
            return None
        layer = self.model.get_classifier()
        if isinstance(layer, (tuple, list)):
            raise InputError(f"{type(self.model).__name__} has {len(layer)} classifier heads (distilled); "
                             "its logits are not one linear map of the pre-logits features")
        dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features
        w, b = linear_params(layer, dim)
        return Head(w, b, attrs={"head_layer": type(layer).__name__})
