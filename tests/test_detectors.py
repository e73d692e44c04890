"""Every core detector against a slow, obviously-correct float64 formula written here, on random features."""
import numpy as np
import pytest
from scipy.special import logsumexp, softmax

from ood import stats
from ood.detectors import create, list_detectors, parse_param_args
from ood.split import Split

CORE = ["msp", "maxlogit", "energy", "react", "vim", "residual", "entropy", "gen", "gen_residual",
        "local_react", "gen_local_react", "gen_react", "gradnorm", "mahalanobis", "kl_matching"]


def scores(problem, name, **params):
    det = create(name, **params).fit(problem["train"])
    return det.score(problem["test"]), det.score(problem["ood"])


def each_split(problem):
    W = problem["head"].weight.astype(np.float64)
    b = problem["head"].bias.astype(np.float64)
    xtr = problem["arrays"]["train"][0].astype(np.float64)
    for key in ("test", "ood"):
        yield key, problem["arrays"][key][0].astype(np.float64), W, b, xtr


def assert_matches_slow(problem, name, slow, rtol=1e-5, atol=1e-6, **params):
    got = dict(zip(("test", "ood"), scores(problem, name, **params)))
    for key, x, W, b, xtr in each_split(problem):
        want = np.array([slow(h, W, b, xtr) for h in x])
        assert got[key].dtype == np.float64
        np.testing.assert_allclose(got[key], want, rtol=rtol, atol=atol, err_msg=f"{name} on {key}")


def test_registry_has_exactly_the_core_names():
    assert set(CORE) <= set(list_detectors())


def test_msp(problem):
    assert_matches_slow(problem, "msp", lambda h, W, b, _: softmax(W @ h + b).max())


def test_maxlogit(problem):
    assert_matches_slow(problem, "maxlogit", lambda h, W, b, _: (W @ h + b).max())


@pytest.mark.parametrize("T", [1.0, 2.5])
def test_energy(problem, T):
    assert_matches_slow(problem, "energy", lambda h, W, b, _: T * np.log(np.sum(np.exp((W @ h + b) / T))), T=T)


def test_entropy(problem):
    def slow(h, W, b, _):
        p = softmax(W @ h + b)
        return sum(pi * np.log(pi) for pi in p if pi > 0)
    assert_matches_slow(problem, "entropy", slow)


def gen_slow(p, gamma=0.1, M=100):
    top = sorted(p)[-M:]
    return -sum(q ** gamma * (1 - q) ** gamma for q in top)


@pytest.mark.parametrize("M", [100, 3])
def test_gen(problem, M):
    assert_matches_slow(problem, "gen", lambda h, W, b, _: gen_slow(softmax(W @ h + b), 0.1, M), M=M)


