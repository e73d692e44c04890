"""The runtime every image-to-HDF5 tool shares: image decoding and datasets, devices, autocast, torchrun ranks.

extract_features.py, segment_images.py, the segment crops of :mod:`ood.segments` and the demo import this, so
the batching, devices and AMP behave the same everywhere. Library code takes plain values (a device name, an
amp mode), never argparse namespaces.

>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_amp("auto", torch.device("cpu"))
'off'
"""
from __future__ import annotations

import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
from PIL import Image

from .backbones import Backbone
from .data import DataList, read_list, scan_folder
from .errors import ListFormatError, ParameterError
from .features import file_sha256

#: dataset names of a feature file that a list's extra column may not take
RESERVED = ("features", "logits", "labels", "paths", "skipped_paths", "classes", "fc")


# --------------------------------------------------------------------------------------------- data


def load_image(path) -> Image.Image:
    """Decode fully (so truncated files fail here) to the 8-bit RGB image a viewer shows (:func:`to_rgb`)."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def _grey(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(values.astype(np.uint8)[..., None], 3, axis=-1), "RGB")


def _on_white(colour: np.ndarray, alpha: np.ndarray, premultiplied: bool = False) -> Image.Image:
    """Composite [H, W, 3] colour with [H, W] alpha (0-255) over white, rounded to 8 bits."""
    c, a = colour.astype(np.int32), alpha.astype(np.int32)[..., None]
    out = c + (255 - a) if premultiplied else (c * a + 255 * (255 - a) + 127) // 255
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """The 8-bit RGB image a viewer shows for any PIL mode, where ``convert("RGB")`` alone would lose it.

    - 16-bit grey (``I;16`` and its byte orders; ``I``, which PIL uses for 16-bit PNG, TIFF and PGM, scaling
      a PGM's maxval to 65535): v / 257 rounded, v clipped to [0, 65535], so 65535 is white (``convert``
      clips everything above 255).
    - 32-bit float (``F``): 0.0 black to 1.0 white, clipped, NaN black (``convert`` reads 1.0 as 1 of 255).
    - transparency (``RGBA``, ``LA``, ``PA``, palettes with alpha, palette, grey or RGB images with a
      transparent colour; the premultiplied ``RGBa`` and ``La``): composited over white, as a browser shows
      it on a white page (``convert`` drops the alpha and shows whatever colour transparent pixels hold).
    - ``LAB``: through littlecms (CIE L*a*b* D50 to sRGB), where PIL's ``convert`` gives wrong colours.
    - ``CMYK``: PIL's conversion, R = (255 - C)(255 - K) / 255 (an embedded ICC profile is not applied);
      ``1``, ``L``, ``P``, ``RGB``, ``RGBX``, ``YCbCr``, ``HSV``: PIL's ``convert``.

    EXIF orientation is not applied, as in torchvision's and timm's loaders, so features match the
    reference pipelines; the first frame of an animation is used.

    >>> img = Image.fromarray(np.array([[0, 257, 65535]], np.uint16))
    >>> np.asarray(to_rgb(img))[0, :, 0].tolist()
    [0, 1, 255]
    >>> np.asarray(to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 0)))).tolist()
    [[[255, 255, 255]]]
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        v = np.asarray(img).astype(np.float64)
        return _grey(np.floor(np.clip(v, 0, 65535) / 257 + 0.5))
    if mode == "F":
        v = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return _grey(np.floor(np.clip(v, 0, 1) * 255 + 0.5))
    if mode in ("RGBa", "La"):
        a = np.asarray(img)
        colour = a[..., :3] if mode == "RGBa" else np.repeat(a[..., :1], 3, axis=-1)
        return _on_white(colour, a[..., -1], premultiplied=True)
    rgba_palette = mode == "P" and img.palette is not None and img.palette.mode == "RGBA"
    if mode in ("RGBA", "LA", "PA") or "transparency" in img.info or rgba_palette:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-with-transparency notes
            rgba = np.asarray(img.convert("RGBA"))
        return _on_white(rgba[..., :3], rgba[..., 3])
    if mode == "LAB":
        try:
            from PIL import ImageCms
            transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                "LAB", "RGB")
            return ImageCms.applyTransform(img, transform)
        except ImportError:
            pass
    return img.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """Rows ``start..`` of a list; an item is (row, tensor, None) or (row, None, error message) for a bad image."""

    def __init__(self, root, paths: List[str], transform, start: int = 0):
        self.root, self.paths, self.transform, self.start = str(root), paths, transform, start

    def __len__(self):
        return len(self.paths) - self.start

    def __getitem__(self, i):
        row = self.start + i
        path = os.path.join(self.root, self.paths[row])
        try:
            return row, self.transform(load_image(path)), None
        except Exception as e:  # any decoder or transform failure is reported with the image's path
            return row, None, f"{path}: cannot read image ({e.__class__.__name__}: {e})"


