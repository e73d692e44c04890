"""Temperature scaling fitted on ID validation data, and GMM, pNML, LTS and head gradient uncertainty: each against
a slow float64 restatement written here (one row at a time), and against pytorch-ood's own code when installed."""
import functools
import math
import re
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp, softmax
from scipy.stats import multivariate_normal

import ood
from ood.detectors import create, get_detector_class, gmm
from ood.features import Head
from ood.split import Split

from .helpers import assert_matches_slow as _assert_matches_slow, float64_arrays, write_problem

assert_matches_slow = functools.partial(_assert_matches_slow, rtol=1e-6, atol=1e-8)  # tighter than the default

NEW = ["gmm", "pnml", "lts", "grad_uncertainty"]


def head_module(problem):
    lin = torch.nn.Linear(problem["head"].dim, problem["head"].num_classes)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(problem["head"].weight))
        lin.bias.copy_(torch.as_tensor(problem["head"].bias))
    return lin


def test_registry_grids_defaults_and_citations():
    for name in NEW:
        cls = get_detector_class(name)
        assert cls.default == (name != "gmm"), name  # gmm holds K x D^2 factors: opt-in at ImageNet scale
        assert re.search(r"\b20[12]\d\b", sys.modules[cls.__module__].__doc__ + cls.__doc__), name
        for key, values in cls.grid.items():
            assert key in create(name).params() and len(values) >= 2
    assert get_detector_class("gmm").grid["reg"][0] == create("gmm").reg == 1e-6
    assert create("lts").percentile == 95 and 95 in get_detector_class("lts").grid["percentile"]
    with pytest.raises(ood.ParameterError, match="gmm.reg must be"):
        create("gmm", reg=0.0)


# ------------------------------------------------------------------ temperature scaling


def nll_minimum(z, y):
    def nll(log_t):
        T = math.exp(log_t)
        return np.mean([logsumexp(zi / T) - zi[yi] / T for zi, yi in zip(z, y)])
    return math.exp(minimize_scalar(nll, bounds=(math.log(1e-3), math.log(1e3)), method="bounded",
                                    options={"xatol": 1e-10}).x)


def log_odds(p):
    return np.log(p) - np.log1p(-p)


