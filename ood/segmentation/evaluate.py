"""``evaluate_segmentation.py``: ImageNet-S figures from PNG masks, or pixel-level OOD figures from the score
maps that segment_images.py stored. Tables are printed; ``--json`` writes every figure."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np


from ..features import FeatureFileError
from . import imagenet_s, pixel_ood
from .store import SegmentationFile
from ..errors import InputError
from ..fileio import check_writable, write_text


def _write_json(obj, path):
    write_text(path, json.dumps(obj, indent=1, allow_nan=True))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def _pct(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


# --------------------------------------------------------------------------------------------- ImageNet-S


def run_imagenet_s(args) -> int:
    n = imagenet_s.MODES[args.mode]
    if args.json:
        check_writable(args.json, "--json file")
    if args.match and not Path(args.match).exists():
        check_writable(args.match, "--match file")
    if bool(args.store) == bool(args.predict_dir or args.gt_dir):
        raise InputError("give either --store (a segment_images.py file) or --predict_dir and --gt_dir (PNG folders)")
    if not args.store and not (args.predict_dir and args.gt_dir):
        raise InputError("--predict_dir and --gt_dir go together")
    classes = imagenet_s.class_names(args.categories, n) if args.categories else None
    progress = not args.quiet
    matching = None
    if args.match:
        if Path(args.match).exists():
            matching = imagenet_s.read_matching(args.match)
            print(f"matching read from {args.match}", file=sys.stderr)
        else:
            if args.store:
                matching = imagenet_s.compute_store_matching(args.store, n, args.workers, progress)
            else:
                matching = imagenet_s.compute_matching(args.gt_dir, args.predict_dir, n, args.workers, progress)
            imagenet_s.write_matching(matching, args.match)
            print(f"matching computed and saved to {args.match}", file=sys.stderr)
    if args.store:
        log = imagenet_s.evaluate_store(args.store, n, args.workers, matching, classes, progress)
    else:
        log = imagenet_s.evaluate(args.gt_dir, args.predict_dir, n, args.workers, matching, classes, progress)
    if matching is not None:
        log["matching"] = {str(k): v for k, v in sorted(matching.items())}
    names = classes or [str(i) for i in range(n + 1)]
    if args.per_class:
        print("per class IoU (%):")
        print(_table(["class", "IoU", "BIoU"], [[c, f"{a:.2f}", f"{b:.2f}"]
                                                for c, a, b in zip(names, log["IoUs"], log["BIoUs"])]))
        print()
    keys = ["Acc", "mIoU", "mBIoU", "S", "MS", "ML", "L", "BS", "BMS", "BML", "BL", "FMeasure"]
    print(f"ImageNet-S-{n}: {log['images']} images, figures in %")
    print(_table(keys, [[f"{log[k]:.2f}" for k in keys]]))
    if args.json:
        _write_json(log, args.json)
    return 0


# --------------------------------------------------------------------------------------------- pixel OOD


def _ids(text: Optional[str]):
    if text is None:
        return None
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise InputError(f"expected a comma list of integer ids, got {text!r}") from None


def _thresholds(items) -> Dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise InputError(f"--threshold expects DETECTOR=VALUE, got {item!r}") from None
    return out


def evaluate_ood(path, detectors: Optional[Sequence[str]] = None, ood_ids=None, ignore_ids=(),
                 mode: str = "exact", bins: int = 10000, value_range: Optional[Sequence[float]] = None,
                 min_pred_size: int = 500, min_gt_size: int = 100, thresholds: Optional[Dict[str, float]] = None,
                 components: bool = True, progress: bool = False, curve: str = "exact") -> list:
    """One record per detector: pixel metrics, then component metrics at the best-F1 (or given) threshold.

    ``curve="exact"``: the exact curve (``mode`` exact: every pixel sorted; streaming: fixed bins), a pixel OOD
    when its score <= the threshold. ``curve="smiyc"``: the SegmentMeIfYouCan benchmark's binned curve
    (:class:`~ood.segmentation.pixel_ood.SmiycCurve`) and its component step (``-score > threshold`` in float16,
    :func:`~ood.segmentation.pixel_ood.smiyc_prediction`), for numbers to compare with the leaderboard; a
    ``thresholds`` value is in score units there too (OOD below it). Each pass reads every image once.
    """
    from ..progress import progress as bar

    if curve not in ("exact", "smiyc"):
        raise InputError(f"curve must be exact or smiyc, got {curve!r}")
    if curve == "smiyc" and mode != "exact":
        raise InputError(f"--mode {mode} applies to --curve exact; --curve smiyc bins each frame as the benchmark")
    smiyc = curve == "smiyc"
    thresholds = dict(thresholds or {})
    with SegmentationFile(path) as f:
        if not f.has_gt:
            raise FeatureFileError(f"{path}: has no ground truth ('gt'); segment_images.py stores it when the "
                                   "list names masks")
        detectors = list(detectors or f.detectors)
        for d in detectors:
            f.dataset(d)
        unknown = set(thresholds) - set(detectors)
        if unknown:
            raise InputError(f"--threshold names {', '.join(sorted(unknown))}, not among {', '.join(detectors)}")
        label = lambda gt: pixel_ood.ood_labels(gt, ood_ids, ignore_ids, str(path))  # noqa: E731
        fpr_label = pixel_ood.SMIYC_FPR_LABEL if smiyc else pixel_ood.FPR_LABEL
        records = {d: {"detector": d, "curve": curve, "mode": "smiyc" if smiyc else mode,
                       "fpr_convention": fpr_label} for d in detectors}
        if smiyc:
            curves = {d: pixel_ood.SmiycCurve() for d in detectors}
            paths = f.paths()
            for i, (gt, *maps) in bar(f.images(["gt"] + detectors), total=f.n, desc="smiyc curve", unit="img",
                                      quiet=not progress):
                y = label(gt)
                for d, s in zip(detectors, maps):
                    curves[d].add(s, y, f"{path}: image {i} ({paths[i]})")
            for d in detectors:
                records[d].update(curves[d].metrics())
        elif mode == "exact":
            labels = label(np.concatenate([b[0] for b in f.blocks(["gt"])]))
            for d in detectors:
                records[d].update(pixel_ood.pixel_metrics(f.dataset(d)[()], labels))
        else:
            hists = {}
            for d in detectors:
                lo, hi = value_range if value_range else f.score_range(d)
                if not value_range and lo == hi:
                    hi = lo + 1.0
                hists[d] = pixel_ood.PixelHistogram(bins, lo, hi)
            for gt, *scores in f.blocks(["gt"] + detectors):
                y = label(gt)
                for d, s in zip(detectors, scores):
                    hists[d].add(s, y, f"{path}: {d}")
            for d in detectors:
                records[d].update(hists[d].metrics())
        if components:
            stats = {d: pixel_ood.ComponentStats() for d in detectors}
            for d in detectors:
                records[d]["component_threshold"] = thresholds.get(d, records[d]["threshold"])
            for _, (gt, *maps) in bar(f.images(["gt"] + detectors), total=f.n, desc="components", unit="img",
                                      quiet=not progress):
                y = label(gt)
                for d, s in zip(detectors, maps):
                    thr = records[d]["component_threshold"]
                    pred_ood = pixel_ood.smiyc_prediction(s, -thr) if smiyc else s <= thr
                    stats[d].add(pixel_ood.frame_components(pred_ood, y, min_pred_size, min_gt_size, smiyc))
            for d in detectors:
                records[d].update(stats[d].summary(), min_pred_size=min_pred_size, min_gt_size=min_gt_size)
    return [records[d] for d in detectors]


def format_ood(records) -> str:
    """The pixel and component table, then the component counts (TP, FN, FP at sIoU 0.25, 0.50, 0.75, means)."""
    header = ["Detector", "AUROC", "AP", "FPR95", "best F1", "thr", "sIoU", "sIoU pred", "PPV", "F1@.25", "F1@.50",
              "F1@.75", "mean F1"]
    rows = []
    for r in records:
        row = [r["detector"], _pct(r["auroc"]), _pct(r["ap"]), _pct(r["fpr95"]), _pct(r["best_f1"]),
               f"{r['threshold']:.4g}"]
        row += [_pct(r.get(k)) for k in ("siou", "siou_pred", "ppv", "f1_25", "f1_50", "f1_75", "f1_mean")]
        rows.append(row)
    first = records[0]
    if first["curve"] == "smiyc":
        lines = [f"pixel metrics in % (OOD positive; SegmentMeIfYouCan's binned curve, {first['bins']} percentile "
                 f"bins a frame), {first['fpr_convention']}",
                 "a pixel is OOD when its score <= thr on the curve; components take score < thr (the benchmark's "
                 "-score > -thr in float16)"]
    else:
        lines = [f"pixel metrics in % (OOD positive; {first['mode']} mode), {first['fpr_convention']}",
                 "a pixel is OOD when its score <= thr (the best-F1 threshold); components at that threshold"]
    out = "\n".join(lines + ["", _table(header, rows)])
    if "tp_mean" in first:
        keys = [f"{c}_{t}" for t in ("25", "50", "75", "mean") for c in ("tp", "fn", "fp")]
        counts = [[r["detector"]] + [f"{r[k]:g}" for k in keys] for r in records]
        out += "\n\ncomponents: TP, FN (gt instances), FP (predicted components) at sIoU/PPV 0.25, 0.50, 0.75, " \
               "and their means over 0.25..0.75\n" + _table(["Detector"] + [k.upper().replace("_", "@") for k in keys],
                                                              counts)
    return out


def run_ood(args) -> int:
    if args.bins < 2:
        raise InputError(f"--bins must be at least 2, got {args.bins}")
    if args.json:
        check_writable(args.json, "--json file")
    records = evaluate_ood(args.file, args.detectors.split(",") if args.detectors else None,
                           _ids(args.ood_ids), _ids(args.ignore_ids) or (), args.mode, args.bins, args.range,
                           args.min_pred_size, args.min_gt_size, _thresholds(args.threshold),
                           not args.no_components, not args.quiet, args.curve)
    print(format_ood(records))
    if args.json:
        _write_json(records, args.json)
    return 0


# --------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate_segmentation.py", description=__doc__)
    sub = p.add_subparsers(dest="task", required=True)
    s = sub.add_parser("imagenet_s", help="ImageNet-S toolbox figures from a segment_images.py store or from "
                                          "prediction and ground-truth PNG masks",
                       description="ImageNet-S toolbox figures (Acc, mIoU, boundary and size-bucket IoUs, F-measure) "
                                   "from a segment_images.py store or from PNG folders. Every option is spelled "
                                   "with underscores; the toolbox's --predict-dir, --gt-dir and --per-class are "
                                   "accepted too.")

    def both(*names, **kw):  # the toolbox's hyphen spelling is accepted too; help shows the underscore one
        s.add_argument(names[0], **kw)
        s.add_argument(*[n.replace("_", "-") for n in names], dest=names[0][2:], help=argparse.SUPPRESS,
                       **{k: v for k, v in kw.items() if k != "help"})

    s.add_argument("--store", metavar="H5", help="segment_images.py output of an ImageNet-S list with masks: its "
                                                 "predicted class maps against its ground truth, no PNGs needed")
    both("--predict_dir", help="prediction PNGs (RGB, id = R + 256 G), gt's layout")
    both("--gt_dir", help="ground-truth PNGs, e.g. ImageNetS919/validation-segmentation")
    s.add_argument("--mode", choices=sorted(imagenet_s.MODES, key=int), default="50",
                   help="ImageNet-S-50/300/919: the number of classes")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    s.add_argument("--match", metavar="JSON",
                   help="map prediction ids to gt ids: read this matching file, or compute the optimal matching "
                        "and save it here if absent (the toolbox's Munkres, munkres 1.1.4, so ties fall as there)")
    s.add_argument("--categories", help="ImageNet-S categories file (one wnid a line) to name the classes")
    both("--per_class", action="store_true", help="print the per-class IoU table")
    s.add_argument("--json", help="write every figure (per-class IoUs included) as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=run_imagenet_s)

    o = sub.add_parser("ood", help="SegmentMeIfYouCan pixel and component metrics from segment_images.py output")
    o.add_argument("file", help="HDF5 file written by segment_images.py (with ground truth)")
    o.add_argument("--detectors", help="comma list of stored score maps (default: all)")
    o.add_argument("--ood_ids", help="gt ids that are OOD (default: gt is a binary mask, 0 ID, 1 OOD, 255 ignore)")
    o.add_argument("--ignore_ids", help="gt ids to ignore (e.g. 255)")
    o.add_argument("--curve", choices=("exact", "smiyc"), default="exact",
                   help="exact: the exact curve (see --mode); smiyc: the SegmentMeIfYouCan benchmark's binned curve "
                        "(768 percentile bins a frame) and its component threshold step, step for step, for numbers "
                        "next to the public leaderboard's (AP differs from the exact one by about a point)")
    o.add_argument("--mode", choices=("exact", "streaming"), default="exact",
                   help="--curve exact: exact sorts all pixels in memory; streaming: fixed histogram bins")
    o.add_argument("--bins", type=int, default=10000, help="streaming: number of bins")
    o.add_argument("--range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="streaming: bin range (default: each map's stored min and max); scores outside are an error")
    o.add_argument("--min_pred_size", type=int, default=500,
                   help="drop predicted components below (pixels; the benchmark: 500 AnomalyTrack, 50 ObstacleTrack)")
    o.add_argument("--min_gt_size", type=int, default=100,
                   help="ignore gt instances below (pixels; the benchmark: 100 AnomalyTrack, 10 ObstacleTrack)")
    o.add_argument("--threshold", action="append", default=[], metavar="DETECTOR=VALUE",
                   help="component threshold instead of the best-F1 one: OOD if score <= VALUE (--curve smiyc: "
                        "score < VALUE, in float16)")
    o.add_argument("--no_components", action="store_true", help="pixel metrics only")
    o.add_argument("--json", help="write one record per detector as JSON")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.set_defaults(run=run_ood)
    return p


def main(argv=None) -> int:
    from ..cli import run_main

    args = build_parser().parse_args(argv)
    return run_main(lambda: args.run(args))
