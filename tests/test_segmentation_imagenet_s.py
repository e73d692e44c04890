"""ImageNet-S evaluation against a literal, slow re-statement of the toolbox's procedure on synthetic masks."""
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion

from ood.data import encode_imagenet_s_mask
from ood.segmentation import imagenet_s as ims

N = 6


def random_masks(rng, h, w, ignore=True):
    gt = np.zeros((h, w), np.int64)
    for _ in range(rng.integers(1, 5)):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        gt[y:y + rng.integers(2, h), x:x + rng.integers(2, w)] = rng.integers(1, N + 1)
    pred = gt.copy()
    for _ in range(3):
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        pred[y:y + rng.integers(2, h // 2), x:x + rng.integers(2, w // 2)] = rng.integers(0, N + 1)
    if ignore:
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        gt[y:y + 4, x:x + 6] = ims.IGNORE
    return gt, pred


def slow_boundary(mask, ratio=0.03):
    """The toolbox: per value, zero-pad by one, erode with a 3x3 kernel round(ratio*diag) times (the border
    beyond the pad does not erode), boundary = mask minus its erosion; labelled with the value."""
    h, w = mask.shape
    k = max(1, int(round(ratio * np.sqrt(h ** 2 + w ** 2))))
    out = np.zeros_like(mask)
    for v in np.unique(mask):
        m = np.pad(mask == v, 1)
        eroded = binary_erosion(m, np.ones((3, 3)), iterations=k, border_value=1)[1:-1, 1:-1]
        out[(mask == v) & ~eroded] = v
    return out


def hist(x, k):
    return np.array([np.sum(x == c) for c in range(k)], dtype=np.float64)


def slow_metrics(pairs, n):
    k = n + 1
    T, P, TP = np.zeros(k), np.zeros(k), np.zeros(k)
    BT, BP, BTP = np.zeros(k), np.zeros(k), np.zeros(k)
    Ts, Ps, TPs = np.zeros((4, k)), np.zeros((4, k)), np.zeros((4, k))
    BTs, BPs, BTPs = np.zeros((4, k)), np.zeros((4, k)), np.zeros((4, k))
    fm = acc = 0.0
    for gt, pred in pairs:
        bg_, bp_ = slow_boundary(gt + 1).ravel(), slow_boundary(pred + 1).ravel()
        keep = gt.ravel() != 1000
        g, p, bg_, bp_ = gt.ravel()[keep], pred.ravel()[keep], bg_[keep], bp_[keep]
        T += hist(p, k)
        P += hist(g, k)
        TP += hist(g[g == p], k)
        BT += hist(bp_, k + 1)[1:]
        BP += hist(bg_, k + 1)[1:]
        BTP += hist(bg_[bg_ == bp_], k + 1)[1:]
        sizes = {c: math.ceil(100.0 * np.sum(g == c) / g.size) for c in np.unique(g) if c != 0}
        groups = [[], [], [], []]
        for c, s in sizes.items():
            groups[0 if s <= 5 else 1 if s <= 25 else 2 if s <= 50 else 3].append(c)
        for i, cs in enumerate(groups):
            if cs:
                sel = (g == 0) | np.isin(g, cs)
                Ts[i] += hist(p[sel], k)
                Ps[i] += hist(g[sel], k)
                TPs[i] += hist(g[sel][g[sel] == p[sel]], k)
                bsg, bsp = bg_[sel], bp_[sel]
                BTs[i] += hist(bsp, k + 1)[1:]
                BPs[i] += hist(bsg, k + 1)[1:]
                BTPs[i] += hist(bsg[bsg == bsp], k + 1)[1:]
        t, pp = np.sum(g > 0), np.sum(p > 0)
        tp = np.sum((g > 0) & (p > 0))
        r, pr = tp / (t + 1e-20), tp / (pp + 1e-20)
        fm += 1.3 * pr * r / (0.3 * pr + r + 1e-20)
        top = np.argmax(hist(p, k)[1:]) + 1
        acc += (hist(g, k)[top] > 0) * (hist(p, k)[top] > 0)
    iou = lambda a, b, c: c / (a + b - c + 1e-10)  # noqa: E731
    out = {"mIoU": 100 * iou(T, P, TP).mean(), "mBIoU": 100 * iou(BT, BP, BTP).mean(),
           "Acc": 100 * acc / len(pairs), "FMeasure": 100 * fm / len(pairs)}
    for i, name in enumerate(ims.BUCKETS):
        out[name] = 100 * iou(Ts[i], Ps[i], TPs[i])[Ps[i] > 0].mean() if (Ps[i] > 0).any() else np.nan
        out["B" + name] = 100 * iou(BTs[i], BPs[i], BTPs[i])[BPs[i] > 0].mean() if (BPs[i] > 0).any() else np.nan
    return out


def save(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encode_imagenet_s_mask(ids)).save(path)


@pytest.mark.parametrize("shape", [(9, 9), (20, 33), (64, 48)])
def test_boundary_mask_equals_per_class_erosion(shape):
    rng = np.random.default_rng(shape[0])
    gt, _ = random_masks(rng, *shape)
    k = ims.boundary_width(*shape)
    assert k == max(1, int(round(0.03 * np.hypot(*shape))))
    assert np.array_equal(ims.boundary_mask(gt + 1, k), slow_boundary(gt + 1) > 0)


def test_metrics_match_slow_toolbox_procedure():
    rng = np.random.default_rng(0)
    pairs = [random_masks(rng, int(rng.integers(12, 70)), int(rng.integers(12, 70))) for _ in range(12)]
    total = ims.Counts(N)
    for gt, pred in pairs:
        total += ims.image_counts(gt, pred, N)
    got, want = ims.summarize(total), slow_metrics(pairs, N)
    assert got["images"] == len(pairs)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-9, err_msg=key)
    assert {b for b in ims.BUCKETS if np.isfinite(got[b])} == {b for b in ims.BUCKETS if np.isfinite(want[b])}


def test_size_buckets_on_hand_made_image():
    gt = np.zeros((10, 10), np.int64)
    gt[0, :5] = 1  # 5 % -> S
    gt[1:3, :] = 2  # 20 % -> MS
    gt[5:, :] = 3  # 50 % -> ML
    c = ims.image_counts(gt, gt.copy(), 3)
    seen = [set(np.flatnonzero(b[1])) for b in c.bucket_area]
    assert seen == [{0, 1}, {0, 2}, {0, 3}, set()]
    s = ims.summarize(c)
    assert [s["S"], s["MS"], s["ML"]] == pytest.approx([100, 100, 100])
    assert math.isnan(s["L"])


def test_png_round_trip_keeps_ids_above_255_and_ignore(tmp_path):
    ids = np.array([[0, 1, 255, 256], [300, 919, 1000, 513]])
    save(tmp_path / "m.png", ids)
    assert np.array_equal(ims.read_mask(tmp_path / "m.png"), ids)


def write_dataset(root, pairs, relabel=None):
    for i, (gt, pred) in enumerate(pairs):
        save(root / "gt" / f"n0{i % 3}" / f"{i}.png", gt)
        save(root / "pred" / f"n0{i % 3}" / f"{i}.png", pred if relabel is None else relabel[pred])


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluate_folders_ignores_1000_and_matches(tmp_path, workers):
    rng = np.random.default_rng(1)
    pairs = [random_masks(rng, 30, 40) for _ in range(10)]
    # prediction inside the ignore region must not matter
    noisy = [(g, np.where(g == ims.IGNORE, rng.integers(0, N + 1, g.shape), p)) for g, p in pairs]
    write_dataset(tmp_path, noisy)
    got = ims.evaluate(tmp_path / "gt", tmp_path / "pred", N, workers=workers)
    want = slow_metrics(pairs, N)
    for key in ("mIoU", "Acc", "FMeasure", "S", "MS"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)
    assert len(got["IoUs"]) == N + 1


def test_matching_recovers_a_permutation(tmp_path):
    rng = np.random.default_rng(2)
    pairs = []
    for _ in range(20):  # one foreground class per image, so co-occurrence pins the permutation
        gt = np.zeros((16, 16), np.int64)
        gt[3:12, 2:14] = rng.integers(1, N + 1)
        pairs.append((gt, gt.copy()))
    perm = np.r_[0, 1 + rng.permutation(N)]
    write_dataset(tmp_path, pairs, relabel=perm)
    matching = ims.compute_matching(tmp_path / "gt", tmp_path / "pred", N)
    present = {int(perm[g.max()]) for g, _ in pairs}
    assert all(perm[matching[i]] == i for i in present) and matching[0] == 0
    ims.write_matching(matching, tmp_path / "m.json")
    back = ims.read_matching(tmp_path / "m.json")
    assert back == matching and json.loads((tmp_path / "m.json").read_text())["0"] == 0
    got = ims.evaluate(tmp_path / "gt", tmp_path / "pred", N, matching=back)
    assert got["Acc"] == pytest.approx(100) and got["FMeasure"] > 99


def test_errors_name_the_file(tmp_path):
    gt = np.zeros((8, 8), np.int64)
    save(tmp_path / "gt" / "a.png", gt)
    save(tmp_path / "gt" / "b.png", gt)
    save(tmp_path / "pred" / "a.png", gt)
    with pytest.raises(ValueError, match=r"b\.png: missing prediction"):
        ims.evaluate(tmp_path / "gt", tmp_path / "pred", N)
    save(tmp_path / "pred" / "b.png", np.zeros((8, 9), np.int64))
    with pytest.raises(ValueError, match=r"b\.png: prediction is 9x8"):
        ims.evaluate(tmp_path / "gt", tmp_path / "pred", N)
    save(tmp_path / "pred" / "b.png", np.full((8, 8), 300))
    with pytest.raises(ValueError, match=r"b\.png: id 300 is outside the category range 0\.\.6"):
        ims.evaluate(tmp_path / "gt", tmp_path / "pred", N)
