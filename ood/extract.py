"""extract_features.py: images -> one HDF5 feature file (DESIGN.md section 3), fast and safe.

The command line of ViM's and GEN's extractors (``data_root out_file model [--img_list L] [--fc_save_path P]``)
over three backends (timm, mmpretrain, open_clip). A DataLoader decodes in worker processes while the model
runs under inference mode, channels-last and autocast; rows are streamed into ``<out>.partial`` as batches
finish, and the file is renamed into place when complete. ``--resume`` continues a stopped run from the rows
already written; ``--skip_bad`` skips unreadable images and lists them in ``skipped_paths``. Under ``torchrun``
each rank extracts a contiguous shard of the list and rank 0 merges the shards in the original order.
"""
from __future__ import annotations

import argparse
import datetime
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import numpy as np

from .cli import add_run_options, run_main, stderr_log
from .data import LIST_FORMATS
from .errors import FeatureFileError, ImageError, InputError, ParameterError
from .fileio import PARTIAL_SUFFIX, atomic_path, check_writable

if TYPE_CHECKING:  # torch, h5py and the backbones load on first use, so --help answers at once
    import h5py

    from .backbones import Backbone
    from .data import DataList
    from .features import FeatureWriter
    from .runtime import Dist, Extractor

#: attributes that must agree between a partial file and the run that resumes it
RESUME_KEYS = ("model", "backend", "weights", "checkpoint_sha256", "random_init_seed", "preprocess", "data_root",
               "list_file", "label_mode", "dtype", "amp")


def _to_host(tensors):
    """Start copying a batch's outputs to the host; returns the tensors and an event to wait on."""
    if tensors[0].device.type != "cuda":
        return tensors, None
    import torch

    out = tuple(None if t is None else t.to("cpu", non_blocking=True) for t in tensors)
    event = torch.cuda.Event()
    event.record()
    return out, event


def _append_skipped(h5: h5py.File, paths: List[str]):
    import h5py
    
    if "skipped_paths" not in h5:
        h5.create_dataset("skipped_paths", (0,), dtype=h5py.string_dtype("utf-8"), maxshape=(None,), chunks=(256,))
    ds = h5["skipped_paths"]
    n = ds.shape[0]
    ds.resize(n + len(paths), axis=0)
    ds[n:] = paths


def _check_resume(writer: FeatureWriter, data: DataList) -> int:
    """Position a reopened partial file at its last committed batch; returns the list position to continue from.

    The writer has checked that the partial file is of the same run (:data:`RESUME_KEYS`: model, weights,
    preprocessing, inputs, dtype; and the widths). A batch is committed by ``inputs_done``, written after its
    rows and skipped paths, so rows or skipped paths of a batch that was interrupted half-way are dropped here
    and written again.
    """
    stored = writer.h5.attrs
    done = int(stored.get("inputs_done", 0))
    skipped = list(writer.h5["skipped_paths"].asstr()[()]) if "skipped_paths" in writer.h5 else []
    first = list(data.paths[:done])
    first_set = set(first)
    kept_skipped = 0
    for path in skipped:  # skipped paths are recorded in list order
        if kept_skipped < len(first) and path in first_set:
            kept_skipped += 1
        else:
            break
    skipped_set = set(skipped[:kept_skipped])
    expected = [p for p in first if p not in skipped_set]
    if len(expected) + kept_skipped != done or len(expected) > writer.rows or \
            list(writer.h5["paths"].asstr()[:len(expected)]) != expected:
        raise FeatureFileError(f"{writer.tmp}: cannot resume: its rows are not the first images of this list")
    if "skipped_paths" in writer.h5:
        writer.h5["skipped_paths"].resize(kept_skipped, axis=0)
    writer.rows = len(expected)
    writer.set_attrs(rows_written=writer.rows)
    return done


