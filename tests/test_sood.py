"""The SOOD protocol (benchmark.py --protocol sood) on random features, against direct computations."""
import csv
import json

import numpy as np
import pytest

from ood.benchmark import main
from ood.features import write_fc, write_features
from ood.sood import holdout_mask

C, D = 4, 12
SUPER = ["bird", "car", "dog", "tree"]  # superclass name of class c


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(3)
    W = (0.15 * rng.normal(size=(C, D))).astype(np.float32)  # moderate logits: no saturated softmax ties
    b = rng.normal(size=C).astype(np.float32)
    centers = rng.normal(size=(C, D)) * 2
    write_fc(tmp_path / "fc.h5", W, b)
    arrays = {}
    for name, n, noise in (("train_iid", 240, 1.0), ("test_iid", 80, 1.0), ("test_easy_ood", 70, 2.0),
                           ("test_hard_ood", 60, 4.0)):
        y = rng.integers(0, C, n)
        x = np.abs(centers[y] + noise * rng.normal(size=(n, D))).astype(np.float32)
        write_features(tmp_path / f"{name}.h5", x, labels=y, extra={"superclass": [SUPER[c] for c in y]})
        arrays[name] = (x, y)
    return tmp_path, arrays, (W.astype(np.float64), b.astype(np.float64))


def msp(x, W, b):
    z = x.astype(np.float64) @ W.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).max(1)


def auroc_direct(s_id, s_ood):
    """P(ID score > OOD score) + 0.5 P(tie), over all pairs."""
    total = 0.0
    for a in s_id:
        for o in s_ood:
            total += 1.0 if a > o else 0.5 if a == o else 0.0
    return total / (len(s_id) * len(s_ood))


def fpr_vim_direct(s_id, s_ood):
    t = sorted(s_id, reverse=True)[int(np.floor(0.95 * len(s_id))) - 1]
    return sum(1 for o in s_ood if o >= t) / len(s_ood)


def accuracy_direct(x, y, W, b):
    pred = (x.astype(np.float64) @ W.T + b).argmax(1)
    out = {"all": np.mean(pred == y)}
    for c, name in enumerate(SUPER):
        rows = [i for i in range(len(y)) if y[i] == c]
        if rows:
            out[name] = sum(pred[i] == c for i in rows) / len(rows)
    return out


def run(d, *files, extra=()):
    return main([str(d / "fc.h5"), *(str(d / f"{f}.h5") for f in files), "--protocol", "sood",
                 "--methods", "msp,energy", "--quiet", *extra])


def test_sood_protocol_against_direct_computation(files, capsys):
    d, arrays, (W, b) = files
    assert run(d, "train_iid", "test_iid", "test_easy_ood", "test_hard_ood",
               extra=("--json", str(d / "r.json"), "--csv", str(d / "r.csv"))) == 0
    out = capsys.readouterr().out
    res = json.loads((d / "r.json").read_text())

    det = {(r["method"], r["dataset"]): r for r in res["detection"]}
    assert set(det) == {(m, s) for m in ("msp", "energy") for s in ("test_easy_ood", "test_hard_ood")}
    s_id = msp(arrays["test_iid"][0], W, b)
    for shifted in ("test_easy_ood", "test_hard_ood"):
        s_ood = msp(arrays[shifted][0], W, b)
        assert det["msp", shifted]["auroc"] == pytest.approx(auroc_direct(s_id, s_ood), abs=1e-9)
        assert det["msp", shifted]["fpr95"] == pytest.approx(fpr_vim_direct(s_id, s_ood), abs=1e-12)

    acc = {(r["split"], r["superclass"]): r for r in res["accuracy"]}
    for split, (x, y) in arrays.items():
        want = accuracy_direct(x, y, W, b)
        assert {g for s, g in acc if s == split} == set(want)
        for group, value in want.items():
            assert acc[split, group]["accuracy"] == pytest.approx(value, abs=1e-12)
        assert acc[split, "all"]["n"] == len(y)

    # one printed report: detection table and accuracy table with the same numbers
    assert "IID test test_iid" in out
    line = next(s for s in out.splitlines() if s.startswith("msp "))
    assert f"{100 * det['msp', 'test_hard_ood']['auroc']:.2f}" in line
    row = next(s for s in out.splitlines() if s.startswith("dog "))
    assert f"{100 * acc['test_hard_ood', 'dog']['accuracy']:.2f}" in row
    rows = list(csv.DictReader(open(d / "r.accuracy.csv")))
    assert len(rows) == len(res["accuracy"]) and float(rows[0]["accuracy"]) == res["accuracy"][0]["accuracy"]


