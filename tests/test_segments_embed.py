"""python -m ood.segments embed: the crop rule against a loop written here, the selection, a round trip on a
random-init timm model with generated images (features equal a plain forward of each crop), resume, and
bad input (no segment selected, a file used with another store)."""
import numpy as np
import pytest
import torch
from PIL import Image

from ood.errors import FeatureFileError, InputError, ParameterError
from ood.extract import ModelSpec
from ood.features import FeatureFile
from ood.segments import embed
from ood.segments.__main__ import main as segments_main
from ood.segments.table import read_segments, write_predictions
from ood.segmentation.store import write_segmentation


def slow_crop(box, h, w, m):
    """Grow each side to m around its centre (extra pixel after), push back inside, whole side if too small."""
    y0, x0, y1, x1 = box
    out = []
    for lo, hi, size in ((y0, y1, h), (x0, x1, w)):
        length = hi - lo
        if length < m:
            want = min(m, size)
            extra = want - length
            lo, hi = lo - extra // 2, hi + extra - extra // 2
            while lo < 0:
                lo, hi = lo + 1, hi + 1
            while hi > size:
                lo, hi = lo - 1, hi - 1
        out.append((lo, hi))
    return [out[0][0], out[1][0], out[0][1], out[1][1]]


def test_crop_rule_at_borders_in_the_middle_and_for_small_images():
    h, w, m = 60, 90, 32
    cases = [[0, 0, 5, 5], [55, 85, 60, 90], [20, 30, 30, 41], [10, 0, 50, 90], [0, 40, 60, 45], [3, 88, 4, 90],
             [28, 44, 29, 45]]
    got = embed.crop_boxes(cases, h, w, m)
    assert got.tolist() == [slow_crop(b, h, w, m) for b in cases]
    assert (got[:, 2] - got[:, 0] >= m).all() and (got[:, 3] - got[:, 1] >= m).all()
    assert got.min() >= 0 and (got[:, 2] <= h).all() and (got[:, 3] <= w).all()
    small = embed.crop_boxes([[2, 3, 6, 9]], np.array([20]), np.array([10]), 128)  # image below 128: all of it
    assert small.tolist() == [[0, 0, 20, 10]]
    big = [[5, 5, 55, 80]]
    assert embed.crop_boxes(big, h, w, m).tolist() == big


def test_where_conditions():
    assert embed.parse_condition("iou_pred<0.5") == ("iou_pred", "<", 0.5)
    for bad in ("iou_pred", "iou_pred<<1", "score_msp < low", "<0.3"):
        with pytest.raises(ParameterError, match="NAME OP NUMBER"):
            embed.parse_condition(bad)


def scene(rng, h=24, w=32, num=3):
    gt = np.zeros((h, w), np.int64)
    for c in (1, 2, 1):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        gt[y:y + rng.integers(3, 8), x:x + rng.integers(3, 10)] = c
    pred = gt.copy()
    y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
    pred[y:y + 4, x:x + 5] = rng.integers(0, num)
    z = rng.normal(size=(num, h, w))
    np.put_along_axis(z, pred[None], z.max(0)[None] + 1 + rng.random((1, h, w)), 0)
    p = np.exp(z)
    return (p / p.sum(0)).astype(np.float32), pred, gt


def make_store(tmp_path, n=5, seed=0, name="s.h5"):
    rng = np.random.default_rng(seed)
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    probs, preds, gts = zip(*[scene(rng) for _ in range(n)])
    paths = [f"im{seed}_{i}.png" for i in range(n)]
    for p, pred in zip(paths, preds):
        Image.fromarray(rng.integers(0, 255, pred.shape + (3,), dtype=np.uint8)).save(root / p)
    store = tmp_path / name
    write_segmentation(store, {"msp": [p.max(0) for p in probs]}, list(preds), gt=list(gts), paths=paths,
                       probs=list(probs), data_root=str(root))
    table = read_segments(store)
    write_predictions(store, np.linspace(0, 1, len(table)))
    return store, root