def check_space(out, rows: int, dim: int, num_classes: Optional[int], dtype: str, log):
    """Warn, before the forward passes, when the disk under ``out`` has less room than the file will take."""
    import shutil

    need = rows * (dim * (2 if dtype == "float16" else 4) + 4 * (num_classes or 0) + 8 + 64)
    try:
        free = shutil.disk_usage(Path(out).parent).free
    except OSError:
        return
    if need > free:
        log(f"warning: {out} will take about {need / 2**20:.0f} MiB and {free / 2**20:.0f} MiB are free there; "
            f"if the disk fills up, the run stops, keeps its rows in {out}{PARTIAL_SUFFIX} and --resume continues it")


def extract_split(out, data: DataList, data_root, extractor: Extractor, attrs: dict, *, batch: int, workers: int,
                  resume: bool, overwrite: bool, skip_bad: bool, progress: bool, log, threads: int = 1,
                  allow_empty: bool = False) -> dict:
    """Extract ``data`` into ``out``; returns a summary (rows, skipped, seconds).

    ``workers`` > 0: a DataLoader with that many processes; 0: decoding on ``threads`` threads in this process.
    A run in which every image is unreadable (``skip_bad``) writes nothing and raises, unless ``allow_empty``
    (a torchrun shard, merged with the others).
    """
    import h5py
    import torch
    
    from .features import FeatureWriter
    from .runtime import ImageDataset, collate, threaded_batches
    
    backbone = extractor.backbone
    dim, num_classes = extractor.dims(backbone.transform)
    partial = Path(str(out) + PARTIAL_SUFFIX)
    if partial.exists() and not resume:
        log(f"{partial}: starting over (pass --resume to continue it)")
    writer = FeatureWriter(out, len(data), dim, num_classes, dtype=attrs["dtype"], extra=tuple(data.extra),
                           attrs=attrs, resume=resume, overwrite=overwrite, resume_keys=RESUME_KEYS)
    resuming = writer.resumed
    if writer.restarted:
        log(writer.restarted)
    if not resuming:
        check_space(out, len(data), dim, num_classes, attrs["dtype"], log)
    bar = None
    try:
        start = _check_resume(writer, data) if resuming else 0
        if data.classes and "classes" not in writer.h5:
            writer.h5.create_dataset("classes", data=list(data.classes), dtype=h5py.string_dtype("utf-8"))
        if resuming:
            log(f"{partial}: resuming after {start} of {len(data)} images")
        dataset = ImageDataset(data_root, data.paths, backbone.transform, start)
        if workers:
            loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                                 collate_fn=collate, pin_memory=extractor.device.type == "cuda",
                                                 prefetch_factor=4)
        else:
            loader = threaded_batches(dataset, batch, threads)
        if progress:
            from .progress import Progress
            bar = Progress(total=len(data), initial=start, unit="img", desc=Path(out).name)
        skipped = 0
        pending = None
        tic = time.perf_counter()

        def write(item):
            nonlocal skipped
            (outputs, event), rows, bad, done = item
            if event is not None:
                event.synchronize()
            if len(rows):
                idx = rows.numpy()
                features, logits = outputs
                writer.append(features.numpy(), None if logits is None else logits.numpy(), data.labels[idx],
                              [data.paths[i] for i in idx], **{k: [v[i] for i in idx] for k, v in data.extra.items()})
            if bad:
                _append_skipped(writer.h5, [data.paths[r] for r, _ in bad])
                skipped += len(bad)
                for _, message in bad:
                    log(f"skipped {message}")
            writer.set_attrs(inputs_done=done)  # the commit point of this batch
            writer.flush()
            if bar is not None:
                bar.update(len(rows) + len(bad))

        for rows, x, bad in loader:
            if bad and not skip_bad:
                if pending is not None:
                    write(pending)
                    pending = None
                raise ImageError(f"{bad[0][1]}; pass --skip_bad to skip unreadable images, then --resume")
            outputs = _to_host(extractor(x)) if x is not None else ((None, None), None)
            done = int(max([int(rows.max()) if len(rows) else -1] + [r for r, _ in bad])) + 1
            if pending is not None:
                write(pending)
            pending = (outputs, rows, bad, done)
        if pending is not None:
            write(pending)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - tic
        num_skipped = int(writer.h5["skipped_paths"].shape[0]) if "skipped_paths" in writer.h5 else 0
        if writer.rows == 0 and not allow_empty:
            first = writer.h5["skipped_paths"].asstr()[0] if num_skipped else "none"
            writer.discard()
            raise ImageError(f"{data_root}: none of the {len(data)} images could be read (first: {first}); "
                             f"nothing written to {out}")
        writer.set_attrs(num_skipped=num_skipped)
        rows_written = writer.rows
        writer.close()
    except BaseException:
        if bar is not None:
            bar.close()
        if writer.h5:
            writer.abort()
        raise
    return {"rows": rows_written, "skipped": skipped, "seconds": seconds, "images": len(data) - start,
            "dim": dim, "num_classes": num_classes}


