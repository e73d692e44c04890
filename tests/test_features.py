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


# --------------------------------------------------------------------------------------------- pickles, writes


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_of_arrays_and_containers_load(tmp_path, protocol):
    x = np.random.default_rng(4).normal(size=(6, 1, 5)).astype(np.float16)
    obj = [x, {"b": np.arange(3), "s": {1, 2}, "t": (np.float32(2.5), "name", b"raw")}, np.dtype("int8")]
    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    from ood.features import load_pickle

    got = load_pickle(tmp_path / "a.pkl")
    np.testing.assert_array_equal(got[0], x)
    assert got[1]["s"] == {1, 2} and got[1]["t"][1:] == ("name", b"raw") and got[2] == np.dtype("int8")
    with open(tmp_path / "f.pkl", "wb") as f:
        pickle.dump(x, f, protocol=protocol)
    np.testing.assert_array_equal(FeatureFile(tmp_path / "f.pkl").read(), x[:, 0])


def test_pickles_written_by_numpy_1_load(tmp_path):
    """ViM's and GEN's pickles name numpy.core.multiarray (numpy 1); numpy 2 calls it numpy._core."""
    w, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(3, np.float32)
    data = pickle.dumps([w, b], protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "fc.pkl").write_bytes(data)
    head = read_head(tmp_path / "fc.pkl")
    np.testing.assert_array_equal(head.weight, w)
    np.testing.assert_array_equal(head.bias, b)


class _Payload:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("make, refused", [
    (lambda m: _Payload(open, str(m), "w"), "io.open"),
    (lambda m: [np.zeros(2), _Payload(eval, f"open({str(m)!r}, 'w')")], "builtins.eval"),
    (lambda m: np.ma.masked_array([1.0, 2.0], mask=[0, 1]), "numpy.ma.core"),
    (lambda m: __import__("torch").zeros(3), "torch"),
])
def test_crafted_pickles_are_refused(tmp_path, make, refused):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(make(marker), f)
    with pytest.raises(FeatureFileError, match=r"evil\.pkl: refused: it refers to " + refused.replace(".", r"\.")):
        FeatureFile(tmp_path / "evil.pkl")
    with pytest.raises(FeatureFileError, match="refused"):
        read_head(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_a_failed_write_stops_every_later_write(tmp_path):
    """The first failed write is kept and raised at the next flush; nothing more reaches the file, and the
    partial file still holds the rows committed before, which --resume continues."""
    import errno

    from ood.features import WriteGuard

    x = np.random.default_rng(5).normal(size=(30, 4)).astype(np.float32)
    w = FeatureWriter(tmp_path / "g.h5", 30, 4)
    w.append(x[:10], labels=np.arange(10), paths=[str(i) for i in range(10)])
    size = (tmp_path / "g.h5.partial").stat().st_size
    real_file = w.io.f
    calls = []

    class Full:  # a disk with no room left
        def write(self, data):
            calls.append(len(data))
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(real_file, name)

    w.io.f = Full()
    with pytest.raises(OSError, match="No space left on device while writing; it keeps its first 10 rows") as e:
        w.append(x[10:20], labels=np.arange(10, 20), paths=[str(i) for i in range(10, 20)])
    assert e.value.filename == str(tmp_path / "g.h5.partial")
    n = len(calls)
    assert n == 1 and isinstance(w.io.error, OSError)
    w.io.write(b"more")  # dropped, not attempted
    assert len(calls) == n
    w.abort()  # closes without raising and without writing
    assert len(calls) == n
    assert (tmp_path / "g.h5.partial").stat().st_size == size
    w = FeatureWriter(tmp_path / "g.h5", 30, 4, resume=True)
    assert isinstance(w.io, WriteGuard) and w.rows == 10
    w.append(x[10:], labels=np.arange(10, 30), paths=[str(i) for i in range(10, 30)])
    w.close()
    np.testing.assert_array_equal(FeatureFile(tmp_path / "g.h5").read(), x)


def test_resume_refuses_another_run(tmp_path):
    w = FeatureWriter(tmp_path / "r.h5", 8, 4, 3, attrs={"model": "a", "preprocess": {"size": 32}})
    w.abort()
    with pytest.raises(FeatureFileError, match="it was made with model='a', this run has model='b'"):
        FeatureWriter(tmp_path / "r.h5", 8, 4, 3, attrs={"model": "b", "preprocess": {"size": 32}}, resume=True,
                      resume_keys=("model", "preprocess"))
    with pytest.raises(FeatureFileError, match="3 logits a row, this run has 5"):
        FeatureWriter(tmp_path / "r.h5", 8, 4, 5, attrs={"model": "a"}, resume=True, resume_keys=("model",))
    with pytest.raises(FeatureFileError, match="width 4, this run has 8 rows of width 6"):
        FeatureWriter(tmp_path / "r.h5", 8, 6, 3, resume=True)
    w = FeatureWriter(tmp_path / "r.h5", 8, 4, 3, attrs={"model": "a"}, resume=True, resume_keys=("model",))
    assert w.resumed and w.rows == 0
    w.abort()


def test_unreadable_partial_small_restarts_large_is_named(tmp_path):
    (tmp_path / "s.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 30)
    w = FeatureWriter(tmp_path / "s.h5", 2, 2, resume=True)
    assert not w.resumed and "starting over" in w.restarted
    w.append(np.ones((2, 2), np.float32))
    w.close()
    (tmp_path / "b.h5.partial").write_bytes(b"\0" * 100_000)
    with pytest.raises(FeatureFileError, match=r"b\.h5\.partial: cannot resume: .*delete it"):
        FeatureWriter(tmp_path / "b.h5", 2, 2, resume=True)
    assert (tmp_path / "b.h5.partial").stat().st_size == 100_000


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    w = FeatureWriter(tmp_path / "l.h5", 2, 2)
    with pytest.raises(FeatureFileError, match="another process is writing"):
        FeatureWriter(tmp_path / "l.h5", 2, 2, resume=True)
    w.abort()