ARGS = ["resnet18", "--random_init", "--seed", "3", "--num_classes", "3", "--resize", "32", "--min_crop", "12",
        "--device", "cpu", "--batch", "4", "--quiet"]


def test_round_trip_features_equal_a_forward_of_each_crop(tmp_path):
    store, root = make_store(tmp_path)
    out = tmp_path / "emb.h5"
    assert segments_main(["embed", str(store), str(out)] + ARGS) == 0
    table = read_segments(store)
    rows = np.flatnonzero(table.iou_pred < 0.5)
    emb = embed.read_embeddings(out, store)
    assert emb.row.tolist() == rows.tolist() and len(emb) == len(rows) > 4
    assert emb.gt_class.tolist() == table.gt_class[rows].tolist()
    assert emb.segment.tolist() == table.segment[rows].tolist()
    with FeatureFile(out) as f:
        assert f.labels().tolist() == table.gt_class[rows].tolist()
        assert list(f.paths()) == [table.paths[i] for i in table.image[rows]]
        assert f.num_classes == 3 and f.attrs["table_sha256"] == embed.table_fingerprint(table)
    backbone = ModelSpec("resnet18", random_init=True, seed=3, num_classes=3, resize=32).build()
    backbone.model.eval()
    for i, r in enumerate(rows):
        img = Image.open(root / table.paths[table.image[r]]).convert("RGB")
        y0, x0, y1, x1 = slow_crop(table.bbox[r].tolist(), img.height, img.width, 12)
        assert emb.box[i].tolist() == [y0, x0, y1, x1]
        x = backbone.normalize(backbone.transform(img.crop((x0, y0, x1, y1)))[None])
        with torch.inference_mode():
            want = backbone.forward(x)[0].numpy()[0]
        np.testing.assert_allclose(emb.features[i], want, rtol=1e-4, atol=1e-4)


def test_resume_after_a_bad_image_and_selection_by_score(tmp_path):
    store, root = make_store(tmp_path)
    table = read_segments(store)
    where = ["--where", "score_msp<0.8", "--where", "S>=15"]
    rows = np.flatnonzero((table.column("score_msp") < 0.8) & (table.column("S") >= 15))
    assert 5 < len(rows) < len(table)
    clean = tmp_path / "clean.h5"
    assert segments_main(["embed", str(store), str(clean)] + where + ARGS) == 0
    last = root / table.paths[table.image[rows[-1]]]
    good = last.read_bytes()
    last.write_bytes(b"not a png")
    out = tmp_path / "emb.h5"
    assert segments_main(["embed", str(store), str(out)] + where + ARGS) == 2
    assert not out.exists() and (tmp_path / "emb.h5.partial").exists()
    last.write_bytes(good)
    assert segments_main(["embed", str(store), str(out), "--resume"] + where + ARGS) == 0
    a, b = embed.read_embeddings(clean), embed.read_embeddings(out)
    assert a.row.tolist() == b.row.tolist() == rows.tolist()
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    store, _ = make_store(tmp_path)
    out = tmp_path / "emb.h5"
    assert segments_main(["embed", str(store), str(out), "--where", "iou_pred<-1"] + ARGS) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no segment satisfies iou_pred<-1" in err and str(store) in err
    assert not out.exists() and not (tmp_path / "emb.h5.partial").exists()
    assert segments_main(["embed", str(store), str(out), "--where", "nope<1"] + ARGS) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    assert segments_main(["embed", str(store), str(out)] + ARGS) == 0
    other, _ = make_store(tmp_path, seed=1, name="other.h5")
    with pytest.raises(FeatureFileError, match="does not match the segment table of"):
        embed.read_embeddings(out, other)
    assert segments_main(["retrieve", str(out), "--store", str(other), "--quiet"]) == 2
    assert "does not match the segment table" in capsys.readouterr().err
    no_pred = tmp_path / "nopred.h5"
    rng = np.random.default_rng(4)
    p, pred, gt = scene(rng)
    write_segmentation(no_pred, {}, [pred], paths=["x.png"], probs=[p])
    with pytest.raises(InputError, match="no iou_pred; run python -m ood.segments meta"):
        embed.select_segments(read_segments(no_pred))