def overfit_head(seed=3, C=5, D=8, n_train=200, n_val=300):
    """A head that separates its own train rows (its NLL falls as T -> 0 there) and errs on held-out rows."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, D))
    y_val = rng.integers(0, C, n_val)
    x_val = centers[y_val] + 1.2 * rng.normal(size=(n_val, D))
    head = Head((4 * centers).astype(np.float32), np.zeros(C, np.float32))
    x_tr = centers[rng.integers(0, C, n_train)] + 0.05 * rng.normal(size=(n_train, D))
    y_tr = (x_tr @ head.weight.T).argmax(1)  # labelled by the head itself: 100 % train accuracy
    train = Split.from_arrays("train", x_tr, head, labels=y_tr)
    val = Split.from_arrays("id_val", x_val, head, labels=y_val)
    return train, val, x_val @ head.weight.T.astype(np.float64), y_val


def test_temp_scaling_fits_the_nll_minimum_of_the_id_validation_split():
    train, val, z, y = overfit_head()
    train.extras["id_val"] = val
    det = create("temp_scaling").fit(train)
    best = nll_minimum(z, y)
    assert det.T_ == pytest.approx(best, rel=1e-4) and det.fitted_on_ == "id_val"
    assert best > 0.05  # not the collapse the train labels give
    assert any("on 300 labelled ID validation rows" in n for n in det.notes_)
    np.testing.assert_allclose(det.score(val), [log_odds(softmax(zi / best).max()) for zi in z], rtol=1e-4, atol=1e-5)


def test_temp_scaling_on_a_separated_split_is_at_the_lower_bound_with_a_note():
    train, _, _, _ = overfit_head()
    det = create("temp_scaling").fit(train)  # no validation split: the train labels, which the head separates
    assert det.T_ == 1e-3 and det.fitted_on_ == "train"
    text = " ".join(det.notes_)
    assert "no labelled ID validation split" in text and "biased low" in text
    assert "all 200 rows T was fitted on are classified correctly" in text and "no minimum" in text


def test_temp_scaling_unlabelled_validation_falls_back_and_bad_labels_are_named():
    train, val, _, _ = overfit_head()
    train.extras["id_val"] = Split.from_arrays("id_val", val.features, val.head)  # labels all -1
    assert create("temp_scaling").fit(train).fitted_on_ == "train"
    train.extras["id_val"] = Split.from_arrays("id_val", val.features, val.head, labels=np.full(val.n, 9))
    with pytest.raises(ood.InputError, match="300 labels outside \\[0, 5\\)"):
        create("temp_scaling").fit(train)


def test_temp_scaling_reaches_the_optimum_pytorch_ood_stops_short_of():
    pood = pytest.importorskip("pytorch_ood.detector")
    _, val, z, y = overfit_head()
    ours = create("temp_scaling").fit(val)  # a split with labels fits on its own rows
    theirs = pood.TemperatureScaling(None).fit_logits(torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y))

    def nll(T):
        return np.mean([logsumexp(zi / T) - zi[yi] / T for zi, yi in zip(z, y)])
    t_theirs = float(theirs.t.detach())
    assert nll(ours.T_) < nll(t_theirs) - 1e-3 and abs(t_theirs - ours.T_) > 0.01
    # the same score function: pytorch-ood's -max softmax at our T, as log-odds
    p = -pood.TemperatureScaling.score(torch.as_tensor(z), ours.T_).numpy()
    np.testing.assert_allclose(ours.score(val), log_odds(p), rtol=1e-5, atol=1e-5)


def bench(paths, *args, **kwargs):
    return ood.run_benchmark(paths["fc"], paths["train"], paths["test"], [paths["near"]], methods="temp_scaling,msp",
                             *args, **kwargs)


def test_benchmark_fits_temp_scaling_on_a_hold_out_and_scores_the_rest(tmp_path):
    paths = write_problem(tmp_path)
    res = bench(paths)
    rec = {r["method"]: r for r in res.records}
    assert "scored on the 108 ID test rows left after holding out 12" in rec["temp_scaling"]["note"]
    assert "fitted by NLL on 12 labelled ID validation rows" in rec["temp_scaling"]["note"]
    assert len(res.scores["temp_scaling"]["id"]) == 108 and len(res.scores["msp"]["id"]) == 120
    assert any("ID validation for temp_scaling: a seeded 12 of the 120" in n for n in res.notes)


def test_benchmark_fits_temp_scaling_on_the_tune_id_file_also_when_tuning(tmp_path):
    from ood.features import FeatureFile, read_head, write_features
    paths = write_problem(tmp_path)
    with FeatureFile(paths["test"]) as f:
        x, y = f.read(), f.labels()
    x_val = (x[:60] + 0.1 * np.random.default_rng(1).normal(size=(60, x.shape[1]))).astype(np.float32)
    write_features(tmp_path / "idval.h5", x_val, labels=y[:60], model="toy")
    with FeatureFile(paths["near"]) as f:
        write_features(tmp_path / "oodval.h5", f.read()[:40] * 1.1, model="toy")
    want = create("temp_scaling").fit(Split.from_arrays("v", x_val, read_head(paths["fc"]), labels=y[:60])).T_
    for extra in ({}, {"tune": str(tmp_path / "oodval.h5")}):
        res = bench(paths, tune_id=str(tmp_path / "idval.h5"), **extra)
        assert res.provenance["fitted"]["temp_scaling"]["T_"] == pytest.approx(want, rel=1e-9), extra
        assert "on 60 labelled ID validation rows" in res.records[0]["note"], extra
        assert len(res.scores["temp_scaling"]["id"]) == 120, extra  # the ID test split is whole


def test_benchmark_with_too_few_id_test_rows_for_a_hold_out_falls_back_with_notes(tmp_path):
    from ood.features import FeatureFile, write_features
    paths = write_problem(tmp_path)
    with FeatureFile(paths["test"]) as f:
        x, y = f.read()[:4], f.labels()[:4]
    write_features(paths["test"], x, labels=y, model="toy")
    res = bench(paths)
    assert any("no ID validation split for temp_scaling" in n and "too few" in n for n in res.notes)
    rec = {r["method"]: r for r in res.records}
    assert rec["temp_scaling"]["auroc"] is not None and "train rows" in rec["temp_scaling"]["note"]


# ------------------------------------------------------------------ GMM


def gmm_slow(xtr, ytr, reg):
    parts = []
    for c in np.unique(ytr):
        xc = xtr[ytr == c]
        cov = np.cov(xc, rowvar=False, bias=True) + reg * np.eye(xtr.shape[1])
        parts.append((math.log(len(xc) / len(xtr)), multivariate_normal(xc.mean(0), cov)))
    return lambda h: logsumexp([lp + g.logpdf(h) for lp, g in parts])


@pytest.mark.parametrize("reg", [1e-6, 1e-1])
def test_gmm_is_the_class_mixture_log_density(problem, reg):
    _, _, xtr, ytr = float64_arrays(problem)
    assert_matches_slow(problem, "gmm", gmm_slow(xtr, ytr, reg), rtol=1e-6, reg=reg)


def test_gmm_equals_pytorch_ood(problem):
    pood = pytest.importorskip("pytorch_ood.detector")
    _, _, xtr, ytr = float64_arrays(problem)
    theirs = pood.GMM(None, reg=1e-6).fit_features(torch.as_tensor(xtr), torch.as_tensor(ytr))
    x = problem["arrays"]["ood"][0]
    ours = create("gmm").fit(problem["train"]).score(problem["ood"])
    np.testing.assert_allclose(ours, -theirs.predict_features(torch.as_tensor(x, dtype=torch.float64)).numpy(),
                               rtol=1e-6)


def test_gmm_classes_in_several_passes_equal_one_pass(problem, monkeypatch):
    one = create("gmm").fit(problem["train"]).score(problem["ood"])
    monkeypatch.setattr(gmm, "SCATTER_BYTES", 3 * 8 * 16 * 16)  # three classes a pass: 3 passes for 7
    train = Split.from_arrays("t", *problem["arrays"]["train"][:1], problem["head"],
                              labels=problem["arrays"]["train"][1])
    np.testing.assert_allclose(create("gmm").fit(train).score(problem["ood"]), one, rtol=1e-12)
    assert "gmm_covariances" not in [k[0] for k in train._memo if isinstance(k, tuple)]


def test_gmm_small_class_is_noted_and_huge_features_raise_the_jitter():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6))
    y = np.r_[np.zeros(57, int), np.ones(3, int)]
    det = create("gmm").fit(x, labels=y)
    assert any("1 of 2 class covariances are singular" in n for n in det.notes_)
    assert not hasattr(create("gmm").fit(x, labels=np.arange(60) % 2), "notes_")
    flat = x.copy()
    flat[:, 2] = 0.5
    assert any("2 of 2 class covariances" in n for n in create("gmm").fit(flat, labels=np.arange(60) % 2).notes_)
    assert np.isfinite(det.score(rng.normal(size=(5, 6)))).all()
    big = create("gmm").fit(x * 1e19, labels=y)  # 1e-6 is far below the rounding of a 1e38 covariance
    assert any("not positive definite with reg = 1e-06" in n for n in big.notes_)
    s = big.score(np.r_[x[:3], rng.normal(size=(3, 6))] * 1e19)
    assert np.isfinite(s).all()


# ------------------------------------------------------------------ pNML


def pnml_slow(problem):
    W, b, xtr, _ = float64_arrays(problem)
    X = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    P = np.linalg.pinv(X.T @ X)

    def slow(h):
        x = h / np.linalg.norm(h)
        p = softmax(W @ x + b)
        q = x @ P @ x
        g = q / (1 + q)
        return -math.log(sum(pc / (pc + (1 - pc) * pc ** g) for pc in p)) / math.log(len(p))
    return slow


def test_pnml_regret(problem):
    assert_matches_slow(problem, "pnml", pnml_slow(problem), rtol=1e-5, atol=1e-7)


def test_pnml_equals_pytorch_ood(problem):
    pood = pytest.importorskip("pytorch_ood.detector")
    _, _, xtr, ytr = float64_arrays(problem)
    theirs = pood.PNML(None, head_module(problem)).fit_features(torch.as_tensor(xtr, dtype=torch.float32),
                                                                torch.as_tensor(ytr))
    x = torch.as_tensor(problem["arrays"]["ood"][0])
    ours = create("pnml").fit(problem["train"]).score(problem["ood"])
    np.testing.assert_allclose(ours, -theirs.predict_features(x).numpy(), atol=2e-5)


def test_pnml_rank_note_and_saturated_softmax_stay_finite():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(4, 12)) * 3000  # probabilities far below 1e-300 on the normalised features
    det = create("pnml").fit(rng.normal(size=(5, 12)), head=(W, np.zeros(4)))  # 5 rows span 5 of 12 directions
    assert any("rank 5 of 12" in n for n in det.notes_)
    s = det.score(np.r_[rng.normal(size=(6, 12)), np.zeros((1, 12))])
    assert np.isfinite(s).all() and (s <= 0).all() and (s >= -1).all()
    assert s[-1] == 0.0  # a zero row: no feature, g = 0, p / (p + 1 - p) sums to 1, regret 0


# ------------------------------------------------------------------ LTS


def lts_slow(problem, percentile):
    W, b, _, _ = float64_arrays(problem)

    def slow(h):
        a = np.maximum(h, 0)
        k = len(h) - int(np.round(len(h) * percentile / 100))
        S = (a.sum() / np.sort(a)[::-1][:k].sum()) ** 2
        return logsumexp(S * (W @ h + b))
    return slow


@pytest.mark.parametrize("percentile", [65, 95])
def test_lts(problem, percentile):
    assert_matches_slow(problem, "lts", lts_slow(problem, percentile), rtol=1e-6, percentile=percentile)


def test_lts_on_negative_features_and_equal_to_pytorch_ood(problem):
    x = problem["arrays"]["ood"][0] - 1.5  # negative activations: the ReLU matters
    split = Split.from_arrays("neg", x, problem["head"])
    got = create("lts", percentile=90).score(split)
    want = [lts_slow(problem, 90)(h) for h in x.astype(np.float64)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    pood = pytest.importorskip("pytorch_ood.detector")
    theirs = pood.LTS(None, head_module(problem), p=0.10).predict_features(torch.as_tensor(x))
    np.testing.assert_allclose(got, -theirs.numpy(), rtol=1e-5)


def test_lts_zero_row_is_the_energy_of_the_bias(problem):
    split = Split.from_arrays("z", np.zeros((2, 16)), problem["head"])
    np.testing.assert_allclose(create("lts").score(split), logsumexp(problem["head"].bias.astype(np.float64)),
                               rtol=1e-6)


# ------------------------------------------------------------------ gradient uncertainty


def test_grad_uncertainty_equals_autograd_of_the_head(problem):
    W = torch.tensor(problem["head"].weight, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(problem["head"].bias, dtype=torch.float64, requires_grad=True)
    got = create("grad_uncertainty").score(problem["test"])
    for i, h in enumerate(problem["arrays"]["test"][0][:25]):
        z = W @ torch.tensor(h, dtype=torch.float64) + b
        loss = -torch.log_softmax(z, 0).sum()  # binary cross-entropy of softmax(z) against all ones
        gw, gb = torch.autograd.grad(loss, (W, b))
        assert got[i] == pytest.approx(float((gw ** 2).sum() + (gb ** 2).sum()), rel=1e-5)


def test_grad_uncertainty_equals_pytorch_ood_where_its_clamp_does_not_bite(problem):
    pood = pytest.importorskip("pytorch_ood.detector")
    head = Head(problem["head"].weight / 20, problem["head"].bias / 20)  # every probability above 1e-12
    x = problem["arrays"]["ood"][0]
    lin = torch.nn.Linear(16, 7)
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(head.weight))
        lin.bias.copy_(torch.as_tensor(head.bias))
    p = softmax(x @ head.weight.T + head.bias, axis=1)
    assert p.min() > 1e-10 and p.max() < 1 - 1e-10
    theirs = pood.GradUncertainty(lin).predict(torch.as_tensor(x))
    got = create("grad_uncertainty").score(Split.from_arrays("o", x, head))
    np.testing.assert_allclose(got, -theirs.numpy(), rtol=1e-4)


# ------------------------------------------------------------------ extreme input


@pytest.mark.parametrize("name", NEW + ["temp_scaling"])
def test_extreme_inputs_give_finite_scores(problem, name):
    x, y = problem["arrays"]["train"]
    head = problem["head"]
    scored = np.r_[problem["arrays"]["ood"][0][:5], np.zeros((1, 16))]
    for train_x, test_x in ((np.full_like(x, 1.5), scored), (x * 1e19, scored * 1e19), (x, scored)):
        det = create(name).fit(Split.from_arrays("t", train_x, head, labels=y))
        s = det.score(Split.from_arrays("s", test_x, head))
        assert np.isfinite(s).all(), (name, s)
