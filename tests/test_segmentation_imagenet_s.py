"""ImageNet-S evaluation against a literal, slow re-statement of the toolbox's procedure on synthetic masks."""
import json
import math
from itertools import permutations

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


# --------------------------------------------------------------------------------------------- toolbox matching


def toolbox_matching(gt_ids, pred_ids, n):
    """The toolbox's hungarian.py restated: per-image id lists (0 dropped), float32 cost 1 - co / images,
    munkres' assignment from prediction id to gt id."""
    from munkres import Munkres

    matrix = np.zeros((n, n), np.float32)
    for i in range(n):
        for j in range(n):
            matrix[i][j] = 1.0 - 1.0 * sum((i + 1) in p and (j + 1) in g for g, p in zip(gt_ids, pred_ids)) / len(gt_ids)
    return {0: 0, **{r + 1: c + 1 for r, c in Munkres().compute(matrix.tolist())}}


def test_matching_breaks_ties_as_the_toolbox():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(3)
    scipy_differs = 0
    for _ in range(40):
        n, images = int(rng.integers(3, 7)), int(rng.integers(2, 6))
        gt_ids = [set(rng.choice(np.arange(1, n + 1), rng.integers(1, 3), replace=False)) for _ in range(images)]
        pred_ids = [set(rng.choice(np.arange(1, n + 1), rng.integers(1, 3), replace=False)) for _ in range(images)]
        co = np.zeros((n + 1, n + 1), np.int64)
        for g, p in zip(gt_ids, pred_ids):
            for i in p:
                for j in g:
                    co[i, j] += 1
        got = ims.match_ids(co, images)
        assert got == toolbox_matching(gt_ids, pred_ids, n)
        rows, cols = linear_sum_assignment(co[1:, 1:], maximize=True)
        scipy_differs += got != {0: 0, **{int(r) + 1: int(c) + 1 for r, c in zip(rows, cols)}}
        best = max(sum(co[1 + i, 1 + j] for i, j in enumerate(perm)) for perm in permutations(range(n)))
        assert sum(co[k, v] for k, v in got.items() if k) == best
    assert scipy_differs > 0  # the ties are real: another optimal solver picks other matchings


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture()
def imagenet_val(tmp_path):
    """A plain ImageNet val folder, ImageNet-S masks, names list and mapping file (the dataset's layout)."""
    rng = np.random.default_rng(4)
    (tmp_path / "val").mkdir()
    names, mapping, pairs = [], [], []
    for i, (h, w) in enumerate([(32, 48), (32, 48), (40, 32)]):
        wnid = f"n0{i % 2}"
        plain = f"val/ILSVRC2012_val_{i:08d}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / plain)
        gt, _ = random_masks(rng, h, w)
        gt[gt != ims.IGNORE] *= 7  # ids up to 42 of 50
        save(tmp_path / "masks" / wnid / f"ILSVRC2012_val_{i:08d}.png", gt)
        names.append(f"{wnid}/ILSVRC2012_val_{i:08d}.JPEG {wnid}/ILSVRC2012_val_{i:08d}.png")
        mapping.append(f"{plain} {wnid}/ILSVRC2012_val_{i:08d}.JPEG")
        pairs.append((plain, gt))
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "mapping.txt").write_text("\n".join(mapping) + "\n")
    return tmp_path, pairs


def test_model_to_store_to_imagenet_s_figures(imagenet_val, capsys):
    import torch

    from ood.segmentation import runner
    from ood.segmentation.evaluate import main as evaluate_main

    root, pairs = imagenet_val
    torch.manual_seed(0)
    model = runner.build_model("lraspp_mobilenet_v3_large", 51)
    torch.save(model.state_dict(), root / "w.pth")
    store = root / "seg.h5"
    assert runner.main([str(root), str(store), "lraspp_mobilenet_v3_large", "--num_classes", "51", "--checkpoint",
                        str(root / "w.pth"), "--img_list", str(root / "names.txt"), "--list_format", "imagenet_s",
                        "--mapping", str(root / "mapping.txt"), "--mask_root", str(root / "masks"),
                        "--no-segments", "--detectors", "msp", "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    direct = []
    for plain, gt in pairs:
        x = runner.transform(Image.open(root / plain).convert("RGB"))[None]
        with torch.no_grad():
            direct.append((gt, model(x)["out"][0].argmax(0).numpy()))
    assert evaluate_main(["imagenet_s", "--store", str(store), "--mode", "50", "--workers", "2",
                          "--json", str(root / "plain.json"), "--quiet"]) == 0
    got, want = json.loads((root / "plain.json").read_text()), slow_metrics(direct, 50)
    for key in ("mIoU", "mBIoU", "Acc", "FMeasure", "S", "MS", "ML", "L"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-9, err_msg=key)
    # unsupervised ids: the toolbox's matching, computed from the store, then the figures through it
    assert evaluate_main(["imagenet_s", "--store", str(store), "--mode", "50", "--match", str(root / "m.json"),
                          "--per-class", "--json", str(root / "matched.json"), "--quiet"]) == 0
    assert "per class IoU" in capsys.readouterr().out
    gt_ids = [set(np.unique(g[(g != ims.IGNORE) & (g > 0)]).tolist()) for g, _ in direct]
    pred_ids = [set(np.unique(p[(g != ims.IGNORE) & (p > 0)]).tolist()) for g, p in direct]
    matching = toolbox_matching(gt_ids, pred_ids, 50)
    assert ims.read_matching(root / "m.json") == matching
    relabel = np.array([matching[i] for i in range(51)])
    got = json.loads((root / "matched.json").read_text())
    want = slow_metrics([(g, relabel[p]) for g, p in direct], 50)
    np.testing.assert_allclose(got["mIoU"], want["mIoU"], rtol=1e-9)


def test_mapping_and_flag_errors(imagenet_val, capsys):
    from ood.segmentation import runner
    from ood.segmentation.evaluate import main as evaluate_main

    root, _ = imagenet_val
    (root / "vim.txt").write_text("val/ILSVRC2012_val_00000000.png 3\n")
    assert runner.main([str(root), str(root / "x.h5"), "fcn_resnet50", "--img_list", str(root / "vim.txt"),
                        "--list_format", "vim", "--mapping", str(root / "mapping.txt"), "--quiet"]) == 2
    assert "--mapping applies to imagenet_s lists, this one reads as vim" in capsys.readouterr().err
    assert evaluate_main(["imagenet_s", "--store", "a.h5", "--gt-dir", str(root)]) == 2
    assert "give either --store" in capsys.readouterr().err
    assert evaluate_main(["imagenet_s", "--predict-dir", str(root / "p"), "--gt_dir", str(root / "masks")]) == 2
    assert "prediction folder does not exist" in capsys.readouterr().err
