"""OpenMax, Relation and CF-OOD against slow float64 restatements written here, one sample at a time, after the
peers' code (pytorch-ood's OpenMax, OpenOOD's ``relation`` and ``cfood`` postprocessors), and against the
peers themselves where they are installed; then their edges (degenerate tails, tiny or extreme inputs)."""
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import expit, logsumexp, softmax
from scipy.stats import weibull_min

from ood.detectors import cfood, create, get_detector_class, list_detectors, openmax, relation
from ood.errors import InputError
from ood.features import Head
from ood.split import Split

from .helpers import float64_arrays

NEW = {"openmax": True, "relation": False, "cfood": False}  # name: run by default


def assert_matches_slow(problem, name, slow, rtol=1e-5, atol=1e-6, **params):
    """``slow(rows [n, D] float64) -> scores``: one call per scored split, the restatement loops inside."""
    det = create(name, **params).fit(problem["train"])
    for key in ("test", "ood"):
        got = det.score(problem[key])
        want = slow(problem["arrays"][key][0].astype(np.float64))
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{name} on {key}")
    return det


def test_registered_with_defaults_grids_and_papers():
    assert set(NEW) <= set(list_detectors())
    for name, default in NEW.items():
        cls = get_detector_class(name)
        assert cls.default is default
        det = create(name)
        for key, values in cls.grid.items():
            assert key in det.params() and len(values) >= 2
            for v in values:
                create(name, **{key: v})
    assert "Bendale" in openmax.__doc__ and "Kim" in relation.__doc__ and "Angiulli" in cfood.__doc__


def test_parameters_are_checked():
    for name, params in [("openmax", {"tailsize": 0}), ("openmax", {"alpha": 0}), ("openmax", {"alpha": 2.5}),
                         ("openmax", {"euclid_weight": 1.5}), ("openmax", {"correct": "yes"}),
                         ("relation", {"pow": 0}), ("relation", {"threshold": -1}), ("cfood", {"k": 0}),
                         ("cfood", {"k": 2}), ("cfood", {"alpha": 0})]:
        with pytest.raises(ValueError, match=f"{name}.{next(iter(params))}"):
            create(name, **params)


# ------------------------------------------------------------------------------------------------- OpenMax


def weibull_mle(x):
    """Two-parameter Weibull MLE (location 0) of x: brentq on the profile equation of x / max(x)."""
    y = np.log(x / x.max())

    def g(k):
        w = np.exp(k * y)
        return 1 / k + y.mean() - (w * y).sum() / w.sum()
    k = brentq(lambda t: g(math.exp(t)), math.log(1e-10), math.log(1e30), xtol=1e-14, rtol=1e-15)
    k = math.exp(k)
    return k, x.max() * np.mean(np.exp(k * y)) ** (1 / k)


def test_weibull_fit_is_the_likelihood_maximum():
    rng = np.random.default_rng(5)
    tails = np.full((4, 20), np.nan)
    tails[0] = np.abs(rng.normal(3, 1, 20))
    tails[1, :7] = rng.gamma(2.0, 1e6, 7)  # spread far above the 10,000 translation
    tails[2, :2] = [0.25, 0.5]
    tails[3, :20] = rng.uniform(0, 1e-6, 20)  # a spread near float64 resolution at 10,000
    shape, scale, shift = openmax.weibull_fit_high(tails)
    for i, t in enumerate(tails):
        t = t[~np.isnan(t)]
        x = t + 10_000 - t.min()
        assert shift[i] == 10_000 - t.min()
        k, lam = weibull_mle(x)
        assert shape[i] == pytest.approx(k, rel=1e-9) and scale[i] == pytest.approx(lam, rel=1e-12)
        if i == 3:
            continue  # scipy's solver stops far from the root there (shape 4.8e3 for 3.7e10)
        c, _, s = weibull_min.fit(x, floc=0)  # scipy solves the same equation, to its own tolerance
        assert shape[i] == pytest.approx(c, rel=1e-5) and scale[i] == pytest.approx(s, rel=1e-6)


