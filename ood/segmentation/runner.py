"""segment_images.py: run a segmentation model once over images and store per-pixel outputs.

Per image: the score maps of the chosen pixel detectors (float16), the predicted class map and, when the list
names masks, the ground truth, in one HDF5 file (:mod:`ood.segmentation.store`). Models: torchvision's
segmentation models, or segmentation_models_pytorch's DeepLabV3+, U-Net and FPN on any encoder it knows
(``tu-<name>`` for any timm model; ``pip install -e '.[smp]'``), weights from ``--checkpoint``. Loading, devices,
autocast and image decoding are extract_features.py's (:mod:`ood.runtime`); images of one size are batched
together, so every map equals a plain forward of its image (smp models that need sides divisible by their
encoder's output stride get the normalised image zero-padded at the bottom and right to the smallest such sides,
their logits cropped back; a model with global pooling, as DeepLabV3+'s ASPP, sees those zeros), and
``--resume`` continues after the last image written. torch and torchvision load on first use, so
``--help`` answers at once.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from ..cli import add_run_options, run_main, stderr_log
from ..data import LIST_FORMATS, DataList, decode_imagenet_s_mask
from ..errors import FeatureFileError, ImageError, InputError
from ..fileio import PARTIAL_SUFFIX, check_writable
from .scoremaps import PIXEL_DETECTORS, check_detectors

if TYPE_CHECKING:
    import torch
    from PIL import Image

MODELS = ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50",
          "fcn_resnet101", "lraspp_mobilenet_v3_large")
SMP_MODELS = ("deeplabv3plus", "unet", "fpn")
BACKENDS = ("torchvision", "smp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def __getattr__(name):
    """``load_inputs`` (extract_features.py's), imported on first use like torch."""
    if name == "load_inputs":
        from ..runtime import load_inputs

        return load_inputs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_state(checkpoint: str) -> dict:
    """A state dict from a local file (``model`` or ``state_dict`` entries unwrapped), one-line errors."""
    import torch

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FeatureFileError(f"{checkpoint}: no such checkpoint") from None
    except Exception as e:  # pickle, zip and torch errors all mean an unusable file
        raise FeatureFileError(f"{checkpoint}: not a readable torch checkpoint ({e.__class__.__name__})") from None
    for key in ("model", "state_dict"):
        state = state.get(key, state) if isinstance(state, dict) else state
    return state


def _load_into(model, state: dict, checkpoint: str, what: str):
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:2]
        raise FeatureFileError(f"{checkpoint}: does not fit {what}: " + " ".join(first)) from None


def build_model(name: str, num_classes: int, checkpoint: Optional[str] = None, backend: str = "torchvision",
                encoder: str = "resnet34") -> "torch.nn.Module":
    """A segmentation model in eval mode, random-init or with local weights.

    ``backend="torchvision"``: one of :data:`MODELS` (auxiliary head dropped from a checkpoint).
    ``backend="smp"``: segmentation_models_pytorch's ``deeplabv3plus``, ``unet`` or ``fpn`` on ``encoder`` (an
    smp encoder name, or ``tu-<timm model>`` for any timm model), built with ``encoder_weights=None``, so
    nothing is downloaded: its weights come from ``checkpoint``.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown segmentation backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "smp":
        return _build_smp(name, num_classes, checkpoint, encoder)
    if name not in MODELS:
        raise InputError(f"unknown segmentation model {name!r}; choose from {', '.join(MODELS)} (or --backend smp "
                         f"with {', '.join(SMP_MODELS)})")
    import torchvision

    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                           num_classes=num_classes)
    if checkpoint:
        state = _load_state(checkpoint)
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
        _load_into(model, state, checkpoint, f"{name} with {num_classes} classes")
    return model.eval()


def _build_smp(name: str, num_classes: int, checkpoint: Optional[str], encoder: str):
    if name not in SMP_MODELS:
        raise InputError(f"unknown smp model {name!r}; choose from {', '.join(SMP_MODELS)}")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise InputError("--backend smp needs segmentation_models_pytorch: pip install -e '.[smp]'") from None
    try:
        model = smp.create_model(name, encoder_name=encoder, encoder_weights=None, classes=num_classes)
    except (KeyError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0]
        if len(reason) > 200:  # smp lists every encoder it knows
            reason = reason[:200] + " ..."
        raise InputError(f"smp {name} cannot be built on encoder {encoder!r}: {reason}") from None
    if checkpoint:
        _load_into(model, _load_state(checkpoint), checkpoint,
                   f"smp {name} on {encoder} with {num_classes} classes")
    return model.eval()


def input_multiple(model) -> int:
    """The side length an input must be a multiple of: an smp model's encoder output stride, else 1."""
    return int(model.encoder.output_stride) if getattr(model, "requires_divisible_input_shape", False) else 1


