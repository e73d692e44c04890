"""Detectors on valid but extreme inputs: finite scores where the definition gives one (zero rows, rows at the
mean), no float32 overflow for huge features, degenerate train statistics named in a note or refused with one
line. Expected values are written here in float64 from each method's definition."""
import numpy as np
import pytest

import ood
from ood.errors import InputError

C, D = 5, 12


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(C, D)), rng.normal(size=C)
    x = np.abs(rng.normal(size=(200, D))) + 0.1
    return {"W": W, "b": b, "x": x, "y": rng.integers(0, C, 200), "q": np.abs(rng.normal(size=(30, D)))}


def logsumexp(z):
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


def fit(name, d, x=None, y=None, **params):
    return ood.create(name, **params).fit(d["x"] if x is None else x, labels=d["y"] if y is None else y,
                                          head=(d["W"], d["b"]))


@pytest.mark.parametrize("name", ["ash_s", "scale"])
def test_shaping_scores_a_zero_row_as_the_energy_of_the_bias(data, name):
    q = data["q"].copy()
    q[4] = 0
    s = fit(name, data).score(q)
    assert np.isfinite(s).all()
    assert s[4] == pytest.approx(logsumexp(data["b"].astype(np.float32).astype(np.float64)), rel=1e-6)


def test_nusa_scores_a_zero_row_zero(data):
    q = data["q"].copy()
    q[2] = 0
    s = fit("nusa", data).score(q)
    assert s[2] == 0 and np.isfinite(s).all()


def test_nci_and_neco_at_the_train_mean(data):
    m = data["x"].astype(np.float32).astype(np.float64).mean(0)
    q = np.vstack([data["q"][:3], m]).astype(np.float32)
    nci = fit("nci", data, alpha=0.01).score(q)
    # the cosine term of a row at the mean is 0; what is left is alpha ||h||_1
    assert nci[3] == pytest.approx(0.01 * np.abs(q[3].astype(np.float64)).sum(), abs=2e-3)
    neco = fit("neco", data).score(q)
    assert np.isfinite(neco).all() and abs(neco[3]) < 1e-3 * np.abs(neco[:3]).max()


@pytest.mark.parametrize("name", ["knn", "nusa"])
def test_direction_scores_do_not_overflow_for_huge_features(data, name):
    """kNN and NuSA depend on directions only: features 1e19 times larger give the same scores."""
    small = fit(name, data, **({"k": 5} if name == "knn" else {})).score(data["q"])
    big = ood.create(name, **({"k": 5} if name == "knn" else {})).fit(
        data["x"] * 1e19, labels=data["y"], head=(data["W"], data["b"])).score(data["q"] * 1e19)
    np.testing.assert_allclose(big, small, rtol=1e-4, atol=1e-6)


def test_she_products_of_huge_features_stay_finite(data):
    x, q = data["x"] * 1e19, data["q"] * 1e19
    det = fit("she", data, x=x)
    s = det.score(q)
    pred = (q.astype(np.float32).astype(np.float64) @ data["W"].T + data["b"]).argmax(1)
    expected = [float(np.dot(q[i].astype(np.float32).astype(np.float64), det.means_[pred[i]].astype(np.float64)))
                for i in range(len(q))]
    assert np.isfinite(s).all()
    np.testing.assert_allclose(s, expected, rtol=1e-5)


def test_mahalanobis_scores_a_far_row_in_float64(data):
    det = fit("mahalanobis", data)
    q = np.vstack([data["q"][:2], np.full((1, D), 3e19)]).astype(np.float32)
    s = det.score(q)
    assert np.isfinite(s).all()
    P = det.L_.astype(np.float64) @ det.L_.astype(np.float64).T
    classes = det.classes_
    means = [data["x"][data["y"] == c].astype(np.float32).astype(np.float64).mean(0) for c in classes]
    h = q[2].astype(np.float64)
    expected = -min(float((h - mu) @ P @ (h - mu)) for mu in means)
    assert s[2] == pytest.approx(expected, rel=1e-3)


def test_rank_deficient_train_features_are_named(data):
    x = data["x"].copy()
    x[:, :3] = 0  # three dead features
    maha = fit("mahalanobis", data, x=x)
    centred = x - np.stack([x[data["y"] == c].mean(0) for c in range(C)])[data["y"]]
    rank = np.linalg.matrix_rank(centred.T @ centred)
    assert rank == D - 3
    assert any(f"rank {rank} of {D}" in n for n in maha.notes_)
    neco = fit("neco", data, x=x)
    assert any("3 of 12 features have zero train variance" in n for n in neco.notes_)
    assert np.isfinite(neco.score(data["q"])).all()


@pytest.mark.parametrize("name, params, x_of, y_of, message", [
    ("mahalanobis", {}, lambda x: np.ones_like(x), None, "do not vary"),
    ("neco", {}, lambda x: np.ones_like(x), None, "do not vary"),
    ("rmd", {}, None, lambda y: np.zeros_like(y), "at least two classes"),
    ("mahalanobis", {}, lambda x: x * 1e19, None, "too large for float32"),
    ("vim", {}, lambda x: x * 1e19, None, "too large for float32"),
])
def test_degenerate_train_statistics_are_refused(data, name, params, x_of, y_of, message):
    x = data["x"] if x_of is None else x_of(data["x"])
    y = data["y"] if y_of is None else y_of(data["y"])
    with pytest.raises(InputError, match=message):
        fit(name, data, x=x, y=y, **params)


def test_constant_clip_and_zeroed_head_are_named(data):
    vra = fit("vra", data, x=np.full_like(data["x"], 2.0))
    assert any("percentiles are equal (2)" in n for n in vra.notes_)
    dice = fit("dice", data, x=np.zeros_like(data["x"]))
    assert any("whole head is zeroed" in n for n in dice.notes_)
    np.testing.assert_allclose(dice.score(data["q"]), logsumexp(data["b"].astype(np.float32)), rtol=1e-6)


def test_one_train_row_a_class_has_no_within_class_covariance(data):
    x, y = data["x"][:C], np.arange(C)
    with pytest.raises(InputError, match="do not vary within their classes"):
        fit("mahalanobis", data, x=x, y=y)
    vim = ood.create("residual", dim=8).fit(x, head=(data["W"], data["b"]))
    assert any(f"rank {C} of {D}, no more than dim = 8" in n for n in vim.notes_)


def test_vim_with_no_train_variance_outside_its_principal_space_is_named(data):
    """Four train rows span at most four directions about u: the residual of every train row is rounding, so
    alpha comes from rounding; ViM still scores (by the residual), and says so."""
    vim = fit("vim", data, x=data["x"][:4], y=data["y"][:4], dim=4)
    assert any("no variance outside the 4 principal directions" in n and "float32 rounding" in n
               for n in vim.notes_)
    assert vim.residual_share_ < 1e-6 and np.isfinite(vim.score(data["q"])).all()
