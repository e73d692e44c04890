"""The HDF5 feature file and fc file: round trips, lazy block reads, ViM/GEN pickles, refusals."""
import pickle

import h5py
import numpy as np
import pytest

from ood.features import (FeatureFile, FeatureFileError, FeatureWriter, read_head, write_fc, write_features)


def test_round_trip_with_all_columns(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2500, 6)).astype(np.float32)
    z = rng.normal(size=(2500, 4)).astype(np.float32)
    y = rng.integers(-1, 4, 2500)
    paths = [f"dir with space/img_{i}.JPEG" for i in range(2500)]
    write_features(tmp_path / "a.h5", x, z, y, paths, extra={"superclass": ["s"] * 2500}, model="m")
    f = FeatureFile(tmp_path / "a.h5")
    assert (f.n, f.dim, f.num_classes) == (2500, 6, 4)
    np.testing.assert_array_equal(f.read("features"), x)
    np.testing.assert_array_equal(f.read("logits", 10, 20), z[10:20])
    np.testing.assert_array_equal(f.labels(), y)
    assert list(f.paths()) == paths
    assert f.read("superclass", 0, 2).tolist() == ["s", "s"]
    blocks = list(f.blocks(rows=1000))
    assert [(lo, hi) for lo, hi, _ in blocks] == [(0, 1000), (1000, 2000), (2000, 2500)]
    np.testing.assert_array_equal(np.concatenate([b for _, _, b in blocks]), x)
    with h5py.File(tmp_path / "a.h5") as h5:
        assert h5.attrs["format"] == "ood-features" and h5.attrs["version"] == 1
        assert bool(h5.attrs["complete"]) and h5.attrs["model"] == "m"
        assert h5["features"].chunks[0] == 1000
        assert h5["features"].dtype == np.float32 and h5["labels"].dtype == np.int64


def test_float16_features(tmp_path):
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)
    write_features(tmp_path / "h.h5", x, dtype="float16")
    got = FeatureFile(tmp_path / "h.h5").read()
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, x, rtol=1e-3)


def test_fc_file_round_trip(tmp_path):
    W = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_fc(tmp_path / "fc.h5", W, np.ones(3), class_names=["a", "b", "c"], model="m")
    head = read_head(tmp_path / "fc.h5")
    np.testing.assert_array_equal(head.weight, W)
    assert head.class_names == ["a", "b", "c"] and head.attrs["model"] == "m"


def test_vim_pickles(tmp_path):
    x = np.random.default_rng(2).normal(size=(5, 1, 8)).astype(np.float32)
    with open(tmp_path / "f.pkl", "wb") as f:
        pickle.dump(x, f)
    with open(tmp_path / "fc.pkl", "wb") as f:
        pickle.dump([np.ones((3, 8)), np.zeros(3)], f)
    ff = FeatureFile(tmp_path / "f.pkl")
    assert (ff.n, ff.dim) == (5, 8)
    np.testing.assert_array_equal(ff.read(), x.squeeze())
    assert read_head(tmp_path / "fc.pkl").weight.shape == (3, 8)


def test_writer_resumes_after_interruption(tmp_path):
    x = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    w = FeatureWriter(tmp_path / "r.h5", 30, 4)
    w.append(x[:10], labels=np.arange(10), paths=[str(i) for i in range(10)])
    w.abort()
    assert not (tmp_path / "r.h5").exists()
    with pytest.raises(FeatureFileError, match="--resume"):
        FeatureFile(tmp_path / "r.h5")
    w = FeatureWriter(tmp_path / "r.h5", 30, 4, resume=True)
    assert w.rows == 10
    w.append(x[10:], labels=np.arange(10, 30), paths=[str(i) for i in range(10, 30)])
    w.close()
    f = FeatureFile(tmp_path / "r.h5")
    np.testing.assert_array_equal(f.read(), x)
    np.testing.assert_array_equal(f.labels(), np.arange(30))


def test_existing_output_is_not_overwritten(tmp_path):
    write_features(tmp_path / "e.h5", np.zeros((2, 2), np.float32))
    with pytest.raises(FeatureFileError, match="overwrite"):
        FeatureWriter(tmp_path / "e.h5", 2, 2)


def test_refusals_name_the_file(tmp_path):
    with pytest.raises(FeatureFileError, match="missing.h5: no such file"):
        FeatureFile(tmp_path / "missing.h5")
    write_features(tmp_path / "t.h5", np.zeros((4000, 64), np.float32))
    data = (tmp_path / "t.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(FeatureFileError, match="trunc.h5"):
        FeatureFile(tmp_path / "trunc.h5").read()
    write_features(tmp_path / "inc.h5", np.zeros((2, 2), np.float32))
    with h5py.File(tmp_path / "inc.h5", "r+") as h5:
        h5.attrs["complete"] = False
    with pytest.raises(FeatureFileError, match="inc.h5: incomplete"):
        FeatureFile(tmp_path / "inc.h5")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(FeatureFileError, match="junk.pkl"):
        FeatureFile(tmp_path / "junk.pkl")