def merge_shards(out, shards: List[Path], attrs: dict, extra, overwrite: bool, block: int = 8192):
    """Concatenate the ranks' shard files, in rank order, into ``out``; the shards are removed afterwards."""
    import h5py
    
    from .features import FeatureFile, FeatureWriter
    
    files = [FeatureFile(p) for p in shards]
    try:
        total = sum(f.n for f in files)
        if total == 0:
            raise ImageError(f"none of the images could be read (every shard is empty); nothing written to {out}")
        first = files[0]
        writer = FeatureWriter(out, total, first.dim, first.num_classes, dtype=attrs["dtype"], extra=tuple(extra),
                               attrs=attrs, overwrite=overwrite)
        try:
            skipped = []
            for f in files:
                for lo, hi, features in f.blocks(block):
                    writer.append(features, f.read("logits", lo, hi) if f.has("logits") else None,
                                  f.read("labels", lo, hi), list(f.read("paths", lo, hi)),
                                  **{k: list(f.read(k, lo, hi)) for k in extra})
                if f.has("skipped_paths"):
                    skipped += list(f.read("skipped_paths"))
            if skipped:
                _append_skipped(writer.h5, skipped)
            if first.has("classes"):
                writer.h5.create_dataset("classes", data=list(first.read("classes")),
                                         dtype=h5py.string_dtype("utf-8"))
            writer.set_attrs(num_skipped=len(skipped), inputs_done=total + len(skipped))
            writer.close()
        except BaseException:
            writer.abort()
            raise
    finally:
        for f in files:
            f.close()
    for p in shards:
        p.unlink()


@dataclass(frozen=True)
class ModelSpec:
    """Which model makes the rows and how its inputs are prepared: everything a feature file depends on.

    Weights come from ``checkpoint`` (a local file, or an open_clip tag), ``pretrained`` (timm's files on the
    machine) or, only when asked for with ``random_init``, a random initialisation seeded by ``seed`` (stored in
    the file, so a resumed file is built by one model).

    >>> ModelSpec("resnet18", random_init=True).weights
    'random init (seed 0)'
    """

    model: str
    backend: str = "timm"
    checkpoint: Optional[str] = None
    pretrained: bool = False
    random_init: bool = False
    seed: int = 0
    num_classes: Optional[int] = None
    class_names: Optional[str] = None
    templates: Optional[str] = None
    resize: Optional[int] = None
    mean: Optional[tuple] = None
    std: Optional[tuple] = None

    def check(self):
        """Refuse a run whose weights nobody chose (random weights need ``random_init``) and preprocessing
        values that would give NaN or empty images."""
        if not self.model:
            raise InputError("a model name is required")
        if self.resize is not None and self.resize < 1:
            raise ParameterError(f"--resize must be a positive image size, got {self.resize}")
        if self.num_classes is not None and self.num_classes < 0:
            raise ParameterError(f"--num_classes must be 0 (no head) or more, got {self.num_classes}")
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and not all(math.isfinite(v) for v in values):
                raise ParameterError(f"{name} must be finite numbers, got {list(values)}")
        if self.std is not None and min(self.std) <= 0:
            raise ParameterError(f"--std must be positive, got {list(self.std)}")
        chosen = bool(self.checkpoint) + bool(self.pretrained) + bool(self.random_init)
        if chosen == 0:
            raise InputError(f"{self.model}: neither --checkpoint nor --pretrained was given, so its weights would be "
                             f"random; pass --random_init to extract with random weights on purpose")
        if chosen > 1:
            raise InputError("choose one of --checkpoint, --pretrained and --random_init")

    @property
    def weights(self) -> str:
        if self.checkpoint:
            return "checkpoint"
        return "pretrained" if self.pretrained else f"random init (seed {self.seed})"

    def build(self) -> Backbone:
        import torch
        
        from .backbones import create_backbone
        
        self.check()
        if self.random_init:
            torch.manual_seed(self.seed)
        return create_backbone(self.backend, self.model, checkpoint=self.checkpoint, resize=self.resize,
                               mean=self.mean, std=self.std, pretrained=self.pretrained,
                               num_classes=self.num_classes, class_names=self.class_names, templates=self.templates)

    def attrs(self) -> dict:
        from .runtime import checkpoint_attrs
        
        out = dict(model=self.model, backend=self.backend, weights=self.weights, **checkpoint_attrs(self.checkpoint))
        if self.random_init:
            out["random_init_seed"] = self.seed
        return out