def test_weibull_without_spread_is_the_step_limit():
    tails = np.full((3, 4), np.nan)
    tails[0, 0] = 2.0
    tails[1] = 3.0
    shape, scale, shift = openmax.weibull_fit_high(tails)
    assert np.isinf(shape[:2]).all() and (scale[:2] == 10_000).all() and np.isnan(shape[2])
    import torch
    d = torch.tensor([1.0, 2.0, 3.0, -20_000.0], dtype=torch.float64)
    w = openmax.weibull_cdf(d, torch.tensor(np.inf), torch.tensor(10_000.0), torch.tensor(shift[0]))
    np.testing.assert_allclose(w.numpy(), [0.0, 1 - math.exp(-1), 1.0, 0.0])


def classifier_problem(seed=0, C=5, D=12, n=500, dead=None):
    """Features around class centres and the centres as the head: most train rows are correctly classified.
    ``dead``: a class the head never predicts (no correct train row, no Weibull model)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, D)) * 1.5
    bias = np.zeros(C, np.float32)
    if dead is not None:
        bias[dead] = -60  # never the argmax of a train row
    head = Head(centers.astype(np.float32), bias)
    y = rng.integers(0, C, n)
    xtr = (centers[y] + rng.normal(size=(n, D))).astype(np.float32)
    yte = rng.integers(0, C, 150)
    xte = (centers[yte] + rng.normal(size=(150, D))).astype(np.float32)
    xo = (rng.normal(size=(120, D)) * 3).astype(np.float32)
    # logits stored with the features (float32, as a model writes them): the library and the restatements
    # below start from the same numbers
    z = {k: (x.astype(np.float64) @ centers.T + bias).astype(np.float32) for k, x in
         (("train", xtr), ("test", xte), ("ood", xo))}
    return {"head": head, "train": Split.from_arrays("train", xtr, head, logits=z["train"], labels=y),
            "test": Split.from_arrays("id", xte, head, logits=z["test"]),
            "ood": Split.from_arrays("ood", xo, head, logits=z["ood"]),
            "arrays": {"train": (xtr, y), "test": (xte, None), "ood": (xo, None)},
            "logits": {k: v.astype(np.float64) for k, v in z.items()}}


def av_distance_slow(z, m, euclid_weight):
    nz = np.linalg.norm(z) * np.linalg.norm(m)
    cos = 1 - z @ m / nz if nz > 0 else 1.0
    return euclid_weight * np.linalg.norm(z - m) + (1 - euclid_weight) * cos


def openmax_models(ztr, ytr, tailsize, euclid_weight, correct):
    """{class: (MAV, shift, shape, scale)} as pytorch-ood / libMR fit them (scipy MLE on the translated tail)."""
    models = {}
    for c in range(ztr.shape[1]):
        rows = ztr[(ytr == c) & ((ztr.argmax(1) == ytr) if correct else True)]
        if len(rows) == 0:
            continue
        m = rows.mean(0)
        tail = np.array(sorted(av_distance_slow(r, m, euclid_weight) for r in rows)[-tailsize:])
        shift = 10_000 - tail.min()
        models[c] = (m, shift) + weibull_mle(tail + shift)
    return models


def openmax_slow(models, z, alpha, euclid_weight):
    """(score, p_unknown) of one logit vector: the OSDN / pytorch-ood recalibration, a class at a time."""
    C = len(z)
    a = min(alpha, C)
    ranked = sorted(range(C), key=lambda c: -z[c])[:a]
    v, v0 = z.copy(), 0.0
    for i, c in enumerate(ranked):
        omega = (a - i) / a
        w = 1.0
        if c in models:
            m, shift, k, lam = models[c]
            w = weibull_min.cdf(av_distance_slow(z, m, euclid_weight) + shift, k, scale=lam)
        v[c] = z[c] * (1 - omega * w)
        v0 += z[c] * omega * w
    return logsumexp(v) - v0, softmax(np.r_[v0, v])[0]


@pytest.mark.parametrize("params", [{}, {"tailsize": 5, "alpha": 2, "euclid_weight": 0.5, "correct": False},
                                    {"tailsize": 200, "alpha": 3, "euclid_weight": 0.0}])
def test_openmax(params):
    p = classifier_problem(dead=4)
    full = {"tailsize": 20, "alpha": 10, "euclid_weight": 1.0, "correct": True, **params}
    models = openmax_models(p["logits"]["train"], p["arrays"]["train"][1], full["tailsize"], full["euclid_weight"],
                            full["correct"])
    assert (4 in models) is not full["correct"] and len(models) == 4 + (not full["correct"])
    det = create("openmax", **params).fit(p["train"])
    # cosine distances here are 1e-7..1e-5: translated to 10,000 they keep 5-7 digits, and one ulp of the fitted
    # scale moves w by 1e-5 (libMR's translation, in any implementation); Euclidean ones keep about 12
    tol = 1e-4 if full["euclid_weight"] == 0 else 1e-9
    for key in ("test", "ood"):
        want = [openmax_slow(models, z, full["alpha"], full["euclid_weight"]) for z in p["logits"][key]]
        np.testing.assert_allclose(det.score(p[key]), [s for s, _ in want], rtol=tol, atol=tol)
    assert any("1 of 5 classes" in n for n in getattr(det, "notes_", [])) is full["correct"]
    z = np.r_[p["logits"]["test"], p["logits"]["ood"]]
    p0 = np.array([openmax_slow(models, zi, full["alpha"], full["euclid_weight"])[1] for zi in z])
    got = expit(-np.r_[det.score(p["test"]), det.score(p["ood"])])
    np.testing.assert_allclose(got, p0, rtol=1e-4, atol=1e-12)  # the score is the log-odds of p0
    assert (p0 < 1e-3).mean() > 0.05 and (p0 > 0.5).mean() > 0.2  # the rows span the recalibration


def test_openmax_separates_a_classifier_problem():
    p = classifier_problem()
    det = create("openmax").fit(p["train"])
    from ood import metrics
    assert metrics.auroc(det.score(p["test"]), det.score(p["ood"])) > 0.8


def test_openmax_as_pytorch_ood():
    pom = pytest.importorskip("pytorch_ood.detector.openmax.numpy")
    p = classifier_problem(seed=2)
    theirs = pom.OpenMax(tailsize=25, alpha=10, euclid_weight=1.0).fit(p["logits"]["train"], p["arrays"]["train"][1])
    det = create("openmax", tailsize=25, alpha=10, correct=False).fit(p["train"])
    for key in ("test", "ood"):
        z = p["logits"][key]
        assert len(np.unique(z.argmax(1))) == z.shape[1]  # pytorch-ood measures distances only to predicted classes
        np.testing.assert_allclose(expit(-det.score(p[key])), theirs.predict(z)[:, 0], rtol=1e-4, atol=1e-6)


def test_openmax_without_a_correct_train_row_says_so():
    p = classifier_problem()
    W, b, xtr, _ = float64_arrays(p)
    labels = ((xtr @ W.T + b).argmax(1) + 1) % 5  # every label wrong
    train = Split.from_arrays("train", p["arrays"]["train"][0], p["head"], labels=labels)
    det = create("openmax").fit(train)
    assert "no train row is correctly classified" in det.notes_[0] and "logits alone" in det.notes_[0]
    z = p["logits"]["ood"]
    want = [openmax_slow({}, zi, 10, 1.0)[0] for zi in z]  # no model: w = 1 for every top class
    np.testing.assert_allclose(det.score(p["ood"]), want, rtol=1e-12, atol=1e-12)
    assert not getattr(create("openmax", correct=False).fit(train), "notes_", [])


def test_openmax_streams_the_train_logits(problem):
    train = problem["train"]
    train.keep_logits = False
    create("openmax").fit(train)
    assert "logits" not in train._memo


# ------------------------------------------------------------------------------------------------- Relation


def relation_slow(xtr, W, b, x, pow_=1.0, threshold=0.03):
    """OpenOOD's get_relation, one scored row at a time, float64."""
    ftr = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    ptr = softmax(xtr @ W.T + b, axis=1)
    out = []
    for h in x:
        f, p = h / np.linalg.norm(h), softmax(W @ h + b)
        rel = np.maximum(ftr @ f, 0.0) * (ptr @ p)  # the edges to every train row
        out.append(np.sum(rel[np.abs(rel) > threshold] ** pow_))
    return np.array(out)