def test_gradnorm_equals_autograd(problem):
    import torch
    W = torch.tensor(problem["head"].weight, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(problem["head"].bias, dtype=torch.float64)
    got = create("gradnorm").score(problem["test"])
    for i, h in enumerate(problem["arrays"]["test"][0][:20]):
        W.grad = None
        z = W @ torch.tensor(h, dtype=torch.float64) + b
        loss = torch.sum(-torch.ones(len(z)) * torch.log_softmax(z, 0))
        loss.backward()
        assert got[i] == pytest.approx(W.grad.abs().sum().item(), rel=1e-5)


def test_react(problem):
    c = np.quantile(problem["arrays"]["train"][0], 0.99)
    assert_matches_slow(problem, "react", lambda h, W, b, _: logsumexp(W @ np.minimum(h, c) + b))


def test_gen_react(problem):
    c = np.quantile(problem["arrays"]["train"][0], 0.9)
    assert_matches_slow(problem, "gen_react", lambda h, W, b, _: gen_slow(softmax(W @ np.minimum(h, c) + b), 0.2, 4),
          clip_quantile=0.9, gamma=0.2, M=4)


def test_local_react_uses_each_splits_own_quantile(problem):
    got = dict(zip(("test", "ood"), scores(problem, "local_react", clip_quantile_local=0.95)))
    got_gen = dict(zip(("test", "ood"), scores(problem, "gen_local_react", clip_quantile_local=0.95)))
    for key, x, W, b, _ in each_split(problem):
        c = np.quantile(problem["arrays"][key][0], 0.95)
        want = [logsumexp(W @ np.minimum(h, c) + b) for h in x]
        np.testing.assert_allclose(got[key], want, rtol=1e-5)
        want = [gen_slow(softmax(W @ np.minimum(h, c) + b)) for h in x]
        np.testing.assert_allclose(got_gen[key], want, rtol=1e-5)


def vim_space(W, b, xtr, dim):
    u = -np.linalg.pinv(W) @ b
    X = xtr - u
    cov = X.T @ X / len(X)
    vals, vecs = np.linalg.eig(cov)
    NS = vecs[:, np.argsort(-vals)[dim:]].real
    return u, NS


def test_vim(problem):
    D = problem["train"].dim
    _, _, W, b, xtr = next(each_split(problem))
    u, NS = vim_space(W, b, xtr, D // 2)
    alpha = np.mean([(W @ h + b).max() for h in xtr]) / np.mean([np.linalg.norm((h - u) @ NS) for h in xtr])
    assert_matches_slow(problem, "vim", lambda h, W, b, _: logsumexp(W @ h + b) - alpha * np.linalg.norm((h - u) @ NS),
          rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dim", [3, 10])
def test_residual_and_gen_residual(problem, dim):
    _, _, W, b, xtr = next(each_split(problem))
    u, NS = vim_space(W, b, xtr, dim)
    assert_matches_slow(problem, "residual", lambda h, W, b, _: -np.linalg.norm((h - u) @ NS), rtol=1e-4, dim=dim)
    assert_matches_slow(problem, "gen_residual",
          lambda h, W, b, _: np.linalg.norm((h - u) @ NS) * gen_slow(softmax(W @ h + b)), rtol=1e-4, dim=dim)


def test_vim_default_dim_follows_feature_width(problem):
    det = create("vim").fit(problem["train"])
    assert det.dim_ == problem["train"].dim // 2


def test_mahalanobis(problem):
    assert_mahalanobis_matches_slow(problem)


def assert_mahalanobis_matches_slow(problem):
    xtr, ytr = problem["arrays"]["train"]
    xtr = xtr.astype(np.float64)
    classes = np.unique(ytr)
    means = np.array([xtr[ytr == c].mean(0) for c in classes])
    centred = np.concatenate([xtr[ytr == c] - means[i] for i, c in enumerate(classes)])
    prec = np.linalg.pinv(centred.T @ centred / len(centred), hermitian=True)
    assert_matches_slow(problem, "mahalanobis",
          lambda h, W, b, _: -min((h - m) @ prec @ (h - m) for m in means), rtol=1e-4, atol=1e-4)


def test_kl_matching_leaves_out_unpredicted_classes(problem):
    xtr = problem["arrays"]["train"][0].astype(np.float64)
    W = problem["head"].weight.astype(np.float64)
    b = problem["head"].bias.astype(np.float64)
    p_train = softmax(xtr @ W.T + b, axis=1)
    pred = p_train.argmax(1)
    qs = [p_train[pred == c].mean(0) for c in range(len(b)) if (pred == c).any()]
    assert len(qs) >= 2

    def kl(p, q):
        return sum(pi * np.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)
    assert_matches_slow(problem, "kl_matching", lambda h, W, b, _: -min(kl(softmax(W @ h + b), q) for q in qs),
          rtol=1e-4, atol=1e-5)


def test_exact_quantile_matches_numpy_on_large_arrays():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 1000, size=(5000, 3500)).astype(np.float32)  # above the bracketing threshold, ties
    qs = (0.99, 0.9995, 0.5, 0.0, 1.0)
    assert stats.quantiles(x, qs) == [float(np.quantile(x, q)) for q in qs]  # shared passes
    y = rng.standard_normal((4200, 4100)).astype(np.float32)
    assert stats.quantile(y, 0.99) == float(np.quantile(y, 0.99))
    relu = np.maximum(y, 0)  # half the values one tie: brackets of a single value are counted, not kept
    qs = (0.1, 0.4999, 0.5, 0.50001, 0.9)
    assert stats.quantiles(relu, qs) == [float(np.quantile(relu, q)) for q in qs]


def test_shared_statistics_are_computed_once(problem, monkeypatch):
    """ViM and Residual on one train split: one eigendecomposition, one pass over the train features."""
    calls = {"eigh": 0}
    eigh = stats.eigh_desc

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(stats, "eigh_desc", counting("eigh", eigh))
    train = problem["train"]
    create("vim").fit(train)
    create("residual").fit(train)
    create("vim", dim=3).fit(train)
    assert calls["eigh"] == 1
    assert train.memo("moments", lambda: None) is not None


def test_params_parse_from_command_line_strings():
    params = parse_param_args(["vim.dim=512", "gen.M=10"], {"gamma": "0.3", "clip_quantile": "0.95"},
                              ["vim", "gen", "gen_react", "react", "msp"])
    assert params["vim"] == {"dim": 512}
    assert params["gen"] == {"M": 10, "gamma": 0.3}
    assert params["gen_react"] == {"gamma": 0.3, "clip_quantile": 0.95}
    assert params["react"] == {"clip_quantile": 0.95}
    assert "msp" not in params
    with pytest.raises(ValueError, match="vim.nope"):
        parse_param_args(["vim.nope=1"])
    with pytest.raises(ValueError, match="unknown method"):
        parse_param_args(["bogus.x=1"])
    with pytest.raises(ValueError, match="cannot read"):
        parse_param_args(["gen.M=ten"])


def test_stored_logits_are_used_only_when_they_are_the_heads(problem):
    head = problem["head"]
    x = problem["arrays"]["test"][0]
    z = x.astype(np.float64) @ head.weight.T.astype(np.float64) + head.bias
    s = Split.from_arrays("t", x, head, logits=z + 0.001)  # the same head, as a mixed-precision forward
    np.testing.assert_allclose(create("maxlogit").score(s), z.max(1) + 0.001, rtol=1e-6)
    assert s.notes == []
    other = Split.from_arrays("o", x, head, logits=np.random.default_rng(0).normal(size=z.shape))
    np.testing.assert_allclose(create("maxlogit").score(other), z.max(1), rtol=1e-5)
    assert len(other.notes) == 1 and "recomputed from the head" in other.notes[0]


def test_mahalanobis_singular_covariance_uses_the_pseudo_inverse():
    from tests.helpers import make_problem
    p = make_problem(seed=4)
    for key in ("train", "test", "ood"):
        x = p["arrays"][key][0]
        x[:, 3] = 0.0  # a dead unit: the covariance is singular, Cholesky fails
        x[:, 5] = x[:, 4]  # and a duplicated one
        p[key] = Split.from_arrays(key, x, p["head"], labels=p["arrays"][key][1])
    assert_mahalanobis_matches_slow(p)


def test_gen_is_accurate_for_peaked_softmax():
    # 1 - p_max ~ 1e-17 cancels to 0 in a plain float64 softmax; the log-domain GEN keeps it (mpmath-checked)
    import mpmath as mp
    import torch
    from ood.detectors.logits import gen_from_logits
    mp.mp.dps = 50
    z = [132.13, 93.49, 82.16, 0.0, -5.0]
    e = [mp.e ** (mp.mpf(x) - mp.mpf(z[0])) for x in z]
    ps = [v / sum(e) for v in e]
    want = -sum(p ** mp.mpf("0.1") * (1 - p) ** mp.mpf("0.1") for p in ps)
    got = gen_from_logits(torch.tensor([z], dtype=torch.float64), 0.1, 100)
    assert float(got[0]) == pytest.approx(float(want), rel=1e-9)