def collate(items):
    """(rows of the good images, their stacked tensors or None, [(row, message)] of the bad ones)."""
    good = [item for item in items if item[2] is None]
    rows = torch.tensor([item[0] for item in good], dtype=torch.long)
    x = torch.stack([item[1] for item in good]) if good else None
    return rows, x, [(item[0], item[2]) for item in items if item[2] is not None]


def threaded_batches(dataset: ImageDataset, batch: int, threads: int):
    """In-process loading for CPU extraction: each batch is decoded by a pool of threads (PIL releases the GIL),
    then the model runs on every core; the two phases alternate instead of fighting over the cores."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(dataset), batch):
            yield collate(list(pool.map(dataset.__getitem__, range(lo, min(lo + batch, len(dataset))))))


def load_inputs(data_root, img_list=None, list_format="auto", labels="auto", mapping=None) -> DataList:
    """The images to extract: a list file (paths relative to ``data_root``) or every image under the folder.

    ``mapping``: an ImageNet-S mapping file, so an ImageNet-S list names the images of a plain ImageNet folder
    (``data_root``); the list must read as ``imagenet_s``."""
    if mapping and not img_list:
        raise ListFormatError(f"--mapping {mapping} needs an ImageNet-S --img_list to map")
    if img_list:
        data = read_list(img_list, list_format, mapping=mapping)
        if mapping and data.format != "imagenet_s":
            raise ListFormatError(f"{img_list}: --mapping applies to imagenet_s lists, this one reads as "
                                  f"{data.format}; pass --list_format imagenet_s")
        if labels == "none":
            data.labels = np.full(len(data), -1, dtype=np.int64)
    else:
        data = scan_folder(data_root, "none" if labels == "none" else "folders")
    for name in data.extra:
        if name in RESERVED:
            raise ListFormatError(f"{img_list}: extra column {name!r} clashes with a feature-file dataset")
    if len(data) == 0:
        raise ListFormatError(f"{img_list or data_root}: no images")
    return data


# --------------------------------------------------------------------------------------------- running


@dataclass
class Dist:
    """This process's place under torchrun (world 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_env(cls) -> "Dist":
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                   int(env.get("LOCAL_WORLD_SIZE", 1)))

    def shard(self, n: int) -> range:
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)


def resolve_device(name="auto", dist: Optional[Dist] = None) -> torch.device:
    """``auto`` = the CUDA device of this rank when there is one, else the CPU; ``cuda`` without one is an error."""
    if isinstance(name, torch.device):
        return name
    dist = dist or Dist()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError("--device cuda was asked for, but torch sees no CUDA device")
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``auto`` = bf16 on CUDA, off elsewhere."""
    if amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return amp


def autocast(amp: str, device: torch.device):
    """The autocast context of ``--amp`` (auto, bf16, fp16, off) on ``device``."""
    amp = resolve_amp(amp, device)
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def cpus_per_rank(dist: Dist) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, dist.local_world))


def default_workers(dist: Dist, device: Optional[torch.device] = None) -> int:
    """Worker processes: one a CPU of this rank, at most 8. On a CPU device 0, i.e. decoding on threads
    between forward passes, since worker processes would compete with the model for the same cores."""
    return 0 if device is not None and device.type == "cpu" else min(8, cpus_per_rank(dist))


class Extractor:
    """One backbone on one device: batches of images in, float32 (or float16) rows out."""

    def __init__(self, backbone: Backbone, device: torch.device, amp: str, dtype: str, channels_last: bool):
        self.backbone = backbone.to(device, channels_last)
        self.device = device
        self.amp = resolve_amp(amp, device)
        self.dtype = torch.float16 if dtype == "float16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor):
        x = self.backbone.normalize(x.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), autocast(self.amp, self.device):
            features, logits = self.backbone.forward(x)
        features = features.float().to(self.dtype)
        return features, None if logits is None else logits.float()

    def dims(self, transform):
        """Feature width and class count, from one blank image."""
        f, z = self(transform(Image.new("RGB", (64, 64))).unsqueeze(0))
        return f.shape[1], None if z is None else z.shape[1]




def checkpoint_attrs(checkpoint) -> dict:
    if checkpoint and os.path.isfile(checkpoint):
        return {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint)}
    return {"checkpoint": str(checkpoint or ""), "checkpoint_sha256": ""}