@pytest.mark.parametrize("params", [{}, {"pow": 4}, {"pow": 2.5, "threshold": 0.0}])
def test_relation(problem, params, monkeypatch):
    monkeypatch.setattr(relation, "BANK_ROWS", 64)  # many bank blocks per scored block
    monkeypatch.setattr(relation, "QUERY_ROWS", 50)
    W, b, xtr, _ = float64_arrays(problem)
    slow = lambda x: relation_slow(xtr, W, b, x, params.get("pow", 1.0), params.get("threshold", 0.03))  # noqa: E731
    assert_matches_slow(problem, "relation", slow, rtol=2e-5, atol=1e-6, **params)


def test_relation_as_openood(problem):
    post = pytest.importorskip("openood.postprocessors.relation_postprocessor")
    import torch
    W, b, xtr, _ = float64_arrays(problem)
    x = problem["arrays"]["ood"][0].astype(np.float64)
    prob = lambda a: torch.softmax(torch.tensor(a @ W.T + b), dim=1)  # noqa: E731
    theirs = post.get_relation(post.normalize(torch.tensor(x)), post.normalize(torch.tensor(xtr)), prob(x), prob(xtr),
                               pow=2)
    np.testing.assert_allclose(create("relation", pow=2).fit(problem["train"]).score(problem["ood"]), theirs.numpy(),
                               rtol=1e-4)