def transform(image: "Image.Image") -> "torch.Tensor":
    """To a normalised tensor at the image's own size (ImageNet mean and std, as torchvision's weights)."""
    import torch

    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def read_label_mask(path) -> np.ndarray:
    """Class ids of a mask PNG: RGB masks are ImageNet-S coded (R + 256 G), single-channel ones hold the ids."""
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB") if im.mode in ("RGBA", "P") and len(im.getbands()) > 1 else im)
    return decode_imagenet_s_mask(a) if a.ndim == 3 else a.astype(np.int64)


class SegmentationDataset:
    """extract_features.py's dataset plus the mask of each image: (row, tensor, error, mask or None)."""

    def __init__(self, root, paths, masks, mask_root, start: int = 0):
        from ..runtime import ImageDataset

        self.images = ImageDataset(root, paths, transform, start)
        self.masks, self.mask_root = masks, str(mask_root)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        row, x, error = self.images[i]
        mask = None
        if error is None and self.masks is not None:
            path = os.path.join(self.mask_root, self.masks[row])
            try:
                mask = read_label_mask(path)
            except Exception as e:  # any decoder failure is reported with the mask's path
                error = f"{path}: cannot read mask ({e.__class__.__name__}: {e})"
            else:
                if mask.shape != tuple(x.shape[1:]):
                    error = (f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                             f"{x.shape[2]}x{x.shape[1]}")
        return row, x, error, mask


def collate(items):
    bad = [(row, error) for row, _, error, _ in items if error is not None]
    if bad:
        raise ImageError(bad[0][1])
    return items


class Segmenter:
    """One model on one device: images of one size in, float32 score maps and class maps out.

    The model returns logits [B, C, H, W], or torchvision's ``{"out": logits}``; an smp model's input is
    zero-padded at the bottom and right to its :func:`input_multiple` and its logits cropped back.
    """

    def __init__(self, model: "torch.nn.Module", device: "torch.device", detectors, amp: str = "auto",
                 channels_last: bool = True, segments: bool = False, **params):
        import torch

        self.model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.device, self.detectors, self.amp, self.params = device, check_detectors(detectors), amp, params
        self.channels_last = channels_last
        self.segments = segments
        self.multiple = input_multiple(model)

    def logits(self, x: "torch.Tensor") -> "torch.Tensor":
        """The model's logits of a normalised batch on the device, at the batch's own size."""
        import torch

        h, w = x.shape[-2:]
        pad = (-w % self.multiple, -h % self.multiple)
        if any(pad):
            x = torch.nn.functional.pad(x, (0, pad[0], 0, pad[1]))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        out = out["out"] if isinstance(out, dict) else out
        return out[..., :h, :w]

    def __call__(self, x: "torch.Tensor"):
        """``(score maps, pred, probs)``; ``probs`` is None unless segments are on, then ``(softmax [B, C, H, W],
        {E, D, V: [B, H, W]})`` as numpy, for :func:`ood.segments.metrics.segment_metrics`."""
        import torch

        from ..runtime import autocast
        from .scoremaps import score_maps

        x = x.to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.amp, self.device):
            logits = self.logits(x)
        with torch.inference_mode():
            p = torch.softmax(logits.float(), 1).contiguous() if self.segments else None
            maps = score_maps(logits, self.detectors, probs=p, **self.params)
            pred = logits.argmax(1)
            if p is not None:
                from ..segments.metrics import pixel_maps

                pix = pixel_maps(p, maps.get("entropy"))
                p = (p.cpu().numpy(), {k: v.cpu().numpy() for k, v in pix.items()})
        return {k: v.cpu().numpy() for k, v in maps.items()}, pred.cpu().numpy(), p


