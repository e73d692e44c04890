"""MetaSeg segment metrics against a slow per-segment loop (flood fill, float64) on small hand-made maps."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from ood.segments.metrics import MAPS, metric_columns, segment_metrics
from ood.segments.table import read_segments, segment_ids, segment_mask, write_predictions
from ood.segmentation import runner
from ood.segmentation.store import SegmentationFile, write_segmentation
from ood.errors import FeatureFileError, InputError

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def components(labels):
    """8-connected components of equal values by flood fill: a list of (value, sorted pixel list)."""
    h, w = labels.shape
    seen = np.zeros((h, w), bool)
    out = []
    for y in range(h):
        for x in range(w):
            if seen[y, x]:
                continue
            value, stack, pixels = labels[y, x], [(y, x)], []
            seen[y, x] = True
            while stack:
                a, b = stack.pop()
                pixels.append((a, b))
                for dy, dx in NEIGHBOURS:
                    u, v = a + dy, b + dx
                    if 0 <= u < h and 0 <= v < w and not seen[u, v] and labels[u, v] == value:
                        seen[u, v] = True
                        stack.append((u, v))
            out.append((int(value), sorted(pixels)))
    return out


def reference(probs, pred, scores, gt=None, ignore=(255,)):
    """Every metric of every segment, one segment at a time (the definitions of ood.segments.metrics)."""
    num, h, w = probs.shape
    p = probs.astype(np.float64)
    srt = np.sort(p, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0).sum(0) / np.log(num)
    heat = {"E": ent, "D": 1 - (srt[-1] - srt[-2]), "V": 1 - srt[-1]}
    segs = components(pred)
    gt_comps = components(gt) if gt is not None else []
    rows = {}
    for c, pixels in segs:
        pix = set(pixels)
        bd = [any(0 <= y + dy < h and 0 <= x + dx < w and pred[y + dy, x + dx] != c for dy, dx in NEIGHBOURS)
              for y, x in pixels]
        inner = [q for q, b in zip(pixels, bd) if not b]
        border = [q for q, b in zip(pixels, bd) if b]
        s, s_in, s_bd = len(pixels), len(inner), len(border)
        rel, rel_in = s / max(s_bd, 1), s_in / max(s_bd, 1)
        m = {"S": s, "S_in": s_in, "S_bd": s_bd, "S_rel": rel, "S_rel_in": rel_in}
        for name, hm in heat.items():
            def mean(ps):
                return float(np.mean([hm[q] for q in ps])) if ps else 0.0

            def var(ps):
                return float(np.var([hm[q] for q in ps])) if ps else 0.0
            m[name], m[f"{name}_in"], m[f"{name}_bd"] = mean(pixels), mean(inner), mean(border)
            m[f"{name}_rel"], m[f"{name}_rel_in"] = mean(pixels) * rel, mean(inner) * rel_in
            m[f"{name}_var"], m[f"{name}_var_in"], m[f"{name}_var_bd"] = var(pixels), var(inner), var(border)
            m[f"{name}_var_rel"], m[f"{name}_var_rel_in"] = var(pixels) * rel, var(inner) * rel_in
        for k in range(num):
            m[f"cprob{k}"] = np.mean([p[k][q] for q in pixels])
        m["centroid_y"] = np.mean([q[0] for q in pixels])
        m["centroid_x"] = np.mean([q[1] for q in pixels])
        for d, sm in scores.items():
            m[f"score_{d}"] = np.mean([float(sm[q]) for q in pixels])
        ys, xs = [q[0] for q in pixels], [q[1] for q in pixels]
        box = (min(ys), min(xs), max(ys) + 1, max(xs) + 1)
        iou, gclass = np.nan, -1
        if gt is not None:
            valid = {q for q in pix if gt[q] not in ignore}
            G = set().union(*[set(g) for v, g in gt_comps if v == c and pix & set(g)])
            Q = {q for v, o in segs if v == c and o != pixels for q in o}
            inter = len(pix & G)
            union = len(valid | (G - Q))
            iou = inter / union if union else np.nan
            counts = Counter(int(gt[q]) for q in valid)
            if counts:
                top = max(counts.values())
                gclass = min(k for k, v in counts.items() if v == top)
        rows[frozenset(pixels)] = (c, m, box, iou, gclass)
    return rows


def probs_for(pred, num, rng):
    z = rng.normal(size=(num,) + pred.shape)
    top = z.max(0)
    np.put_along_axis(z, pred[None], top[None] + 0.2 + rng.random(pred.shape)[None], 0)
    e = np.exp(z)
    return (e / e.sum(0)).astype(np.float32)


def hand_made():
    """Classes 0..3: a ring of 1 around 2 (nested), one-pixel segments, class 2 in two components, segments on
    the border, a diagonal-only link (one segment with 8-connectivity)."""
    pred = np.zeros((9, 11), np.int64)
    pred[1:6, 1:6] = 1
    pred[2:5, 2:5] = 2          # nested in the ring of 1
    pred[3, 3] = 3              # one pixel nested twice
    pred[0, 10] = 3             # one pixel in the corner
    pred[6:9, 8:11] = 2         # second component of class 2, on the border
    pred[6, 6] = 1              # touches the ring only diagonally: same segment
    pred[8, 0:4] = 1            # on the bottom border
    gt = pred.copy()
    gt[0:2, :] = 255            # ignore
    gt[7:9, 0:3] = 7            # an id the model does not have (OOD object)
    gt[6:9, 8:11] = 1           # whole segment wrong
    gt[2:5, 5] = 2              # gt 2 object larger than the predicted segment of 2
    return pred, gt


def check_against_reference(seg, probs, pred, scores, gt=None, ignore=(255,)):
    want = reference(probs, pred, scores, gt, ignore)
    cols = metric_columns(probs.shape[0], list(scores))
    assert len(seg) == len(want)
    assert seg.ids.min() == 1 and seg.ids.max() == len(want)
    for k in range(1, len(seg) + 1):
        ys, xs = np.nonzero(seg.ids == k)
        c, m, box, iou, gclass = want[frozenset(zip(ys.tolist(), xs.tolist()))]
        assert seg.pred_class[k - 1] == c
        assert tuple(seg.bbox[k - 1]) == box
        got = dict(zip(cols, seg.metrics[k - 1].astype(np.float64)))
        assert set(got) == set(m)
        for name in cols:
            assert got[name] == pytest.approx(m[name], rel=1e-4, abs=1e-5), (k, name)
        if gt is None:
            assert np.isnan(seg.iou[k - 1]) and seg.gt_class[k - 1] == -1
        else:
            assert seg.iou[k - 1] == pytest.approx(iou, nan_ok=True, abs=1e-6), k
            assert seg.gt_class[k - 1] == gclass, k


def test_hand_made_map_every_metric_and_iou():
    rng = np.random.default_rng(0)
    pred, gt = hand_made()
    probs = probs_for(pred, 4, rng)
    scores = {"msp": rng.random(pred.shape).astype(np.float32), "energy": rng.normal(size=pred.shape)}
    seg = segment_metrics(probs, scores=scores, gt=gt)
    check_against_reference(seg, probs, pred, scores, gt)
    ring = seg.ids[1, 1]
    assert seg.ids[6, 6] == ring                      # diagonal link
    assert len(np.unique(seg.ids[pred == 2])) == 2    # two components of class 2
    one = seg.ids[3, 3]
    assert seg.metrics[one - 1, metric_columns(4).index("S")] == 1
    assert seg.metrics[one - 1, metric_columns(4).index("S_in")] == 0   # a lone pixel is all boundary
    # the wrong segment and the OOD region
    assert seg.iou[seg.ids[7, 9] - 1] == 0 and seg.gt_class[seg.ids[7, 9] - 1] == 1
    assert seg.gt_class[seg.ids[8, 0] - 1] == 7
    # without ground truth
    check_against_reference(segment_metrics(probs, scores=scores), probs, pred, scores)


def test_iou_is_a_direct_count_for_a_split_object():
    """One gt object of class 1 predicted as two segments of 1 (a gap of 0 between): each piece's union leaves
    out the other piece (adjusted IoU), but keeps the gt pixels predicted as another class."""
    pred = np.zeros((4, 10), np.int64)
    pred[1:3, 1:4] = 1
    pred[1:3, 5:8] = 1
    gt = np.zeros((4, 10), np.int64)
    gt[1:3, 1:9] = 1
    probs = probs_for(pred, 2, np.random.default_rng(1))
    seg = segment_metrics(probs, gt=gt)
    left, right = seg.ids[1, 1] - 1, seg.ids[1, 5] - 1
    # left: k = 6 px all correct; G = 16 gt px; Q = right piece (6 px) -> union = 6 + (16 - 6 - 6) = 10
    assert seg.iou[left] == pytest.approx(6 / 10)
    assert seg.iou[right] == pytest.approx(6 / 10)
    background = seg.ids[0, 0] - 1
    assert seg.iou[background] == pytest.approx((40 - 16) / (40 - 12))


def test_whole_image_segment_and_all_ignored():
    probs = np.zeros((3, 4, 5), np.float32)
    probs[1] = 0.7
    probs[0] = probs[2] = 0.15
    gt = np.full((4, 5), 255)
    seg = segment_metrics(probs, gt=gt)
    cols = metric_columns(3)
    row = dict(zip(cols, seg.metrics[0]))
    assert len(seg) == 1 and row["S_bd"] == 0 and row["S_rel"] == 20 and row["S_in"] == 20
    assert row["E_bd"] == 0 and row["cprob1"] == pytest.approx(0.7)
    assert np.isnan(seg.iou[0]) and seg.gt_class[0] == -1


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_maps_many_tiny_segments(seed):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 4, (13, 17))
    pred[4:9, 4:12] = 2
    gt = pred.copy()
    flip = rng.random(pred.shape) < 0.3
    gt[flip] = rng.integers(0, 5, flip.sum())
    gt[0] = 255
    probs = probs_for(pred, 4, rng)
    scores = {"gen": rng.normal(size=pred.shape).astype(np.float32)}
    seg = segment_metrics(probs, scores=scores, gt=gt, ignore_ids=(255, 4))
    sizes = np.bincount(seg.ids.ravel())[1:]
    assert len(seg) > 40 and (sizes == 1).sum() > 10  # the map really is many tiny segments
    check_against_reference(seg, probs, pred, scores, gt, ignore=(255, 4))


def test_store_round_trip_and_predictions(tmp_path):
    rng = np.random.default_rng(2)
    pred, gt = hand_made()
    probs = [probs_for(pred, 4, rng), probs_for(pred.T.copy(), 4, rng)]
    preds = [pred, pred.T.copy()]
    msp = [p.max(0) for p in probs]
    path = tmp_path / "s.h5"
    write_segmentation(path, {"msp": msp}, preds, gt=[gt, gt.T.copy()], paths=["a.png", "b.png"], probs=probs)
    t = read_segments(path)
    direct = [segment_metrics(p, pred=q, scores={"msp": s}, gt=g) for p, q, s, g in zip(probs, preds, msp,
                                                                                          [gt, gt.T])]
    assert len(t) == sum(len(d) for d in direct) and t.columns == metric_columns(4, ["msp"])
    assert t.paths == ["a.png", "b.png"] and t.num_classes == 4 and t.iou_pred is None
    np.testing.assert_array_equal(t.image, np.repeat([0, 1], [len(d) for d in direct]))
    np.testing.assert_array_equal(t.metrics, np.concatenate([d.metrics for d in direct]))
    np.testing.assert_array_equal(t.iou, np.concatenate([d.iou for d in direct]))
    np.testing.assert_array_equal(t.segment[t.image == 1], np.arange(1, len(direct[1]) + 1))
    np.testing.assert_array_equal(t.column("score_msp"), t.metrics[:, -1])
    np.testing.assert_array_equal(segment_ids(path, 1), direct[1].ids)
    assert segment_mask(path, 0, 3).sum() == t.column("S")[2]
    with SegmentationFile(path) as f:
        for m in MAPS:
            assert f.image(1, f"segments/maps/{m}").dtype == np.float16
        e = f.image(0, "segments/maps/E").astype(np.float64)
        want = -(probs[0] * np.log(probs[0])).sum(0) / np.log(4)
        np.testing.assert_allclose(e, want, atol=2e-3)
    with pytest.raises(InputError, match="no column 'nope'"):
        t.column("nope")
    write_predictions(path, np.linspace(0, 1, len(t)), model="test")
    write_predictions(path, np.linspace(1, 0, len(t)), model="again")
    t2 = read_segments(path)
    np.testing.assert_allclose(t2.iou_pred, np.linspace(1, 0, len(t)), atol=1e-6)
    with pytest.raises(InputError, match="3 predictions for a table of"):
        write_predictions(path, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(read_segments(path).iou_pred, np.linspace(1, 0, len(t)), atol=1e-6)
    plain = tmp_path / "plain.h5"
    write_segmentation(plain, {"msp": msp}, preds)
    with pytest.raises(FeatureFileError, match="run segment_images.py with --segments"):
        read_segments(plain)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    folder = tmp_path / "img" / "n01"
    folder.mkdir(parents=True)
    for i, (h, w) in enumerate([(24, 32), (24, 32), (20, 28)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
        mask[:2] = 255
        Image.fromarray(mask).save(folder / f"{i}.png")
        lines.append(f"n01/{i}.jpg n01/{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def direct(model, path):
    x = runner.transform(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        z = model(x)["out"][0]
    return torch.softmax(z, 0).numpy(), z.argmax(0).numpy()


def test_segment_images_end_to_end(images):
    torch.manual_seed(0)
    model = runner.build_model("lraspp_mobilenet_v3_large", 3)
    ckpt = images / "w.pth"
    torch.save(model.state_dict(), ckpt)
    out = images / "seg.h5"
    args = [str(images / "img"), str(out), "lraspp_mobilenet_v3_large", "--num_classes", "3", "--img_list",
            str(images / "list.txt"), "--list_format", "imagenet_s", "--batch", "2", "--workers", "0", "--device",
            "cpu", "--quiet", "--checkpoint", str(ckpt), "--detectors", "msp,entropy", "--amp", "off"]
    assert runner.main(args) == 0
    t = read_segments(out)
    assert t.columns == metric_columns(3, ["msp", "entropy"]) and t.iou is not None
    with SegmentationFile(out) as f:
        for i, path in enumerate(f.paths()):
            probs, pred = direct(model, images / "img" / path)
            gt = f.image(i, "gt")
            want = segment_metrics(probs, pred=pred, gt=gt,
                                   scores={"msp": f.image(i, "msp"), "entropy": f.image(i, "entropy")})
            rows = t.image == i
            np.testing.assert_array_equal(segment_ids(out, i), want.ids)
            np.testing.assert_array_equal(t.pred_class[rows], want.pred_class)
            np.testing.assert_array_equal(t.bbox[rows], want.bbox)
            np.testing.assert_allclose(t.iou[rows], want.iou, atol=1e-6)
            np.testing.assert_allclose(t.metrics[rows], want.metrics, rtol=2e-3, atol=2e-3)
        assert json.loads(f.h5["segments"].attrs["ignore_ids"]) == [255]
    assert runner.main(args[:1] + [str(images / "plain.h5")] + args[2:] + ["--no-segments"]) == 0
    with pytest.raises(FeatureFileError, match="--segments"):
        read_segments(images / "plain.h5")


def test_resume_continues_the_segment_table(images):
    torch.manual_seed(1)
    model = runner.build_model("lraspp_mobilenet_v3_large", 3)
    data = runner.load_inputs(images / "img", images / "list.txt", "imagenet_s", "none")
    seg = runner.Segmenter(model, torch.device("cpu"), ["msp"], amp="off", segments=True)
    runner.segment(images / "full.h5", data, images / "img", seg, batch=1)
    calls = {"n": 0}

    class Stop(runner.Segmenter):
        def __call__(self, x):
            calls["n"] += 1
            if calls["n"] > 2:
                raise KeyboardInterrupt
            return super().__call__(x)

    with pytest.raises(KeyboardInterrupt):
        runner.segment(images / "cut.h5", data, images / "img",
                       Stop(model, torch.device("cpu"), ["msp"], amp="off", segments=True), batch=1)
    with pytest.raises(FeatureFileError, match="segments: True"):
        runner.segment(images / "cut.h5", data, images / "img",
                       runner.Segmenter(model, torch.device("cpu"), ["msp"], amp="off"), batch=1, resume=True)
    assert runner.segment(images / "cut.h5", data, images / "img", seg, batch=1, resume=True)["images"] == 1
    with SegmentationFile(images / "full.h5") as a, SegmentationFile(images / "cut.h5") as b:
        for name in ("image", "segment", "pred_class", "bbox", "metrics", "iou", "gt_class", "offsets", "ids",
                     "maps/E", "maps/D", "maps/V"):
            np.testing.assert_array_equal(a.h5[f"segments/{name}"][()], b.h5[f"segments/{name}"][()], err_msg=name)