def test_relation_shares_the_knn_bank(problem):
    a = create("relation").fit(problem["train"])
    assert create("knn").fit(problem["train"]).bank_ is a.bank_
    assert create("relation", pow=4).fit(problem["train"]).probs_ is a.probs_


# ------------------------------------------------------------------------------------------------- CF-OOD


def cfood_slow(xtr, alpha, seed=0):
    """OpenOOD's CFOODPostprocessor in float64, its reference rows drawn as ours (OpenOOD's randperm is unseeded):
    its setup here, and ``score(x, k)``, its postprocess, one scored row at a time."""
    N = len(xtr)
    n = N if alpha >= 1 else int(alpha * N)
    rows = np.arange(N) if n == N else np.sort(np.random.default_rng(seed).choice(N, n, replace=False))
    ref = xtr[rows] / np.linalg.norm(xtr[rows], axis=1, keepdims=True)
    kval = np.concatenate((np.linspace(0.001, 0.1, 100), np.linspace(0.105, 0.5, 81), np.linspace(0.51, 0.99, 49)))
    kpos = np.array(kval * n - 1, dtype=int)
    keep = np.concatenate(([True], kpos[:-1] < kpos[1:]))
    kval, kpos = kval[keep], kpos[keep]
    knndst = np.array([np.sort(np.sum((ref[i] - ref) ** 2, axis=1))[kpos + 1] for i in range(n)])

    def score(x, k):
        out = []
        for h in x:
            v = h / np.linalg.norm(h) if np.linalg.norm(h) > 0 else h
            dst = np.sum((v - ref) ** 2, axis=1)
            count = np.float32((knndst >= dst[:, None]).sum(0)) / np.float32(n)
            pos = np.flatnonzero(count >= np.float32(k))
            out.append(-(kval[pos[0]] if pos.size else 1.0))
        return np.array(out)
    return score


