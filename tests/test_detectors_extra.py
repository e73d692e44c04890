"""Every extra detector against a slow, obviously-correct float64 formula written here (one sample at a time,
after the peer's definition: OpenOOD's postprocessors, sklearn's PCA / EmpiricalCovariance), on random features."""
import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax
from sklearn.covariance import EmpiricalCovariance
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from ood.detectors import create, knn, list_detectors
from ood.features import Head
from ood.split import Split

from .helpers import assert_matches_slow, float64_arrays

EXTRA = ["temp_scaling", "odin", "knn", "nnguide", "ash_p", "ash_b", "ash_s", "scale", "vra", "dice", "she",
         "nci", "fdbd", "nusa", "neco", "rmd"]


def energy(z):
    return logsumexp(z)


def test_registry_has_every_extra_detector_with_a_grid_of_its_own_parameters():
    assert set(EXTRA) <= set(list_detectors())
    for name in EXTRA:
        det = create(name)
        for key, values in getattr(type(det), "grid", {}).items():
            assert key in det.params() and len(values) >= 2


@pytest.mark.parametrize("T", [1.0, 1000.0])
def test_odin_without_noise(problem, T):
    W, b, _, _ = float64_arrays(problem)
    assert_matches_slow(problem, "odin", lambda h: log_odds(softmax((W @ h + b) / T).max()), atol=1e-5, T=T)


def log_odds(p):
    return np.log(p) - np.log1p(-p)


def test_temp_scaling_fits_the_nll_minimum():
    rng = np.random.default_rng(3)
    C, D, n = 5, 8, 600
    centers = rng.normal(size=(C, D))
    y = rng.integers(0, C, n)
    x = (centers[y] + 1.5 * rng.normal(size=(n, D))).astype(np.float32)
    head = Head((3 * centers).astype(np.float32), rng.normal(size=C).astype(np.float32))
    train = Split.from_arrays("train", x, head, labels=y)
    z = x.astype(np.float64) @ head.weight.T.astype(np.float64) + head.bias

    def nll(T):
        return np.mean([logsumexp(zi / T) - zi[yi] / T for zi, yi in zip(z, y)])
    best = minimize_scalar(nll, bounds=(0.01, 100), method="bounded", options={"xatol": 1e-9}).x
    det = create("temp_scaling").fit(train)
    assert det.T_ == pytest.approx(best, rel=1e-4)
    assert abs(det.T_ - 1) > 0.05  # a case where fitting matters
    np.testing.assert_allclose(det.score(train), [log_odds(softmax(zi / best).max()) for zi in z], rtol=1e-4)


