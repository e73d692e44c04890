"""extract_features.py with timm: stored rows equal a direct forward pass, heads, inputs, resume, bad images."""
import hashlib
import json
import pickle

import h5py
import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image
from torch import nn

from ood.backbones import create_backbone, linear_params
from ood.extract import main
from ood.features import FeatureFile, FeatureWriter, read_head

MODES = ("RGB", "L", "RGBA", "P")


def make_images(root, n=12, classes=("cat", "dog"), seed=0):
    """n images in class folders, alternating PNG / JPEG, modes RGB, L, RGBA, P, and varied sizes."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        h, w = 24 + 5 * i, 40 - i
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mode = MODES[i % len(MODES)]
        img = rgb.convert("P") if mode == "P" else rgb.convert(mode)
        ext = ".png" if i % 2 or mode in ("RGBA", "P") else ".jpg"
        path = folder / f"img {i}{ext}"  # a space in every name
        img.save(path)
        paths.append(path.relative_to(root).as_posix())
    return sorted(paths)


def reference_rgb(path):
    """The decoding every extractor should use: PIL, converted to RGB."""
    with Image.open(path) as img:
        return img.convert("RGB")


def save_timm_checkpoint(tmp_path, name="test_resnet", seed=0, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def read_all(path):
    with h5py.File(path, "r") as h5:
        out = {k: h5[k][()] for k in h5 if isinstance(h5[k], h5py.Dataset)}
        return out, dict(h5.attrs)


def run_cli(*args):
    """extract_features.py on the CPU; random weights on purpose unless a checkpoint (or --pretrained) is given."""
    argv = [str(a) for a in args]
    chosen = {"--checkpoint", "--pretrained", "--random_init"} & set(argv)
    return main(argv + ["--device", "cpu", "--quiet"] + ([] if chosen else ["--random_init"]))


def test_random_weights_need_random_init(folder, tmp_path, capsys):
    root, _ = folder
    assert main([str(root), str(tmp_path / "x.h5"), "resnet18", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "neither --checkpoint nor --pretrained" in err and "--random_init" in err
    assert not (tmp_path / "x.h5").exists()


def test_random_init_seed_is_stored_and_resume_checks_it(folder, tmp_path):
    import h5py
    root, _ = folder
    out = tmp_path / "r.h5"
    assert run_cli(root, out, "resnet18", "--num_classes", "3", "--random_init", "--seed", "4", "--resize", "32") == 0
    with h5py.File(out) as f:
        assert int(f.attrs["random_init_seed"]) == 4 and "seed 4" in f.attrs["weights"]
        first = f["features"][:]
    assert run_cli(root, out, "resnet18", "--num_classes", "3", "--random_init", "--seed", "4", "--resize", "32",
                   "--overwrite") == 0
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["features"][:], first)  # one seed, one model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, make_images(root)


@pytest.fixture(scope="module")
def timm_model(tmp_path_factory):
    return save_timm_checkpoint(tmp_path_factory.mktemp("ckpt"))


def direct_timm(model, root, paths, transform):
    x = torch.stack([transform(reference_rgb(root / p)) for p in paths])
    with torch.no_grad():
        h = model.forward_features(x)
        return model.forward_head(h, pre_logits=True).numpy(), model(x).numpy()


def test_timm_folder_rows_equal_direct_forward(folder, timm_model, tmp_path):
    root, paths = folder
    model, ckpt = timm_model
    out = tmp_path / "feat.h5"
    assert run_cli(root, out, "test_resnet", "--checkpoint", ckpt, "--batch", 5, "--workers", 2) == 0
    data, attrs = read_all(out)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model), is_training=False)
    features, logits = direct_timm(model, root, paths, transform)
    assert [p.decode() for p in data["paths"]] == paths
    np.testing.assert_allclose(data["features"], features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data["logits"], logits, rtol=1e-4, atol=1e-4)
    assert data["features"].dtype == np.float32 and data["labels"].dtype == np.int64
    # class folders sorted: cat = 0, dog = 1
    np.testing.assert_array_equal(data["labels"], [0 if p.startswith("cat/") else 1 for p in paths])
    assert [c.decode() for c in data["classes"]] == ["cat", "dog"]
    assert attrs["complete"] and attrs["format"] == "ood-features" and attrs["version"] == 1
    assert attrs["model"] == "test_resnet" and attrs["backend"] == "timm"
    assert attrs["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    pre = json.loads(attrs["preprocess"])
    assert pre["size"] == [160, 160] and pre["mean"] == list(model.pretrained_cfg["mean"])
    assert "timm" in json.loads(attrs["library_versions"]) and attrs["data_root"] == str(root)
    assert not (tmp_path / "feat.h5.partial").exists()


def test_resize_is_vim_preprocessing(folder, timm_model, tmp_path):
    root, paths = folder
    model, ckpt = timm_model
    out = tmp_path / "feat.h5"
    assert run_cli(root, out, "test_resnet", "--checkpoint", ckpt, "--resize", 48, "--workers", 0) == 0
    data, attrs = read_all(out)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)

    def vim(img):  # resize to 48 x 48, bilinear with antialias as PIL, to [0, 1], ImageNet mean/std
        arr = np.asarray(img.resize((48, 48), Image.BILINEAR), dtype=np.float32) / 255
        return (torch.from_numpy(arr).permute(2, 0, 1) - mean) / std

    features, logits = direct_timm(model, root, paths, vim)
    np.testing.assert_allclose(data["features"], features, rtol=1e-3, atol=2e-3)
    assert json.loads(attrs["preprocess"])["size"] == [48, 48]


def test_fc_file_reproduces_logits(folder, timm_model, tmp_path):
    root, _ = folder
    model, ckpt = timm_model
    out, fc, pkl = tmp_path / "f.h5", tmp_path / "fc.h5", tmp_path / "fc.pkl"
    assert run_cli(root, out, "test_resnet", "--checkpoint", ckpt, "--resize", 40, "--workers", 0) == 0
    assert run_cli("a", "b", "test_resnet", "--checkpoint", ckpt, "--fc_save_path", fc) == 0
    assert run_cli("a", "b", "test_resnet", "--checkpoint", ckpt, "--fc_save_path", pkl) == 0
    with FeatureFile(out) as f:
        feats, logits = f.read("features"), f.read("logits")
    head = read_head(fc)
    np.testing.assert_allclose(feats @ head.weight.T + head.bias, logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(head.weight, model.get_classifier().weight.detach().numpy())
    with open(pkl, "rb") as fh:
        w, b = pickle.load(fh)
    np.testing.assert_array_equal(w, head.weight)
    np.testing.assert_array_equal(b, head.bias)
    assert run_cli("a", "b", "test_resnet", "--checkpoint", ckpt, "--fc_save_path", fc) == 2  # no --overwrite


def test_conv_head_read_as_matrix(folder, tmp_path):
    """BiT-style ResNetV2: the classifier is a 1x1 convolution; the fc file still gives the logits."""
    root, _ = folder
    model, ckpt = save_timm_checkpoint(tmp_path, "resnetv2_18", num_classes=5)
    assert isinstance(model.get_classifier(), nn.Conv2d)
    args = ["resnetv2_18", "--checkpoint", ckpt, "--num_classes", 5, "--resize", 32, "--workers", 0]
    assert run_cli(root, tmp_path / "f.h5", *args) == 0
    assert run_cli("a", "b", *args, "--fc_save_path", tmp_path / "fc.h5") == 0
    with FeatureFile(tmp_path / "f.h5") as f:
        feats, logits = f.read("features"), f.read("logits")
    head = read_head(tmp_path / "fc.h5")
    assert head.weight.shape == (5, feats.shape[1])
    np.testing.assert_allclose(feats @ head.weight.T + head.bias, logits, rtol=1e-4, atol=1e-4)


def test_linear_params_of_any_affine_head():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 3)).eval()
    layer[0].running_mean.normal_()
    layer[0].running_var.uniform_(0.5, 2)
    w, b = linear_params(layer, 6)
    x = torch.randn(10, 6)
    with torch.no_grad():
        np.testing.assert_allclose(x.numpy() @ w.T + b, layer(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not an affine map"):
        linear_params(nn.Sequential(nn.Linear(6, 3), nn.ReLU()), 6)


def test_list_input_labels_and_none(folder, timm_model, tmp_path):
    root, paths = folder
    _, ckpt = timm_model
    chosen = paths[::-1][:5]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p} {i + 3}\n" for i, p in enumerate(chosen)))
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0, "--img_list", lst]
    assert run_cli(root, tmp_path / "a.h5", *common) == 0
    data, attrs = read_all(tmp_path / "a.h5")
    assert [p.decode() for p in data["paths"]] == chosen
    np.testing.assert_array_equal(data["labels"], np.arange(5) + 3)
    assert attrs["list_file"] == str(lst)
    assert run_cli(root, tmp_path / "b.h5", *common, "--labels", "none") == 0
    np.testing.assert_array_equal(read_all(tmp_path / "b.h5")[0]["labels"], -np.ones(5))
    # the same images give the same rows whether listed or scanned
    assert run_cli(root, tmp_path / "c.h5", *common[:-2]) == 0
    full = read_all(tmp_path / "c.h5")[0]
    idx = [paths.index(p) for p in chosen]
    np.testing.assert_allclose(data["features"], full["features"][idx], rtol=1e-5, atol=1e-5)


def test_flat_folder_gets_minus_one_and_float16(tmp_path, timm_model):
    _, ckpt = timm_model
    root = tmp_path / "flat"
    make_images(root, n=4, classes=("",))
    out = tmp_path / "f.h5"
    assert run_cli(root, out, "test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0,
                   "--dtype", "float16") == 0
    data, _ = read_all(out)
    np.testing.assert_array_equal(data["labels"], -np.ones(4))
    assert data["features"].dtype == np.float16 and data["logits"].dtype == np.float32


def corrupt(path):
    """Keep the first bytes of an image: a truncated file the decoder rejects."""
    path.write_bytes(path.read_bytes()[:60])


def test_resume_after_interruption_gives_same_file(folder, timm_model, tmp_path):
    root0, paths = folder
    _, ckpt = timm_model
    root = tmp_path / "imgs"
    make_images(root)
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0, "--batch", 3]
    assert run_cli(root, tmp_path / "ref.h5", *common) == 0
    good = (root / paths[7]).read_bytes()
    corrupt(root / paths[7])
    out = tmp_path / "out.h5"
    assert run_cli(root, out, *common) == 2  # stops at the corrupt image, keeps the rows before its batch
    partial = tmp_path / "out.h5.partial"
    assert partial.exists() and not out.exists()
    with h5py.File(partial, "r") as h5:
        assert h5.attrs["rows_written"] == 6 and not h5.attrs["complete"]
    (root / paths[7]).write_bytes(good)
    assert run_cli(root, out, *common, "--resume") == 0
    ref, ref_attrs = read_all(tmp_path / "ref.h5")
    got, got_attrs = read_all(out)
    assert set(ref) == set(got)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])
    for key in ("model", "preprocess", "checkpoint_sha256", "rows_written", "complete"):
        assert got_attrs[key] == ref_attrs[key]


def test_resume_refuses_a_different_run(folder, timm_model, tmp_path):
    _, ckpt = timm_model
    root = tmp_path / "imgs"
    paths = make_images(root)
    corrupt(root / paths[4])
    common = ["--checkpoint", ckpt, "--workers", 0, "--batch", 2]
    out = tmp_path / "out.h5"
    assert run_cli(root, out, "test_resnet", *common, "--resize", 32) == 2
    assert run_cli(root, out, "test_resnet", *common, "--resize", 40, "--resume") == 2
    assert (tmp_path / "out.h5.partial").exists()


def test_corrupt_image_named_or_skipped(folder, timm_model, tmp_path, capsys):
    _, ckpt = timm_model
    root = tmp_path / "imgs"
    paths = make_images(root)
    corrupt(root / paths[2])
    (root / paths[9]).write_bytes(b"not an image at all")
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 2, "--batch", 4]
    assert run_cli(root, tmp_path / "a.h5", *common) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(root / paths[2]) in err and "Traceback" not in err
    assert run_cli(root, tmp_path / "b.h5", *common, "--skip_bad") == 0
    data, attrs = read_all(tmp_path / "b.h5")
    kept = [p for i, p in enumerate(paths) if i not in (2, 9)]
    assert [p.decode() for p in data["paths"]] == kept
    assert [p.decode() for p in data["skipped_paths"]] == [paths[2], paths[9]]
    assert attrs["num_skipped"] == 2 and len(data["features"]) == len(kept) == len(data["labels"])


def test_existing_output_needs_overwrite(folder, timm_model, tmp_path, capsys):
    root, _ = folder
    _, ckpt = timm_model
    out = tmp_path / "f.h5"
    out.write_bytes(b"keep me")
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0]
    assert run_cli(root, out, *common) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert run_cli(root, out, *common, "--overwrite") == 0
    assert FeatureFile(out).n == 12


@pytest.mark.parametrize("args, message", [
    (["no_such_model_xyz"], "Unknown model"),
    (["test_resnet", "--checkpoint", "missing.pth"], "no such checkpoint"),
    (["test_resnet", "--class_names", "x.txt"], "does not apply to the timm backend"),
    (["test_resnet", "--img_list", "missing.txt"], "missing.txt"),
])
def test_bad_arguments_one_line(folder, tmp_path, capsys, args, message):
    root, _ = folder
    assert run_cli(root, tmp_path / "f.h5", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_checkpoint_of_another_model_is_an_error(folder, tmp_path, capsys):
    root, _ = folder
    _, ckpt = save_timm_checkpoint(tmp_path, "test_resnet", num_classes=3)
    assert run_cli(root, tmp_path / "f.h5", "test_resnet", "--checkpoint", ckpt) == 2
    assert "--num_classes" in capsys.readouterr().err


def test_backbone_without_head_stores_no_logits(folder, tmp_path):
    root, _ = folder
    assert run_cli(root, tmp_path / "f.h5", "test_resnet", "--num_classes", 0, "--resize", 32, "--workers", 0) == 0
    data, _ = read_all(tmp_path / "f.h5")
    assert "logits" not in data and data["features"].shape == (12, create_backbone(
        "timm", "test_resnet", num_classes=0).model.num_features)


def test_keyboard_interrupt_then_resume(timm_model, tmp_path, monkeypatch):
    """Stopped while writing the third batch; a bad image skipped in the second stays recorded once."""
    _, ckpt = timm_model
    root = tmp_path / "imgs"
    paths = make_images(root)
    corrupt(root / paths[5])
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0, "--batch", 4, "--skip_bad"]
    assert run_cli(root, tmp_path / "ref.h5", *common) == 0
    original = FeatureWriter.append
    calls = []

    def append_then_stop(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureWriter, "append", append_then_stop)
    out = tmp_path / "out.h5"
    assert run_cli(root, out, *common) == 130
    with h5py.File(tmp_path / "out.h5.partial", "r") as h5:
        assert h5.attrs["rows_written"] == 7 and h5.attrs["inputs_done"] == 8
    monkeypatch.setattr(FeatureWriter, "append", original)
    assert run_cli(root, out, *common, "--resume") == 0
    ref, got = read_all(tmp_path / "ref.h5")[0], read_all(out)[0]
    assert [p.decode() for p in got["skipped_paths"]] == [paths[5]] and set(got) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])


def test_resume_drops_a_half_committed_batch(timm_model, tmp_path, monkeypatch):
    """Stopped after a batch's rows were written but before it was committed: its rows are written again."""
    import ood.extract

    _, ckpt = timm_model
    root = tmp_path / "imgs"
    paths = make_images(root)
    corrupt(root / paths[5])
    common = ["test_resnet", "--checkpoint", ckpt, "--resize", 32, "--workers", 0, "--batch", 4, "--skip_bad"]
    assert run_cli(root, tmp_path / "ref.h5", *common) == 0

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ood.extract, "_append_skipped", stop)
    out = tmp_path / "out.h5"
    assert run_cli(root, out, *common) == 130
    with h5py.File(tmp_path / "out.h5.partial", "r") as h5:
        assert h5.attrs["rows_written"] == 7 and h5.attrs["inputs_done"] == 4
    monkeypatch.undo()
    assert run_cli(root, out, *common, "--resume") == 0
    ref, got = read_all(tmp_path / "ref.h5")[0], read_all(out)[0]
    assert set(got) == set(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name])