def segment(out, data: DataList, data_root, segmenter: Segmenter, *, mask_root=None, batch: int = 4,
            workers: int = 0, resume: bool = False, overwrite: bool = False, compression: str = "lzf",
            attrs: Optional[dict] = None, progress: bool = False, log=lambda msg: None,
            ignore_ids=None) -> dict:
    """Segment every image of ``data`` into ``out``; returns a summary (images, pixels, seconds). With
    ``segmenter.segments`` each image's MetaSeg segment table is computed while its softmax is in memory
    (:mod:`ood.segments.metrics`; gt ids in ``ignore_ids``, default 255, are left out of the IoU)."""
    import torch

    from ..segments.metrics import DEFAULT_IGNORE, MAPS, metric_columns, segment_metrics
    from .store import SegmentationWriter

    ignore_ids = DEFAULT_IGNORE if ignore_ids is None else ignore_ids
    masks = data.extra.get("mask")
    partial = Path(str(out) + PARTIAL_SUFFIX)
    resuming = resume and partial.exists()
    writer = SegmentationWriter(out, len(data), segmenter.detectors, with_gt=masks is not None,
                                compression=compression, attrs=attrs, resume=resume, overwrite=overwrite,
                                segments=segmenter.segments, ignore_ids=ignore_ids)
    try:
        start = writer.rows
        if resuming:
            if list(writer.h5["paths"].asstr()[:start]) != list(data.paths[:start]):
                raise FeatureFileError(f"{partial}: cannot resume: its images are not the first of this list")
            log(f"{partial}: resuming after {start} of {len(data)} images")
        loader = torch.utils.data.DataLoader(
            SegmentationDataset(data_root, data.paths, masks, mask_root or data_root, start), batch_size=batch,
            shuffle=False, num_workers=workers, collate_fn=collate, pin_memory=segmenter.device.type == "cuda")
        bar = None
        if progress:
            from ..progress import Progress
            bar = Progress(total=len(data), initial=start, unit="img", desc=Path(out).name)
        tic = time.perf_counter()
        for items in loader:
            scores = {d: [] for d in segmenter.detectors}
            preds, gts = [], []
            sizes = [tuple(item[1].shape[1:]) for item in items]
            results = {}
            segs, seg_maps = [], {m: [] for m in MAPS}
            for size in dict.fromkeys(sizes):  # one forward per image size: no padding
                group = [item for item, s in zip(items, sizes) if s == size]
                maps, pred, probs = segmenter(torch.stack([item[1] for item in group]))
                for j, item in enumerate(group):
                    image_maps = {k: v[j] for k, v in maps.items()}
                    seg = None
                    if probs is not None:  # the softmax of this image is in memory only now
                        seg = segment_metrics(probs[0][j], pred=pred[j], maps={m: v[j] for m, v in probs[1].items()},
                                              scores=image_maps, gt=item[3], ignore_ids=ignore_ids)
                        seg = (seg, {m: v[j] for m, v in probs[1].items()})
                    results[item[0]] = (image_maps, pred[j], item[3], seg)
            for row, _, _, _ in items:
                maps, pred, mask, seg = results[row]
                for d in segmenter.detectors:
                    scores[d].append(maps[d])
                preds.append(pred)
                gts.append(mask)
                if seg is not None:
                    segs.append(seg[0])
                    for m in MAPS:
                        seg_maps[m].append(seg[1][m])
            writer.append(scores, preds, gts if masks is not None else None, [data.paths[r] for r, *_ in items],
                          segments=segs, segment_maps=seg_maps if segs else None,
                          columns=metric_columns(probs[0].shape[1], segmenter.detectors) if segs else ())
            if bar is not None:
                bar.update(len(items))
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - tic
        summary = {"images": writer.rows - start, "pixels": writer.pixels, "seconds": seconds}
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segment_images.py",
        description="Per-pixel OOD score maps, predicted classes and ground truth of a segmentation model "
                    "(torchvision, or segmentation_models_pytorch with --backend smp) into one HDF5 file, for "
                    "evaluate_segmentation.py ood and imagenet_s.")
    p.add_argument("data_root", help="image folder; list paths are relative to it")
    p.add_argument("out_file", help="output .h5 file")
    p.add_argument("model", help=f"torchvision: {', '.join(MODELS)}; --backend smp: {', '.join(SMP_MODELS)}")
    p.add_argument("--backend", choices=BACKENDS, default="torchvision")
    p.add_argument("--encoder", default="resnet34",
                   help="--backend smp: the encoder, an smp name or tu-<timm model> for any timm model "
                        "(default resnet34)")
    p.add_argument("--checkpoint", help="local weights (a state dict; torchvision's aux head is ignored); without "
                                        "it the model is random-init")
    p.add_argument("--num_classes", type=int, default=21, help="classes of the model's head")
    p.add_argument("--detectors", default=",".join(PIXEL_DETECTORS), help="comma list of pixel detectors")
    p.add_argument("--img_list", help="list file (any datalists format; a mask column adds the ground truth); "
                                      "without it every image under data_root")
    p.add_argument("--list_format", choices=LIST_FORMATS, default="auto", help="format of --img_list")
    p.add_argument("--mapping", metavar="FILE",
                   help="ImageNet-S mapping file (mapping/*.txt): an ImageNet-S --img_list read from a plain "
                        "ImageNet folder as data_root, no copying (masks still under --mask_root)")
    p.add_argument("--mask_root", help="folder the list's mask paths are relative to (default: data_root)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the CPUs, at most 8)")
    p.add_argument("--compression", choices=("lzf", "gzip"), default="lzf")
    p.add_argument("--segments", action=argparse.BooleanOptionalAction, default=True,
                   help="also store MetaSeg's segment table, segment ids and E/D/V maps (python -m ood.segments)")
    p.add_argument("--ignore_ids", help="gt ids left out of the segments' IoU (comma list; default 255)")
    add_run_options(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = stderr_log(args.quiet)

    def go():
        from ..features import file_sha256
        from ..runtime import Dist, default_workers, load_inputs, resolve_device

        if args.batch < 1:
            raise InputError(f"--batch must be at least 1, got {args.batch}")
        detectors = check_detectors(args.detectors.split(","))
        try:
            ignore_ids = None if args.ignore_ids is None else [int(i) for i in args.ignore_ids.split(",") if i.strip()]
        except ValueError:
            raise InputError(f"--ignore_ids must be a comma list of integers, got {args.ignore_ids!r}") from None
        check_writable(args.out_file, "segmentation store")
        if Path(args.out_file).exists() and not args.overwrite:
            raise FeatureFileError(f"{args.out_file}: exists already; pass --overwrite to replace it")
        data = load_inputs(args.data_root, args.img_list, args.list_format, "none", args.mapping)
        dist = Dist()
        device = resolve_device(args.device, dist)
        model = build_model(args.model, args.num_classes, args.checkpoint, args.backend, args.encoder)
        segmenter = Segmenter(model, device, detectors, args.amp, args.channels_last, segments=args.segments)
        attrs = dict(model=args.model, backend=args.backend, num_classes=args.num_classes,
                     checkpoint=str(args.checkpoint or ""),
                     checkpoint_sha256=file_sha256(args.checkpoint) if args.checkpoint else "",
                     data_root=str(args.data_root), list_file=str(args.img_list or ""), amp=args.amp,
                     preprocess={"size": "original", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                 "pad_to_multiple": segmenter.multiple})
        if args.backend == "smp":
            attrs["encoder"] = args.encoder
        if args.mapping:
            attrs["mapping_file"] = str(args.mapping)
        summary = segment(args.out_file, data, args.data_root, segmenter, mask_root=args.mask_root,
                          batch=args.batch, workers=default_workers(dist) if args.workers is None else args.workers,
                          resume=args.resume, overwrite=args.overwrite, compression=args.compression, attrs=attrs,
                          progress=not args.quiet, log=log, ignore_ids=ignore_ids)
        log(f"{args.out_file}: {summary['images']} images, {summary['pixels']} pixels; "
            f"{summary['images'] / max(summary['seconds'], 1e-9):.2f} images/s")
        return 0
    return run_main(go, interrupted=f"rerun with --resume to continue {args.out_file}")