def save_head(path, spec: ModelSpec, device="auto", overwrite: bool = False, log=None) -> Path:
    """ViM's ``--fc_save_path``: the classifier head only, as an fc .h5 file, or ViM's pickled [W, b] for .pkl."""
    from .features import write_fc
    from .runtime import resolve_device
    
    backbone = spec.build()
    backbone.to(resolve_device(device))
    head = backbone.head()
    if head is None:
        raise InputError(f"{spec.model} has no classifier head (for open_clip, pass --class_names)")
    path = Path(path)
    if path.suffix.lower() in (".pkl", ".pickle"):
        if path.exists() and not overwrite:
            raise FeatureFileError(f"{path}: exists already; pass --overwrite to replace it")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump([head.weight, head.bias], f)
    else:
        write_fc(path, head.weight, head.bias, head.class_names, overwrite=overwrite, **spec.attrs(),
                 **{k: v for k, v in head.attrs.items()})
    if log:
        log(f"{path}: head {head.weight.shape[0]} classes x {head.weight.shape[1]} features")
    return path


def check_head(backbone: Backbone, extractor: Extractor, log):
    """Warn when the stored head does not reproduce the model's logits (a non-linear or unusual head)."""
    from PIL import Image
    
    if backbone.head() is None:
        return
    head = backbone.head()
    x = backbone.transform(Image.new("RGB", (64, 64), (120, 90, 60))).unsqueeze(0)
    f, z = extractor(x)
    if z is None:
        return
    approx = f.float().cpu().numpy() @ head.weight.T + head.bias
    err = float(np.abs(approx - z.cpu().numpy()).max())
    scale = float(np.abs(z.cpu().numpy()).max()) + 1e-6
    if err > 1e-2 * scale:
        log(f"warning: the head W, b reproduces the model's logits only to {err:.3g} (logits up to {scale:.3g})")


def check_run(out: Path, what: str, spec: "ModelSpec", batch: int, workers: Optional[int], overwrite: bool):
    """The checks every embedding run makes before it loads a model: batch and workers in range, the model
    spec complete, ``out`` (``what`` names it in errors) writable and, without ``overwrite``, not there yet."""
    if batch < 1:
        raise ParameterError(f"--batch must be at least 1, got {batch}")
    if workers is not None and workers < 0:
        raise ParameterError(f"--workers must be 0 (decode on threads) or more, got {workers}")
    spec.check()
    check_writable(out, what)
    if out.exists() and not overwrite:
        raise FeatureFileError(f"{out}: exists already; pass --overwrite to replace it")