@pytest.mark.parametrize("alpha,ks", [(0.1, [0.01]), (0.5, [0.05]), (1.0, [0.001, 0.01])])
def test_cfood(problem, alpha, ks, monkeypatch):
    monkeypatch.setattr(cfood, "BANK_ROWS", 37)  # several reference blocks, uneven
    monkeypatch.setattr(cfood, "QUERY_ROWS", 50)
    monkeypatch.setattr(cfood, "BLOCK_ELEMENTS", 4000)  # the reference radii in blocks of rows too
    _, _, xtr, _ = float64_arrays(problem)
    slow = cfood_slow(xtr, alpha)
    for k in ks:
        det = assert_matches_slow(problem, "cfood", lambda x: slow(x, k), rtol=0, atol=0, alpha=alpha, k=k)
        assert len(np.unique(det.score(problem["ood"]))) > 5


def test_cfood_min_cover_is_openoods_float32_test():
    for n in (7, 100, 1000, 12_345):
        for k in (0.001, 0.01, 0.05, 0.3, 1.0):
            m = cfood.min_cover(n, k)
            assert np.float32(m) / np.float32(n) >= np.float32(k) > np.float32(m - 1) / np.float32(n)


def test_cfood_grid_over_k_reuses_the_cover_counts(problem, monkeypatch):
    create("cfood", k=0.01).fit(problem["train"]).score(problem["test"])
    calls = []
    monkeypatch.setattr(cfood, "sq_distances", lambda *a: calls.append(1))
    for k in (0.001, 0.05):
        create("cfood", k=k).fit(problem["train"]).score(problem["test"])
    assert not calls


def test_cfood_needs_two_reference_rows():
    x = np.random.default_rng(0).normal(size=(15, 4))
    with pytest.raises(InputError, match="1 reference row"):
        create("cfood", alpha=0.1).fit(x)
    assert np.isfinite(create("cfood", alpha=0.2).fit(x).score(x)).all()


# ------------------------------------------------------------------------------------------------- edges


def extreme_inputs(problem):
    x, y = problem["arrays"]["train"]
    test = problem["arrays"]["ood"][0].copy()
    test[0] = 0  # a zero row
    head = problem["head"]
    yield "constant train", Split.from_arrays("t", np.full_like(x, 1.5), head, labels=y), test
    yield "zero rows", Split.from_arrays("t", x, head, labels=y), test
    yield "huge", Split.from_arrays("t", x * 1e19, head, labels=y), test * 1e19
    yield "single class", Split.from_arrays("t", x, head, labels=np.zeros_like(y)), test


@pytest.mark.parametrize("name", list(NEW))
def test_extreme_inputs_give_finite_scores_or_a_named_refusal(problem, name):
    for what, train, test in extreme_inputs(problem):
        try:
            det = create(name).fit(train)
        except InputError as e:
            assert name in str(e) or "train" in str(e), (what, e)
            continue
        s = det.score(Split.from_arrays("s", test, problem["head"]))
        assert s.dtype == np.float64 and np.isfinite(s).all(), (name, what)


@pytest.mark.parametrize("name", list(NEW))
def test_refit_on_other_train_gives_fresh_scores(name):
    """Fit on train A, score T; refit on train B, score T again: the scores of a fresh detector and split (nothing
    memoised on T from the first fit is served)."""
    a, b = classifier_problem(seed=3), classifier_problem(seed=4)
    t = a["ood"]
    det = create(name)
    first = det.fit(a["train"]).score(t)
    again = det.fit(b["train"]).score(t)
    fresh = create(name).fit(classifier_problem(seed=4)["train"]).score(classifier_problem(seed=3)["ood"])
    np.testing.assert_array_equal(again, fresh)
    assert not np.array_equal(first, again)


def test_cli_parameters_and_tuning_grid(problem):
    from ood.detectors import parse_param_args
    from ood.tuning import tune_method
    assert parse_param_args(["openmax.correct=false", "relation.pow=2", "cfood.k=0.05"]) == {
        "openmax": {"correct": False}, "relation": {"pow": 2.0}, "cfood": {"k": 0.05}}
    choice = tune_method("cfood", problem["train"], problem["test"], problem["ood"], {"alpha": 0.5})
    assert choice.tried == 4 and choice.params["k"] in (0.001, 0.005, 0.01, 0.05)
