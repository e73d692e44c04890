"""extract_features.py with the open_clip and mmpretrain backends, on tiny random-init models."""
import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from ood.extract import main
from ood.features import FeatureFile, read_head

from .test_extract import make_images, read_all, reference_rgb, run_cli

open_clip = pytest.importorskip("open_clip")

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root, n=8)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clip")
    config = tmp / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip-test")
    with torch.no_grad():
        model.logit_scale.fill_(np.log(50.0))
    ckpt = tmp / "clip.pt"
    torch.save(model.state_dict(), ckpt)
    names = tmp / "classes.txt"
    names.write_text("cat\ndog\ngold fish\n")
    templates = tmp / "templates.txt"
    templates.write_text("a photo of a {}.\n{} in the wild\nart of the {}.\n")
    return model.eval(), preprocess, config, ckpt, names, templates


def slow_zeroshot(model, classes, templates):
    """CLIP's recipe one prompt at a time: normalise each text embedding, average, normalise again."""
    tokenizer = open_clip.get_tokenizer("tiny-clip-test")
    rows = []
    with torch.no_grad():
        for name in classes:
            embs = [model.encode_text(tokenizer([t.format(name)]))[0] for t in templates]
            embs = [e / e.norm() for e in embs]
            mean = sum(embs) / len(embs)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_open_clip_rows_equal_direct_forward(images, tiny_clip, tmp_path):
    root, paths = images
    model, preprocess, config, ckpt, names, templates = tiny_clip
    out, fc = tmp_path / "f.h5", tmp_path / "fc.h5"
    common = ["--backend", "open_clip", "--checkpoint", ckpt, "--class_names", names, "--templates", templates]
    assert run_cli(root, out, config, *common, "--workers", 0, "--batch", 3) == 0
    assert run_cli("a", "b", config, *common, "--fc_save_path", fc) == 0
    data, attrs = read_all(out)
    x = torch.stack([preprocess(reference_rgb(root / p)) for p in paths])
    with torch.no_grad():
        f = model.encode_image(x)
    f = f / f.norm(dim=-1, keepdim=True)
    text = slow_zeroshot(model, ["cat", "dog", "gold fish"], templates.read_text().splitlines())
    logits = 50.0 * f @ text.T
    np.testing.assert_allclose(data["features"], f.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data["logits"], logits.numpy(), rtol=1e-3, atol=1e-3)
    head = read_head(fc)
    np.testing.assert_allclose(data["features"] @ head.weight.T + head.bias, data["logits"], rtol=1e-4, atol=1e-4)
    assert head.class_names == ["cat", "dog", "gold fish"]
    assert head.attrs["logit_scale"] == pytest.approx(50.0, rel=1e-5)
    assert attrs["backend"] == "open_clip" and json.loads(attrs["preprocess"])["size"] == [32, 32]


def test_open_clip_default_templates_are_clips(tiny_clip):
    from ood.backbones.open_clip_backend import IMAGENET_TEMPLATES, zeroshot_head

    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    model = tiny_clip[0]
    w, b, scale = zeroshot_head(model, open_clip.get_tokenizer("tiny-clip-test"), ["cat", "dog"],
                                classes_per_batch=1)
    text = slow_zeroshot(model, ["cat", "dog"], IMAGENET_TEMPLATES)
    np.testing.assert_allclose(w / scale, text.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(b, np.zeros(2, np.float32))


def test_open_clip_without_class_names_has_no_head(images, tiny_clip, tmp_path, capsys):
    root, _ = images
    _, _, config, ckpt, _, _ = tiny_clip
    common = ["--backend", "open_clip", "--checkpoint", ckpt]
    assert run_cli(root, tmp_path / "f.h5", config, *common, "--workers", 0) == 0
    assert "logits" not in read_all(tmp_path / "f.h5")[0]
    assert run_cli("a", "b", config, *common, "--fc_save_path", tmp_path / "fc.h5") == 2
    assert "--class_names" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- mmpretrain

MM_CONFIG = """
model = dict(
    type='ImageClassifier',
    backbone=dict(type='VisionTransformer', arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=64), img_size=32, patch_size=8, out_type='cls_token'),
    neck=None,
    head=dict(type='VisionTransformerClsHead', num_classes=5, in_channels=32,
              loss=dict(type='CrossEntropyLoss')),
    data_preprocessor=dict(mean=[127.5, 120.0, 110.0], std=[60.0, 61.0, 62.0], to_rgb=True))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=40, edge='short', backend='pillow'),
    dict(type='CenterCrop', crop_size=32),
    dict(type='PackInputs'),
]
"""


@pytest.fixture(scope="module")
def tiny_mm(tmp_path_factory):
    pytest.importorskip("mmpretrain", reason="mmpretrain not installed (pip install 'ood[mmpretrain]')")
    import warnings

    from mmpretrain import get_model

    tmp = tmp_path_factory.mktemp("mm")
    config = tmp / "tiny_vit.py"
    config.write_text(textwrap.dedent(MM_CONFIG))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model(str(config)).eval()
    for p in model.head.parameters():  # mmpretrain initialises the ViT head to zeros
        torch.nn.init.normal_(p)
    ckpt = tmp / "vit.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": list("abcde")}}}, ckpt)
    return model, config, ckpt


def mm_reference(model, config, root, paths):
    """mmpretrain's own inference: its test pipeline from the file, its data preprocessor, the head."""
    from mmengine.dataset import Compose, pseudo_collate
    from mmpretrain.registry import TRANSFORMS
    from mmengine.config import Config

    pipeline = Compose([TRANSFORMS.build(t) for t in Config.fromfile(str(config)).test_pipeline])
    batch = pseudo_collate([pipeline({"img_path": str(root / p)}) for p in paths])
    with torch.no_grad():
        x = model.data_preprocessor(batch, False)["inputs"]
        feats = model.extract_feat(x)
        return model.head.pre_logits(feats).numpy(), model.head(feats).numpy()


def test_mmpretrain_rows_equal_its_own_inference(tmp_path, tiny_mm):
    model, config, ckpt = tiny_mm
    root = tmp_path / "png"
    paths = [p for p in make_images(root, n=8) if p.endswith(".png")]  # PNG: PIL and cv2 decode alike
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p} {i % 5}\n" for i, p in enumerate(paths)))
    out, fc = tmp_path / "f.h5", tmp_path / "fc.h5"
    common = ["--backend", "mmpretrain", "--checkpoint", ckpt]
    assert run_cli(root, out, config, *common, "--img_list", lst, "--workers", 0, "--batch", 3) == 0
    assert run_cli("a", "b", config, *common, "--fc_save_path", fc) == 0
    data, attrs = read_all(out)
    features, logits = mm_reference(model, config, root, paths)
    np.testing.assert_allclose(data["features"], features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data["logits"], logits, rtol=1e-4, atol=1e-4)
    head = read_head(fc)
    np.testing.assert_allclose(data["features"] @ head.weight.T + head.bias, data["logits"], rtol=1e-4, atol=1e-4)
    assert head.class_names == list("abcde")
    pre = json.loads(attrs["preprocess"])
    assert pre["size"] == [32, 32] and pre["to_rgb"] and pre["mean"] == pytest.approx([0.5, 120 / 255, 110 / 255])


def test_mmpretrain_wrong_checkpoint_is_an_error(tmp_path, tiny_mm, capsys):
    _, config, _ = tiny_mm
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.nothing": torch.zeros(1)}}, bad)
    root = tmp_path / "imgs"
    make_images(root, n=2)
    assert run_cli(root, tmp_path / "f.h5", config, "--backend", "mmpretrain", "--checkpoint", bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(bad) in err