def extract_features(data_root, out, spec: ModelSpec, *, img_list=None, list_format: str = "auto",
                     labels: str = "auto", batch: int = 64, workers: Optional[int] = None, dtype: str = "float32",
                     skip_bad: bool = False, device="auto", amp: str = "auto", channels_last: bool = True,
                     resume: bool = False, overwrite: bool = False, progress: bool = True, log=None,
                     mapping=None) -> Optional[dict]:
    """Extract the features, logits and labels of every image (a list under ``data_root``, or every image in
    it) into the feature file ``out``; returns a summary (rows, skipped, seconds, ...), None on ranks > 0 of a
    torchrun job. Under torchrun each rank extracts a shard and rank 0 merges them. ``mapping``: an ImageNet-S
    mapping file, so an ImageNet-S list reads its images from a plain ImageNet folder (the ImageNet-S paths
    are kept in the ``imagenet_s_path`` column)."""
    import torch
    
    from .runtime import Dist, Extractor, cpus_per_rank, default_workers, load_inputs, resolve_device
    
    log = log or (lambda msg: None)
    dist = Dist.from_env()
    log = log if dist.rank == 0 else (lambda msg: None)
    out = Path(out)
    check_run(out, "feature file", spec, batch, workers, overwrite)
    data = load_inputs(data_root, img_list, list_format, labels, mapping)
    if img_list and list_format == "auto":
        log(f"{img_list}: read as a {data.format!r} list (auto-detected; --list_format to choose another)")
    device = resolve_device(device, dist)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    backbone = spec.build()
    extractor = Extractor(backbone, device, amp, dtype, channels_last)
    attrs = dict(**spec.attrs(), preprocess=backbone.preprocess, feature_source=backbone.feature_source,
                 data_root=str(data_root), list_file=str(img_list or ""), list_format=data.format or list_format,
                 label_mode=labels,
                 dtype=dtype, amp=extractor.amp, **({"mapping_file": str(mapping)} if mapping else {}))
    workers = default_workers(dist, device) if workers is None else workers
    common = dict(batch=batch, workers=workers, threads=cpus_per_rank(dist), skip_bad=skip_bad,
                  progress=progress and dist.rank == 0, log=log)
    if dist.world == 1:
        check_head(backbone, extractor, log)
        summary = extract_split(out, data, data_root, extractor, attrs, resume=resume, overwrite=overwrite,
                                **common)
    else:
        summary = run_sharded(out, data, data_root, extractor, attrs, dist, common, log, resume, overwrite)
        if summary is None:
            return None
    rate = summary["images"] / max(summary["seconds"], 1e-9)
    skipped = summary["skipped"]
    log(f"{out}: {summary['rows']} rows x {summary['dim']} features"
        + (f", {summary['num_classes']} logits" if summary["num_classes"] else "")
        + f"; {rate:.1f} images/s"
        + (f"; {skipped} unreadable images skipped (listed in 'skipped_paths')" if skipped else ""))
    return summary


