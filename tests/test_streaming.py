"""The train split streamed from its file block by block gives the figures of the same split held in memory."""
import numpy as np
import pytest

from ood import stats
from ood.detectors import create, list_detectors, get_detector_class
from ood.features import FeatureFile, write_features
from ood.split import Split

from .helpers import make_problem


@pytest.fixture
def splits(tmp_path, monkeypatch):
    monkeypatch.setattr("ood.split.BLOCK_ELEMENTS", 16 * 37)  # many small blocks, uneven at the end
    p = make_problem(seed=11, n_train=300)
    x, y = p["arrays"]["train"]
    write_features(tmp_path / "train.h5", x, labels=y)
    streamed = Split("train", FeatureFile(tmp_path / "train.h5"), p["head"])
    streamed.keep_features = streamed.keep_logits = False
    return p, streamed


def test_streamed_split_never_holds_its_features(splits):
    p, streamed = splits
    streamed.check_features()
    stats.moments(streamed)
    stats.quantile(streamed, 0.9)
    stats.logit_stats(streamed)
    assert "features" not in streamed._memo and "logits" not in streamed._memo


def test_quantile_of_a_streamed_split_is_numpys(splits, monkeypatch):
    p, streamed = splits
    monkeypatch.setattr(stats, "_CHUNK", 1000)  # force the bracketing path on 4,800 values
    x = p["arrays"]["train"][0]
    for q in (0.0, 0.5, 0.9, 0.99, 1.0):
        assert stats.quantile(streamed, q) == float(np.quantile(x, q))


FEATURE_DETECTORS = [m for m in list_detectors() if not set(get_detector_class(m).requires) - {"train_labels"}
                     and m not in ("temp_scaling",)]


@pytest.mark.parametrize("method", FEATURE_DETECTORS)
def test_streamed_fit_equals_in_memory_fit(splits, method):
    p, streamed = splits
    params = {"k": 5} if method in ("knn", "nnguide") else {}
    held = create(method, **params).fit(p["train"]).score(p["ood"])
    got = create(method, **params).fit(streamed).score(p["ood"])
    np.testing.assert_allclose(got, held, rtol=1e-9, atol=1e-9)
