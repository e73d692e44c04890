"""The segment demo's pieces: scenes and masks, backbone crops, the mean IoU against a direct count, BatchNorm
recalibration against the batch statistics, a one-step training, and the per-kind report."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ood.data import read_list
from ood.errors import InputError
from ood.segments import demo


def test_scenes_masks_and_lists(tmp_path):
    paths = demo.make_scenes(tmp_path, n_train=4, n_test=3, backbone_limit=12)
    train = read_list(paths["train"], "imagenet_s")
    test = read_list(paths["test"], "imagenet_s")
    assert len(train) == 4 and len(test) == 3
    seen = set()
    for items, allowed in ((train, set(range(6))), (test, set(range(11)))):
        for image, mask in zip(items.paths, items.extra["mask"]):
            img = np.asarray(Image.open(tmp_path / image))
            m = np.asarray(Image.open(tmp_path / mask))
            assert img.shape == (demo.SIZE, demo.SIZE, 3) and m.shape == (demo.SIZE, demo.SIZE)
            values = set(np.unique(m).tolist())
            assert values <= allowed and len(values) >= 2
            seen |= values
            assert (img[m > 0] == img[m > 0][:, :1]).all()  # the digit squares are grey
    assert seen & set(demo.ood_ids())  # the test scenes hold OOD digits
    names = (tmp_path / "classes.txt").read_text().splitlines()
    assert names == demo.class_names() and len(names) == 11
    crops = read_list(paths["backbone_train"]).labels.tolist() + read_list(paths["backbone_test"]).labels.tolist()
    assert len(crops) == 12 and set(crops) <= set(range(10))


def test_mean_iou_against_a_direct_count():
    gt = np.array([[0, 0, 1, 1], [2, 2, 1, 9], [0, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 1], [0, 2, 2, 0]])
    # pixels with gt < 3 only (the 9 is dropped): class 0: inter 2, union 5; class 1: inter 3, union 4;
    # class 2: inter 3, union 5
    assert demo.mean_iou(pred, gt, 3) == pytest.approx((2 / 5 + 3 / 4 + 3 / 5) / 3)


def test_batchnorm_recalibration_gives_the_data_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=0.01))
    x = torch.randn(12, 3, 5, 5) * 3 + 1
    demo.recalibrate_batchnorm(model, x, batch=4)
    with torch.no_grad():
        h = model[0](x)
    bn = model[1]
    assert not model.training and bn.momentum == 0.01
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    var = torch.stack([h[i:i + 4].var((0, 2, 3), unbiased=True) for i in range(0, 12, 4)]).mean(0)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)


def test_one_training_step_gives_a_checkpoint_segment_images_loads(tmp_path):
    from ood.segmentation.runner import build_model

    paths = demo.make_scenes(tmp_path / "d", n_train=4, n_test=2, backbone_limit=2)
    miou = demo.train_segmenter(tmp_path / "d", paths["train"], paths["test"], tmp_path / "m.pt", epochs=1,
                                batch=4, log=lambda m: None)
    assert 0 <= miou <= 1
    assert not build_model("lraspp_mobilenet_v3_large", demo.NUM_CLASSES, str(tmp_path / "m.pt")).training


def test_report_per_kind(tmp_path):
    classes = [{"class": c, "name": f"k{c}", "segments": 10, "queries": 10, "chance": 0.1, "map": m}
               for c, m in ((6, 0.5), (7, 0.3), (9, 0.2), (1, 0.9))]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"with_class": 40, "retrieval": {"embedding/euclidean": {"classes": classes}}}))
    lines, m, chance = demo.report(path, demo.ood_ids())
    assert m == pytest.approx((0.5 + 0.3 + 0.2) / 3) and chance == pytest.approx(0.1)
    assert any(line.startswith("| k6 ") and "5.0x" in line for line in lines)
    assert any("OOD kinds" in line for line in lines)
    assert demo.main(["report", str(path), "--min_ratio", "4"]) == 1
    assert demo.main(["report", str(path), "--min_ratio", "2"]) == 0
    path.write_text("{}")
    with pytest.raises(InputError, match="not a retrieval report"):
        demo.report(path, demo.ood_ids())