def run_sharded(out, data: DataList, data_root, extractor: Extractor, attrs: dict, dist: Dist, common: dict, log,
                resume: bool, overwrite: bool):
    """torchrun: rank r extracts rows [r N / W, (r+1) N / W) into its shard; rank 0 merges. Needs a shared disk."""
    from .features import FeatureFile
    
    import torch.distributed as tdist

    tdist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))  # small messages only: no GPU needed
    try:
        shards = [Path(f"{out}.shard{r}-of-{dist.world}") for r in range(dist.world)]
        mine = shards[dist.rank]
        status = None
        summary = None
        try:
            if resume and mine.exists():
                log(f"{mine}: complete already")
                summary = {"rows": 0, "skipped": 0, "seconds": 0.0, "images": 0}
            else:
                summary = extract_split(mine, data.subset(np.asarray(dist.shard(len(data)))), data_root,
                                        extractor, attrs, resume=resume, overwrite=True, allow_empty=True, **common)
        except (InputError, OSError) as e:
            status = f"rank {dist.rank}: {e}"
        statuses = [None] * dist.world
        summaries = [None] * dist.world
        tdist.all_gather_object(statuses, status)
        tdist.all_gather_object(summaries, summary)
        errors = [s for s in statuses if s]
        if errors:
            raise ImageError("; ".join(errors))
        if dist.rank != 0:
            return None
        tic = time.perf_counter()
        merge_shards(out, shards, attrs, data.extra, overwrite)
        seconds = max(s["seconds"] for s in summaries) + time.perf_counter() - tic
        with FeatureFile(out) as f:
            return {"rows": f.n, "dim": f.dim, "num_classes": f.num_classes, "seconds": seconds,
                    "skipped": int(f.attrs.get("num_skipped", 0)), "images": sum(s["images"] for s in summaries)}
    finally:
        tdist.destroy_process_group()


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extract_features.py",
        description="Penultimate features, logits and labels of every image into one HDF5 feature file "
                    "(or, with --fc_save_path, only the classifier head). Under torchrun, ranks split the list.")
    p.add_argument("data_root", help="image folder; list paths are relative to it")
    p.add_argument("out_file", help="output .h5 feature file")
    p.add_argument("model", nargs="?", help="model name (timm, open_clip, mmpretrain), or a config file "
                                            "(mmpretrain .py, open_clip .json)")
    p.add_argument("--backend", default="timm", help="timm (default), mmpretrain or open_clip")
    p.add_argument("--checkpoint", help="local weights (.pth, .safetensors, .npz; for open_clip also a tag)")
    p.add_argument("--pretrained", action="store_true", help="timm: load timm's own pretrained weights")
    p.add_argument("--random_init", action="store_true",
                   help="random weights on purpose (tests, smoke runs); without it, --checkpoint or --pretrained "
                        "is required")
    p.add_argument("--seed", type=int, default=0, help="seed of --random_init (stored in the file)")
    p.add_argument("--num_classes", type=int, help="timm: classes of the checkpoint's head (0 = no head)")
    p.add_argument("--class_names", help="open_clip: file with one class name a line (the zero-shot head)")
    p.add_argument("--templates", help="open_clip: file with one prompt template a line, '{}' = class name "
                                       "(default: CLIP's 80 ImageNet templates)")
    p.add_argument("--img_list", help="list file, 'path [label]' a line; without it every image under data_root")
    p.add_argument("--list_format", choices=LIST_FORMATS, default="auto", help="format of --img_list")
    p.add_argument("--mapping", metavar="FILE",
                   help="ImageNet-S mapping file (mapping/*.txt): an --img_list in ImageNet-S names read from a plain "
                        "ImageNet folder as data_root, no copying (--list_format imagenet_s)")
    p.add_argument("--labels", choices=("auto", "none"), default="auto",
                   help="none: store -1 for every image (OOD sets)")
    p.add_argument("--resize", type=int, metavar="N",
                   help="ViM preprocessing: plain resize to N x N, ImageNet mean/std (default: the model's own)")
    p.add_argument("--mean", type=float, nargs=3, help="override the normalisation mean (0-1 scale)")
    p.add_argument("--std", type=float, nargs=3, help="override the normalisation std (0-1 scale)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, help="DataLoader worker processes; 0 = decode on threads between "
                                               "forward passes (default: one a CPU up to 8 on GPU, 0 on CPU)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored features")
    p.add_argument("--skip_bad", action="store_true", help="skip unreadable images (listed in 'skipped_paths')")
    p.add_argument("--fc_save_path", help="write only the classifier head (.h5, or .pkl as ViM) and exit")
    add_run_options(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = stderr_log(args.quiet)
    spec = ModelSpec(args.model, args.backend, args.checkpoint, args.pretrained, args.random_init, args.seed,
                     args.num_classes, args.class_names, args.templates, args.resize,
                     None if args.mean is None else tuple(args.mean), None if args.std is None else tuple(args.std))

    def go():
        from .runtime import Dist

        if args.fc_save_path:
            if Dist.from_env().rank == 0:
                spec.check()
                check_writable(args.fc_save_path, "fc head file")
                save_head(args.fc_save_path, spec, args.device, args.overwrite, log)
            return 0
        extract_features(args.data_root, args.out_file, spec, img_list=args.img_list, list_format=args.list_format,
                         labels=args.labels, batch=args.batch, workers=args.workers, dtype=args.dtype,
                         skip_bad=args.skip_bad, device=args.device, amp=args.amp,
                         channels_last=args.channels_last, resume=args.resume, overwrite=args.overwrite,
                         progress=not args.quiet, log=log, mapping=args.mapping)
        return 0
    return run_main(go, interrupted=f"rerun with --resume to continue {args.out_file}")
