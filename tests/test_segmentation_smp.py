"""segment_images.py --backend smp: DeepLabV3+, U-Net and FPN on a timm encoder, random-init (nothing is
downloaded), each stored map against the model's own forward of the zero-padded image, cropped back."""
import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from ood.segmentation import runner
from ood.segmentation.store import SegmentationFile

pytest.importorskip("segmentation_models_pytorch")

ENCODER = "tu-mobilenetv3_small_050"  # a timm model, the smallest that every architecture takes
SIZES = [(40, 56), (40, 56), (33, 64)]  # sides not divisible by 16 or 32: the padding is exercised


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("smp")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i}.png")
    (root / "list.txt").write_text("".join(f"{i}.png\n" for i in range(len(SIZES))))
    return root


def direct(model, path):
    """Logits of the model's own forward: the normalised image zero-padded at the bottom and right to the
    smallest sides smp accepts (multiples of the encoder's output stride where the model asks for it; DeepLabV3+'s
    image pooling sees the padding, so the amount matters), cropped to the image."""
    x = runner.transform(Image.open(path).convert("RGB"))[None]
    h, w = x.shape[-2:]
    m = model.encoder.output_stride if model.requires_divisible_input_shape else 1
    padded = torch.zeros(1, 3, -(-h // m) * m, -(-w // m) * m)
    padded[..., :h, :w] = x
    with torch.no_grad():
        return model(padded)[0, :, :h, :w].double()


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet", "fpn"])
def test_stored_maps_equal_the_models_forward(images, tmp_path, arch):
    torch.manual_seed(0)
    model = runner.build_model(arch, 4, backend="smp", encoder=ENCODER)
    weights = tmp_path / "w.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "seg.h5"
    assert runner.main([str(images), str(out), arch, "--backend", "smp", "--encoder", ENCODER, "--checkpoint",
                        str(weights), "--num_classes", "4", "--img_list", str(images / "list.txt"), "--detectors",
                        "msp,maxlogit", "--no-segments", "--batch", "2", "--workers", "0", "--device", "cpu",
                        "--amp", "off", "--quiet"]) == 0
    with SegmentationFile(out) as f:
        for i in range(f.n):
            z = direct(model, images / f.paths()[i])
            np.testing.assert_allclose(f.image(i, "maxlogit").astype(np.float64), z.max(0).values.numpy(),
                                       rtol=2e-3, atol=2e-3)
            np.testing.assert_allclose(f.image(i, "msp").astype(np.float64),
                                       torch.softmax(z, 0).max(0).values.numpy(), rtol=2e-3, atol=2e-3)
            assert np.array_equal(f.image(i, "pred"), z.argmax(0).numpy())
    with h5py.File(out) as h:
        assert h.attrs["backend"] == "smp" and h.attrs["encoder"] == ENCODER
        assert json.loads(h.attrs["preprocess"])["pad_to_multiple"] == runner.input_multiple(model)


def test_smp_errors_are_one_line(images, tmp_path, capsys):
    base = [str(images), str(tmp_path / "x.h5")]
    assert runner.main(base + ["unet", "--backend", "smp", "--encoder", "no_such_encoder", "--quiet"]) == 2
    assert "cannot be built on encoder 'no_such_encoder'" in capsys.readouterr().err
    assert runner.main(base + ["pspnet", "--backend", "smp", "--quiet"]) == 2
    assert "unknown smp model 'pspnet'" in capsys.readouterr().err
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pth")
    assert runner.main(base + ["fpn", "--backend", "smp", "--encoder", ENCODER, "--checkpoint",
                               str(tmp_path / "bad.pth"), "--quiet"]) == 2
    assert "does not fit smp fpn on tu-mobilenetv3_small_050 with 21 classes" in capsys.readouterr().err