def test_holdout_mask_is_stratified_and_seeded():
    y = np.repeat([0, 1, 2, -1], [50, 31, 9, 20])
    held = holdout_mask(y, 0.2, seed=1)
    for c, n in ((0, 50), (1, 31), (2, 9), (-1, 20)):
        assert held[y == c].sum() == round(0.2 * n)
    assert np.array_equal(held, holdout_mask(y, 0.2, seed=1))
    assert not np.array_equal(held, holdout_mask(y, 0.2, seed=2))
    with pytest.raises(ValueError):
        holdout_mask(y, 1.5)


def test_sood_holdout_when_no_iid_test(files, capsys):
    d, arrays, (W, b) = files
    assert run(d, "train_iid", "test_easy_ood", "test_hard_ood",
               extra=("--holdout_seed", "4", "--json", str(d / "r.json"))) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "seed 4" in out
    res = json.loads((d / "r.json").read_text())
    x, y = arrays["train_iid"]
    held = holdout_mask(y, 0.1, seed=4)
    acc = {(r["split"], r["superclass"]): r for r in res["accuracy"]}
    assert acc["train_iid_heldout", "all"]["n"] == held.sum()
    assert acc["train_iid", "all"]["n"] == (~held).sum()
    assert acc["train_iid_heldout", "all"]["accuracy"] == pytest.approx(accuracy_direct(x[held], y[held], W, b)["all"])
    s_id = msp(x[held], W, b)
    rec = next(r for r in res["detection"] if r["method"] == "msp" and r["dataset"] == "test_easy_ood")
    assert rec["auroc"] == pytest.approx(auroc_direct(s_id, msp(arrays["test_easy_ood"][0], W, b)), abs=1e-9)


def test_sood_fits_on_train_without_the_heldout_part(files, capsys):
    """Mahalanobis depends on the fit data: the held-out rows must not be part of it."""
    d, arrays, _ = files
    both = ("train_iid", "test_easy_ood", "test_hard_ood")
    extra = ("--methods", "mahalanobis", "--json", str(d / "a.json"))
    assert main([str(d / "fc.h5"), *(str(d / f"{f}.h5") for f in both), "--protocol", "sood", "--quiet",
                 *extra]) == 0
    held_rec = json.loads((d / "a.json").read_text())["detection"][0]
    x, y = arrays["train_iid"]
    held = holdout_mask(y, 0.1, seed=0)
    write_features(d / "fit.h5", x[~held], labels=y[~held])
    write_features(d / "iid.h5", x[held], labels=y[held])
    assert main([str(d / "fc.h5"), str(d / "fit.h5"), str(d / "iid.h5"), str(d / "test_easy_ood.h5"),
                 str(d / "test_hard_ood.h5"), "--protocol", "sood", "--quiet", "--methods", "mahalanobis",
                 "--json", str(d / "b.json")]) == 0
    direct_rec = json.loads((d / "b.json").read_text())["detection"][0]
    assert held_rec["auroc"] == pytest.approx(direct_rec["auroc"], abs=1e-9)
    capsys.readouterr()


def test_sood_bad_holdout_is_one_line(files, capsys):
    d, _, _ = files
    assert run(d, "train_iid", "test_easy_ood", "test_hard_ood", extra=("--holdout", "1.5")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "held-out fraction" in err and len(err.strip().splitlines()) == 1


def test_sood_protocol_refuses_report_options_it_does_not_use(tmp_path, capsys):
    from ood.benchmark import main

    files = [str(tmp_path / f"{n}.h5") for n in ("fc", "train_iid", "test_iid", "test_easy_ood")]
    assert main([*files, "--protocol", "sood", "--bootstrap", "10", "--near", "a"]) == 2
    err = capsys.readouterr().err
    assert "--protocol sood does not take --near, --bootstrap" in err and len(err.strip().splitlines()) == 1
