"""Backbones behind one interface: images -> (penultimate features, logits), their preprocessing and linear head.

``create_backbone("timm" | "mmpretrain" | "open_clip", model, **options)`` builds one; each backend lives in its
own module, imported only when asked for, so a missing optional library (mmpretrain) costs nothing until used.
A backbone's ``transform`` turns an RGB PIL image into a uint8 CHW tensor (small to pass between processes
and to copy to a GPU) and ``mean``/``std`` (0-1 scale) normalise the batch on the device; ``preprocess``
describes it all (stored in the feature file). ``resize=N`` replaces the model's own preprocessing by ViM's
(plain resize to N x N, ImageNet mean/std unless ``mean``/``std`` are given), for exact reproductions of ViM/GEN.
"""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import nn

from ..features import Head
from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKENDS = ("timm", "mmpretrain", "open_clip")

_REGISTRY: Dict[str, Type["Backbone"]] = {}


class Backbone:
    """A feature extractor: subclasses set ``model``, ``transform``, ``preprocess`` and implement ``forward``."""

    name: str = ""
    #: what ``features`` holds, stored in the file's ``feature_source`` attribute
    feature_source: str = ""

    model: nn.Module
    #: RGB PIL image -> uint8 CHW tensor (or an already normalised float tensor when mean is None)
    transform = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    preprocess: dict
    _norm = None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Features [B, D] and logits [B, C] (None when the model has no head) of a normalised batch."""
        raise NotImplementedError

    def head(self) -> Optional[Head]:
        """The linear head (logits = features @ W.T + b) as float32 arrays, or None."""
        raise NotImplementedError

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """A batch from ``transform`` as the model's float input: (x / 255 - mean) / std."""
        if self.mean is None:
            return x
        if self._norm is None or self._norm[0].device != x.device:
            self._norm = tuple(torch.tensor(v, device=x.device).view(1, -1, 1, 1) * 255 for v in (self.mean, self.std))
        return (x.float() - self._norm[0]) / self._norm[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device, channels_last: bool = False) -> "Backbone":
        self.model.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        return self


def register(name: str):
    """Class decorator: add a backend to the registry under ``name``."""
    def deco(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def get_backend_class(name: str) -> Type[Backbone]:
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if name not in _REGISTRY:
        importlib.import_module(f"{__name__}.{name}_backend")
    return _REGISTRY[name]


def create_backbone(backend: str, model: str, **options) -> Backbone:
    """Build a backbone; options left at None are dropped, an option the backend does not take is an error."""
    cls = get_backend_class(backend)
    accepted = inspect.signature(cls.__init__).parameters
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    for key in given:
        if key not in accepted:
            raise InputError(f"--{key} does not apply to the {backend} backend")
    return cls(model, **given)


# --------------------------------------------------------------------------------------------- shared pieces


def resize_transform(size: int, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
    """ViM's preprocessing: resize to size x size (bilinear), ImageNet mean/std.

    Returns (uint8 transform, mean, std, description).
    """
    from torchvision import transforms as T

    mean = tuple(mean or IMAGENET_MEAN)
    std = tuple(std or IMAGENET_STD)
    transform = T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR), T.PILToTensor()])
    return transform, mean, std, {"size": [size, size], "resize": [size, size], "crop": None,
                                  "interpolation": "bilinear", "mean": list(mean), "std": list(std),
                                  "source": "resize"}


def split_normalize(transform):
    """(uint8 transform, mean, std) from a Compose ending in ToTensor + Normalize; else (transform, None, None).

    The float conversion and normalisation then run once per batch on the device instead of per image.
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    if len(steps) >= 2 and isinstance(steps[-1], T.Normalize) and \
            type(steps[-2]).__name__ in ("ToTensor", "MaybeToTensor"):
        return T.Compose(steps[:-2] + [T.PILToTensor()]), tuple(steps[-1].mean), tuple(steps[-1].std)
    return transform, None, None


def linear_params(layer: nn.Module, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Weight [C, D] and bias [C] of a linear head: nn.Linear, a 1x1 convolution (BiT), or any affine module.

    Other modules are probed: b = layer(0), W[:, i] = layer(e_i) - b, then checked on random inputs.
    """
    if isinstance(layer, nn.Linear):
        w = layer.weight.detach()
        b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0])
    elif isinstance(layer, nn.Conv2d) and tuple(layer.kernel_size) == (1, 1) and layer.groups == 1:
        w = layer.weight.detach().reshape(layer.out_channels, -1)
        b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0])
    else:
        param = next(layer.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.inference_mode():
            probe = torch.cat([torch.zeros(1, dim), torch.eye(dim)]).to(device)
            try:
                out = layer(probe).float()
            except Exception as e:  # a head with another input layout cannot be read as a matrix
                raise InputError(f"cannot read the head {type(layer).__name__} as a linear layer: {e}") from None
            b, w = out[0], (out[1:] - out[0]).T
            x = torch.randn(4, dim, device=device)
            if not torch.allclose(layer(x).float(), x @ w.T + b, rtol=1e-3, atol=1e-3):
                raise InputError(f"the head {type(layer).__name__} is not an affine map of the features")
    return (w.float().cpu().numpy().astype(np.float32), b.float().cpu().numpy().astype(np.float32).reshape(-1))


def read_lines(path, what: str) -> list:
    """Non-empty lines of a text file (class names, templates); a missing or empty file is a clear error."""
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (FileNotFoundError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the {what} file ({e.__class__.__name__})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise InputError(f"{path}: the {what} file is empty")
    return lines