def test_temp_scaling_keeps_the_ranking_when_the_fitted_T_is_small():
    # an overfit model: NLL falls as T -> 0, and max softmax(z / T) is 1.0 in floating point for every row
    z = np.array([[30.0, 0.0, 0.0], [20.0, 0.0, 0.0], [10.0, 0.0, -1.0]], np.float32)
    head = Head(np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    scores = create("odin", T=1e-3).score(Split.from_arrays("s", z, head))
    assert scores[0] > scores[1] > scores[2]


def knn_distances(xtr, h):
    bank = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    q = h / np.linalg.norm(h)
    return np.sort([np.sqrt(np.sum((q - row) ** 2)) for row in bank])


@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_kth_distance(problem, k, monkeypatch):
    monkeypatch.setattr(knn, "faiss", None)
    monkeypatch.setattr(knn, "BANK_ROWS", 64)  # many blocks: the running top-k merge is exercised
    _, _, xtr, _ = float64_arrays(problem)
    assert_matches_slow(problem, "knn", lambda h: -knn_distances(xtr, h)[k - 1], rtol=1e-4, atol=1e-5, k=k)


def test_knn_ranks_as_openood_squared_distance(problem, monkeypatch):
    monkeypatch.setattr(knn, "faiss", None)
    _, _, xtr, _ = float64_arrays(problem)
    x = problem["arrays"]["ood"][0].astype(np.float64)
    openood = np.array([-knn_distances(xtr, h)[49] ** 2 for h in x])
    ours = create("knn", k=50).fit(problem["train"]).score(problem["ood"])
    assert (np.argsort(ours) == np.argsort(openood)).all()


def test_knn_smaller_k_reuses_the_larger_search(problem, monkeypatch):
    monkeypatch.setattr(knn, "faiss", None)
    big = create("knn", k=20).fit(problem["train"])
    big.score(problem["test"])
    small = create("knn", k=3).fit(problem["train"]).score(problem["test"])
    _, _, xtr, _ = float64_arrays(problem)
    want = [-knn_distances(xtr, h)[2] for h in problem["arrays"]["test"][0].astype(np.float64)]
    np.testing.assert_allclose(small, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(knn.faiss is None, reason="faiss is not installed")
def test_knn_faiss_path(problem):
    _, _, xtr, _ = float64_arrays(problem)
    assert_matches_slow(problem, "knn", lambda h: -knn_distances(xtr, h)[9], rtol=1e-4, atol=1e-5, k=10)


def test_knn_refuses_k_above_the_bank(problem):
    det = create("knn", k=10_000).fit(problem["train"])
    with pytest.raises(ValueError, match="bank holds 400"):
        det.score(problem["test"])


@pytest.mark.parametrize("k", [5, 100])
def test_nnguide_full_bank(problem, k, monkeypatch):
    monkeypatch.setattr(knn, "faiss", None)
    W, b, xtr, _ = float64_arrays(problem)
    bank = xtr / np.linalg.norm(xtr, axis=1, keepdims=True) * np.array([energy(W @ x + b) for x in xtr])[:, None]

    def slow(h):
        sims = np.sort(bank @ (h / np.linalg.norm(h)))[::-1]
        return sims[:k].mean() * energy(W @ h + b)
    assert_matches_slow(problem, "nnguide", slow, rtol=1e-4, k=k, alpha=1.0)


def test_nnguide_bank_is_an_alpha_share_of_at_least_k_rows(problem):
    assert create("nnguide", k=5, alpha=0.1).fit(problem["train"]).bank_.n == 40
    assert create("nnguide", k=100, alpha=0.01).fit(problem["train"]).bank_.n == 100


def ash_prune(h, percentile):
    k = len(h) - int(np.round(len(h) * percentile / 100))
    keep = np.argsort(-h, kind="stable")[:k]
    out = np.zeros_like(h)
    out[keep] = h[keep]
    return out, keep, k


@pytest.mark.parametrize("percentile", [65, 90])
def test_ash_p(problem, percentile):
    W, b, _, _ = float64_arrays(problem)
    assert_matches_slow(problem, "ash_p", lambda h: energy(W @ ash_prune(h, percentile)[0] + b), percentile=percentile)


@pytest.mark.parametrize("percentile", [65, 90])
def test_ash_b(problem, percentile):
    W, b, _, _ = float64_arrays(problem)

    def slow(h):
        _, keep, k = ash_prune(h, percentile)
        out = np.zeros_like(h)
        out[keep] = h.sum() / k
        return energy(W @ out + b)
    assert_matches_slow(problem, "ash_b", slow, percentile=percentile)


@pytest.mark.parametrize("percentile", [65, 90])
def test_ash_s(problem, percentile):
    W, b, _, _ = float64_arrays(problem)

    def slow(h):
        p, _, _ = ash_prune(h, percentile)
        return energy(W @ (p * np.exp(h.sum() / p.sum())) + b)
    assert_matches_slow(problem, "ash_s", slow, rtol=2e-5, percentile=percentile)


@pytest.mark.parametrize("percentile", [65, 85])
def test_scale(problem, percentile):
    W, b, _, _ = float64_arrays(problem)

    def slow(h):
        p, _, _ = ash_prune(h, percentile)
        return energy(W @ (h * np.exp(h.sum() / p.sum())) + b)
    assert_matches_slow(problem, "scale", slow, rtol=2e-5, percentile=percentile)


def test_vra(problem):
    W, b, xtr, _ = float64_arrays(problem)
    lo, hi = np.percentile(problem["arrays"]["train"][0].ravel(), [5, 95])
    assert_matches_slow(problem, "vra", lambda h: energy(W @ np.clip(h, lo, hi) + b), percentile_low=5, percentile_high=95)


@pytest.mark.parametrize("sparsity", [0.7, 0.9])
def test_dice(problem, sparsity):
    W, b, xtr, _ = float64_arrays(problem)
    contrib = xtr.mean(0)[None, :] * W
    masked = W * (contrib > np.percentile(contrib, 100 * sparsity))  # OpenOOD's p = 100 * sparsity
    assert_matches_slow(problem, "dice", lambda h: energy(masked @ h + b), rtol=1e-5, sparsity=sparsity)


def test_she(problem):
    W, b, xtr, ytr = float64_arrays(problem)
    pred = np.array([np.argmax(W @ x + b) for x in xtr])
    means = []
    for c in range(W.shape[0]):
        rows = xtr[(ytr == c) & (pred == c)]
        means.append(rows.mean(0) if len(rows) else xtr.mean(0))
    assert_matches_slow(problem, "she", lambda h: h @ means[np.argmax(W @ h + b)], rtol=1e-5)


def test_she_class_without_a_correct_train_sample_falls_back_to_the_train_mean(problem):
    p = problem["train"]
    W = p.head.weight.copy()
    W[0] = -100  # class 0 is never predicted
    train = Split.from_arrays("train", problem["arrays"]["train"][0], Head(W, p.head.bias),
                              labels=problem["arrays"]["train"][1])
    det = create("she").fit(train)
    np.testing.assert_allclose(det.means_[0], problem["arrays"]["train"][0].mean(0), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0001, 0.1])
def test_nci(problem, alpha):
    W, b, xtr, _ = float64_arrays(problem)
    m = xtr.mean(0)

    def slow(h):
        c = h - m
        return W[np.argmax(W @ h + b)] @ c / np.linalg.norm(c) + alpha * np.abs(h).sum()
    assert_matches_slow(problem, "nci", slow, rtol=1e-5, atol=1e-5, alpha=alpha)


def fdbd_openood(W, b, m, h):
    """OpenOOD's fDBD: the sum over all classes (the predicted one adds 0)."""
    z = W @ h + b
    p = np.argmax(z)
    return sum(abs(z[p] - z[c]) / np.linalg.norm(W[p] - W[c]) for c in range(len(z)) if c != p) / \
        np.linalg.norm(h - m)


@pytest.mark.parametrize("center", [True, False])
def test_fdbd_is_openood_over_c_minus_1(problem, center):
    W, b, xtr, _ = float64_arrays(problem)
    m = xtr.mean(0) if center else np.zeros(W.shape[1])
    assert_matches_slow(problem, "fdbd", lambda h: fdbd_openood(W, b, m, h) / (W.shape[0] - 1), rtol=1e-4, center=center)


def test_nusa(problem):
    W, b, _, _ = float64_arrays(problem)
    P = np.linalg.pinv(W) @ W
    assert_matches_slow(problem, "nusa", lambda h: np.linalg.norm(P @ h) / np.linalg.norm(h), rtol=1e-5)


def test_nusa_is_one_when_the_head_spans_the_features():
    rng = np.random.default_rng(1)
    head = Head(rng.normal(size=(12, 6)).astype(np.float32), np.zeros(12, np.float32))
    s = Split.from_arrays("x", rng.normal(size=(30, 6)).astype(np.float32), head)
    np.testing.assert_allclose(create("nusa").fit(s).score(s), 1.0, rtol=1e-5)


@pytest.mark.parametrize("params", [{}, {"dim": 3}, {"variance": 0.5}])
def test_neco_against_sklearn(problem, params):
    W, b, xtr, _ = float64_arrays(problem)
    ss = StandardScaler().fit(xtr)
    pca = PCA(xtr.shape[1]).fit(ss.transform(xtr))
    dim = params.get("dim") or int(np.argmax(np.cumsum(pca.explained_variance_ratio_) >= params.get("variance", 0.9)
                                              ) + 1)

    def slow(h):
        s = ss.transform(h[None])
        return np.linalg.norm(pca.transform(s)[0, :dim]) / np.linalg.norm(s) * (W @ h + b).max()
    det = assert_matches_slow(problem, "neco", slow, rtol=1e-4, atol=1e-5, **params)
    assert det.dim_ == dim


def test_rmd_as_openood(problem):
    W, b, xtr, ytr = float64_arrays(problem)
    C = W.shape[0]
    means = np.stack([xtr[ytr == c].mean(0) for c in range(C)])
    P = EmpiricalCovariance().fit(np.concatenate([xtr[ytr == c] - means[c] for c in range(C)])).precision_
    m0 = xtr.mean(0)
    P0 = EmpiricalCovariance().fit(xtr - m0).precision_

    def slow(h):
        background = -(h - m0) @ P0 @ (h - m0)
        return max(-(h - means[c]) @ P @ (h - means[c]) - background for c in range(C))
    assert_matches_slow(problem, "rmd", slow, rtol=1e-4, atol=1e-4)


def test_train_statistics_are_shared_through_the_memo(problem):
    train = problem["train"]
    create("dice").fit(train)
    mean = train.memo("feature_mean", lambda: None)
    assert mean is not None and mean.shape == (train.dim,)
    create("nci").fit(train)
    create("fdbd").fit(train)
    assert train.memo("feature_mean", lambda: None) is mean
    a = create("knn").fit(train).bank_
    assert create("knn", k=3).fit(train).bank_ is a
    assert math.isclose(create("vra", percentile_high=99).fit(train).high_,
                        train.memo(("quantile", 0.99), lambda: None))
