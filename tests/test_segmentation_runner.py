"""segment_images.py on tiny generated images with random-init torchvision models (no download)."""
import numpy as np
import pytest
import torch
from PIL import Image

from ood.data import encode_imagenet_s_mask
from ood.segmentation import runner
from ood.segmentation.evaluate import evaluate_ood
from ood.segmentation.store import SegmentationFile

SIZES = [(32, 48), (32, 48), (40, 32), (32, 48), (40, 32)]


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i, (h, w) in enumerate(SIZES):
        folder = tmp_path / "img" / "n01"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        mask = rng.integers(0, 3, (h, w))
        mask[:3] = 1000
        mask[5:9, 5:9] = 300  # ids above 255 survive the RGB coding
        Image.fromarray(encode_imagenet_s_mask(mask)).save(folder / f"{i}.png")
        lines.append(f"n01/{i}.jpg n01/{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def direct_maps(model, path):
    x = runner.transform(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        z = model(x)["out"].double()[0]
    p = torch.softmax(z, 0)
    top = torch.topk(p, min(100, p.shape[0]), 0).values
    return {"msp": p.max(0).values, "maxlogit": z.max(0).values, "energy": torch.logsumexp(z, 0),
            "entropy": (p * torch.log(p)).sum(0), "gen": -(top ** 0.1 * (1 - top) ** 0.1).sum(0)}, z.argmax(0)


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_score_maps_equal_a_direct_forward(dataset, name):
    torch.manual_seed(0)
    model = runner.build_model(name, 5)
    out = dataset / "seg.h5"
    assert runner.main([str(dataset / "img"), str(out), name, "--num_classes", "5", "--img_list",
                        str(dataset / "list.txt"), "--list_format", "imagenet_s", "--batch", "3", "--workers", "0",
                        "--device", "cpu", "--quiet", "--checkpoint", str(save(model, dataset))]) == 0
    with SegmentationFile(out) as f:
        assert f.n == len(SIZES) and f.paths() == [f"n01/{i}.jpg" for i in range(len(SIZES))]
        for i in range(f.n):
            want, pred = direct_maps(model, dataset / "img" / f.paths()[i])
            for name_, m in want.items():
                got = f.image(i, name_).astype(np.float64)
                np.testing.assert_allclose(got, m.numpy(), rtol=2e-3, atol=2e-3, err_msg=name_)
            assert np.array_equal(f.image(i, "pred"), pred.numpy())
            gt = f.image(i, "gt")
            assert gt.shape == SIZES[i] and (gt[:3] == 1000).all() and (gt[5:9, 5:9] == 300).all()
        assert f.score_range("msp")[1] <= 1.0


def save(model, root):
    path = root / "weights.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_resume_after_interruption_equals_one_run(dataset):
    torch.manual_seed(1)
    model = runner.build_model("lraspp_mobilenet_v3_large", 3)
    data = runner.load_inputs(dataset / "img", dataset / "list.txt", "imagenet_s", "none")
    seg = runner.Segmenter(model, torch.device("cpu"), ["msp", "energy"], amp="off")
    full = runner.segment(dataset / "full.h5", data, dataset / "img", seg, batch=2)
    assert full["images"] == len(SIZES)

    calls = {"n": 0}

    class Stop(runner.Segmenter):
        def __call__(self, x):
            calls["n"] += 1
            if calls["n"] > 2:
                raise KeyboardInterrupt
            return super().__call__(x)

    with pytest.raises(KeyboardInterrupt):
        runner.segment(dataset / "cut.h5", data, dataset / "img", Stop(model, torch.device("cpu"), ["msp", "energy"],
                                                                          amp="off"), batch=2)
    assert (dataset / "cut.h5.partial").exists() and not (dataset / "cut.h5").exists()
    resumed = runner.segment(dataset / "cut.h5", data, dataset / "img", seg, batch=2, resume=True)
    assert 0 < resumed["images"] < len(SIZES)
    with SegmentationFile(dataset / "full.h5") as a, SegmentationFile(dataset / "cut.h5") as b:
        for name in ("msp", "energy", "pred", "gt"):
            assert np.array_equal(a.dataset(name)[()], b.dataset(name)[()]), name
        assert np.array_equal(a.offsets, b.offsets)
    recs = evaluate_ood(dataset / "cut.h5", ["msp"], [300], [1000], min_pred_size=1, min_gt_size=1)
    assert 0 <= recs[0]["auroc"] <= 1 and recs[0]["gt_instances"] == len(SIZES)


def test_bad_inputs_give_one_line_errors(dataset, capsys):
    (dataset / "img" / "n01" / "1.png").write_bytes(b"not a png")
    assert runner.main([str(dataset / "img"), str(dataset / "x.h5"), "fcn_resnet50", "--img_list",
                        str(dataset / "list.txt"), "--list_format", "imagenet_s", "--workers", "0", "--quiet",
                        "--detectors", "msp,odin"]) == 2
    assert "unknown pixel detector odin" in capsys.readouterr().err
    assert runner.main([str(dataset / "img"), str(dataset / "x.h5"), "lraspp_mobilenet_v3_large", "--img_list",
                        str(dataset / "list.txt"), "--list_format", "imagenet_s", "--workers", "0", "--quiet",
                        "--device", "cpu"]) == 2
    assert "1.png: cannot read mask" in capsys.readouterr().err
    assert runner.main([str(dataset / "img"), str(dataset / "y.h5"), "fcn_resnet50", "--checkpoint",
                        str(dataset / "list.txt"), "--workers", "0", "--quiet"]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err
