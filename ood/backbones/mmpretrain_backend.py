"""mmpretrain (OpenMMLab) classifiers: a model name from mmpretrain's model zoo or a config file, plus a checkpoint.

Features are the input of the head's final linear layer: ``head.pre_logits(extract_feat(x))``, i.e. the neck
output (the ViT class token for GEN's and ViM's ViT-B/16), logits the head's output. The default preprocessing
is the config's own test pipeline (without LoadImageFromFile; images are decoded by PIL) followed by the data
preprocessor's channel order and mean/std, so features match mmpretrain's inference on the same pixels.
Needs ``pip install mmpretrain==1.2.0 mmengine mmcv-lite`` (no compiled mmcv ops are used).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..features import Head
from . import Backbone, linear_params, register, resize_transform
from ..errors import InputError


def _import_mmpretrain():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mmcv-lite warns about compiled ops that classifiers never use
            import mmpretrain
            import mmpretrain.datasets  # noqa: F401  (registers the transforms)
    except ImportError as e:
        raise InputError(f"the mmpretrain backend needs `pip install mmpretrain==1.2.0 mmengine mmcv-lite` ({e})") \
            from None
    return mmpretrain


class PipelineTransform:
    """mmpretrain's test pipeline on a PIL RGB image, then ClsDataPreprocessor's ``to_rgb`` channel flip.

    Returns uint8 CHW; the mean/std step runs on the batch. The transforms are built on first use, so the
    object pickles into DataLoader workers as plain configs.
    """

    def __init__(self, pipeline: Sequence[dict], to_rgb: bool):
        self.pipeline = [dict(t) for t in pipeline]
        self.to_rgb = to_rgb
        self._transforms = None

    def __getstate__(self):
        return {**self.__dict__, "_transforms": None}

    def __call__(self, img) -> torch.Tensor:
        if self._transforms is None:
            _import_mmpretrain()
            from mmpretrain.registry import TRANSFORMS

            self._transforms = [TRANSFORMS.build(t) for t in self.pipeline]
        bgr = np.ascontiguousarray(np.asarray(img.convert("RGB"))[..., ::-1])  # mmcv decodes to BGR
        results = {"img": bgr, "img_shape": bgr.shape[:2], "ori_shape": bgr.shape[:2]}
        for t in self._transforms:
            results = t(results)
        x = results["inputs"] if "inputs" in results else torch.from_numpy(results["img"]).permute(2, 0, 1)
        return x.flip(0).contiguous() if self.to_rgb else x


@register("mmpretrain")
class MMPretrainBackbone(Backbone):
    """``mmpretrain.get_model(model)`` with the checkpoint loaded strictly (a mismatch is an error, not a warning)."""

    feature_source = "mmpretrain head.pre_logits(extract_feat(x))"

    def __init__(self, model: str, checkpoint=None, *, resize: Optional[int] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        _import_mmpretrain()
        from mmengine.runner import load_checkpoint
        from mmpretrain import get_model

        if model.endswith(".py") and not os.path.isfile(model):
            raise InputError(f"{model}: no such mmpretrain config file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = get_model(model, pretrained=False)
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"mmpretrain: cannot build {model!r}: {e}") from None
        self.class_names = None
        if checkpoint:
            if not os.path.isfile(checkpoint):
                raise InputError(f"{checkpoint}: no such checkpoint file")
            try:
                ckpt = load_checkpoint(self.model, checkpoint, map_location="cpu", strict=True, logger="silent")
            except (RuntimeError, KeyError) as e:
                first = str(e).strip().splitlines()[0]
                raise InputError(f"{checkpoint}: cannot load into {model} ({first})") from None
            meta = ckpt.get("meta", {}) if isinstance(ckpt, dict) else {}
            self.class_names = meta.get("dataset_meta", {}).get("classes") or meta.get("CLASSES")
        self.model.eval()
        if resize:
            self.transform, self.mean, self.std, self.preprocess = resize_transform(resize, mean, std)
            return
        cfg = self.model._config
        pipeline = cfg.get("test_dataloader", {}).get("dataset", {}).get("pipeline") or cfg.get("test_pipeline")
        if not pipeline:
            raise InputError(f"mmpretrain: {model} has no test pipeline in its config; pass --resize")
        pipeline = [dict(t) for t in pipeline if t["type"] != "LoadImageFromFile"]
        pre = cfg.model.get("data_preprocessor") or {}
        mean = list(mean) if mean else [m / 255 for m in pre.get("mean") or (0, 0, 0)]
        std = list(std) if std else [s / 255 for s in pre.get("std") or (1 / 255,) * 3]
        to_rgb = bool(pre.get("to_rgb", False))
        self.transform = PipelineTransform(pipeline, to_rgb)
        self.mean, self.std = tuple(mean), tuple(std)
        self.preprocess = {"pipeline": pipeline, "mean": mean, "std": std, "to_rgb": to_rgb,
                           "size": self._output_size(), "source": "mmpretrain test pipeline"}

    def _output_size(self):
        from PIL import Image

        return list(self.transform(Image.new("RGB", (500, 375))).shape[1:])

    def forward(self, x):
        feats = self.model.extract_feat(x)
        return self.model.head.pre_logits(feats), self.model.head(feats)

    def head(self) -> Optional[Head]:
        head = self.model.head
        layer = getattr(head, "fc", None)
        if not isinstance(layer, nn.Linear):
            linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise InputError(f"mmpretrain head {type(head).__name__} has no linear layer")
            layer = linears[-1]
        w, b = linear_params(layer, layer.in_features)
        names = list(self.class_names) if self.class_names and len(self.class_names) == len(w) else None
        return Head(w, b, names, {"head_layer": type(head).__name__})
