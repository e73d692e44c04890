"""Bootstrap intervals: each resample's metrics equal a slow computation on the resampled scores themselves,
the intervals contain the point estimate and shrink with more samples, and a run shares its ID resamples."""
from types import SimpleNamespace

import numpy as np
import pytest

from ood import bootstrap
from ood.errors import InputError
from ood.metrics import evaluate


def slow_auroc(id_scores, ood_scores):
    """P(ID > OOD) + P(ID = OOD) / 2 over every pair, in float64 loops."""
    total = 0.0
    for a in id_scores:
        for b in ood_scores:
            total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(id_scores) * len(ood_scores))


def slow_fpr95_vim(id_scores, ood_scores, tpr=0.95):
    """ViM: the floor(0.95 N)-th largest ID score is the threshold; the share of OOD scores at or above it."""
    k = int(np.floor(tpr * len(id_scores)))
    t = sorted(id_scores, reverse=True)[k - 1] if k > 0 else min(id_scores)
    return sum(1 for b in ood_scores if b >= t) / len(ood_scores)


def tied_scores(rng, n, levels=7):
    return rng.integers(0, levels, n).astype(np.float64)  # many ties: the hard case for counting


def test_weighted_metrics_equal_the_resampled_scores():
    rng = np.random.default_rng(0)
    for _ in range(30):
        a, b = tied_scores(rng, rng.integers(1, 25)), tied_scores(rng, rng.integers(1, 25))
        wa, wb = rng.integers(0, 3, (3, a.size)), rng.integers(0, 3, (3, b.size))
        wa[:, 0] += 1
        wb[:, 0] += 1
        got = {conv: bootstrap.weighted_metrics(a, b, wa, wb, conv) for conv in ("vim", "oe", "openood")}
        for i in range(3):
            ra, rb = np.repeat(a, wa[i]), np.repeat(b, wb[i])
            assert got["vim"]["auroc"][i] == pytest.approx(slow_auroc(ra, rb), abs=1e-12)
            assert got["vim"]["fpr95"][i] == pytest.approx(slow_fpr95_vim(ra, rb), abs=1e-12)
            for conv in ("oe", "openood"):  # the conventions of ood.metrics, tested there against sklearn
                assert got[conv]["fpr95"][i] == pytest.approx(evaluate(ra, rb, conv)["fpr95"], abs=1e-12)


def test_each_resample_is_the_metric_of_its_drawn_scores():
    """The documented draws: ID resample b from default_rng([seed, 0, b]), OOD from [seed, stream, b]."""
    rng = np.random.default_rng(1)
    a, b = tied_scores(rng, 40, 12), tied_scores(rng, 30, 12) - 2
    r = bootstrap.resample(a, b, n=6, seed=3, fpr="vim", ood_stream=2)
    for j in range(6):
        ia = np.random.default_rng([3, 0, j]).integers(0, a.size, a.size)
        ib = np.random.default_rng([3, 2, j]).integers(0, b.size, b.size)
        assert r["auroc"][j] == pytest.approx(slow_auroc(a[ia], b[ib]), abs=1e-12)
        assert r["fpr95"][j] == pytest.approx(slow_fpr95_vim(a[ia], b[ib]), abs=1e-12)


def test_batches_do_not_change_the_draws(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    whole = bootstrap.resample(a, b, n=40, seed=5)
    monkeypatch.setattr(bootstrap, "_BLOCK", 700)  # two resamples per batch
    split = bootstrap.resample(a, b, n=40, seed=5)
    assert np.array_equal(whole["auroc"], split["auroc"]) and np.array_equal(whole["fpr95"], split["fpr95"])


def test_intervals_contain_the_estimate_and_shrink_with_more_samples():
    rng = np.random.default_rng(3)
    widths = []
    for n_id, n_ood in ((200, 100), (3200, 1600)):
        a, b = rng.normal(1, 1, n_id), rng.normal(0, 1, n_ood)
        point = evaluate(a, b)
        ci = bootstrap.intervals(a, b, n=400, seed=0)
        for k in ("auroc", "fpr95"):
            lo, hi = ci[k]
            assert lo <= point[k] <= hi, (k, lo, point[k], hi)
        widths.append({k: ci[k][1] - ci[k][0] for k in ci})
    for k in ("auroc", "fpr95"):  # 16x the data: about a quarter of the width
        assert widths[1][k] < 0.5 * widths[0][k], (k, widths)


def test_percentile_interval_is_the_central_quantiles():
    values = np.random.default_rng(4).normal(size=1001)
    lo, hi = bootstrap.percentile_interval(values, 0.9)
    s = np.sort(values)
    assert lo == pytest.approx(s[50]) and hi == pytest.approx(s[950])


def test_result_intervals_share_the_id_resamples_and_average_per_resample():
    rng = np.random.default_rng(5)
    ident = rng.normal(1, 1, 150)
    scores = {"a": {"id": ident, "near": rng.normal(0.5, 1, 80), "far": rng.normal(-1, 1, 90)},
              "b": {"id": ident + 0.1, "near": rng.normal(0.4, 1, 80)}}  # b could not score far
    result = SimpleNamespace(scores=scores, datasets=["near", "far"], fpr="vim")
    out = bootstrap.result_intervals(result, n=100, seed=7, groups={"near": ["near"], "far": ["far"]})
    per = {name: bootstrap.resample(ident, scores["a"][name], 100, 7, "vim", ood_stream=i + 1)
           for i, name in enumerate(["near", "far"])}
    mean = (per["near"]["auroc"] + per["far"]["auroc"]) / 2
    assert out["a"]["means"]["all"]["auroc"] == pytest.approx(bootstrap.percentile_interval(mean))
    assert out["a"]["sets"]["far"]["fpr95"] == pytest.approx(bootstrap.percentile_interval(per["far"]["fpr95"]))
    assert out["a"]["means"]["near"] == out["a"]["sets"]["near"]
    assert set(out["b"]["sets"]) == {"near"} and set(out["b"]["means"]) == {"near"}  # no far, no mean over it


def test_bad_arguments():
    with pytest.raises(InputError, match="at least 1"):
        bootstrap.resample([1.0, 2.0], [0.0], n=0)
    with pytest.raises(InputError, match="NaN"):
        bootstrap.intervals([1.0, np.nan], [0.0], n=5)
    with pytest.raises(InputError, match="convention"):
        bootstrap.metrics_from_counts(np.ones((1, 2)), np.ones((1, 2)), fpr="bogus")
