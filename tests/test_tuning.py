"""Tuning on cached features: the known-best grid point wins, a test OOD file is refused as validation set, and
benchmark.py --tune end to end on small random files."""
import json
import re
import shutil

import h5py
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood import tuning
from ood.benchmark import main
from ood.detectors import base, create
from ood.features import Head, write_features
from ood.split import Split
from tests.helpers import benchmark_args, make_problem, write_problem_files


class Column(base.Detector):
    """Toy detector: the score is one feature column."""
    grid = {"col": [0, 1, 2, 3], "sign": [1.0, -1.0]}

    def __init__(self, col: int = 0, sign: float = 1.0):
        self.col, self.sign = col, sign

    def score(self, split):
        return self.sign * split.features[:, self.col].astype(np.float64)


@pytest.fixture
def column(monkeypatch):
    monkeypatch.setitem(base._REGISTRY, "column", Column)


def split(name, x):
    head = Head(np.ones((2, x.shape[1]), np.float32), np.zeros(2, np.float32))
    return Split.from_arrays(name, x.astype(np.float32), head)


def auroc(id_scores, ood_scores):
    return roc_auc_score(np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))], np.r_[id_scores, ood_scores])


def test_grid_points_are_the_product_less_the_fixed_parameters(column):
    assert len(tuning.grid_points("column")) == 8
    assert tuning.grid_points("column", {"sign": 1.0}) == [{"col": c} for c in range(4)]
    assert tuning.grid_points("msp") == [{}]


def test_tuning_picks_the_known_best_point(column):
    rng = np.random.default_rng(0)
    x_id, x_ood = rng.normal(size=(200, 4)), rng.normal(size=(150, 4))
    x_id[:, 2] += 1.0  # ID is larger on column 2 (noisy: AUROC well below 1)
    x_ood[:, 1] += 3.0  # OOD is much larger on column 1: -column 1 separates best
    choice = tuning.tune_method("column", split("train", x_id), split("id", x_id), split("ood", x_ood))
    assert choice.params == {"col": 1, "sign": -1.0}
    assert choice.auroc == pytest.approx(auroc(-x_id[:, 1], -x_ood[:, 1]))
    assert choice.tried == 8
    fixed = tuning.tune_method("column", split("train", x_id), split("id", x_id), split("ood", x_ood), {"sign": 1.0})
    assert fixed.params == {"col": 2}


def test_tuning_a_real_grid_equals_brute_force():
    p = make_problem(seed=2)
    val_id, val_ood = p["test"], p["ood"]
    got = tuning.tune(p["train"], val_id, val_ood, ["vra", "nci"])
    for name in ("vra", "nci"):
        tried = {}
        for point in tuning.grid_points(name):
            det = create(name, **point).fit(p["train"])
            tried[tuple(point.items())] = auroc(det.score(val_id), det.score(val_ood))
        best = max(tried.values())
        assert got[name].auroc == pytest.approx(best, abs=1e-12)
        assert tried[tuple(got[name].params.items())] == pytest.approx(best, abs=1e-12)


def test_hold_out_is_seeded_and_disjoint():
    p = make_problem()
    val, rest = tuning.hold_out(p["test"])
    val2, _ = tuning.hold_out(p["test"])
    x = p["arrays"]["test"][0]
    assert val.n == 12 and rest.n == 108
    np.testing.assert_array_equal(val.features, val2.features)
    rows = {r.tobytes() for r in x}
    assert {r.tobytes() for r in val.features} | {r.tobytes() for r in rest.features} == rows
    assert not {r.tobytes() for r in val.features} & {r.tobytes() for r in rest.features}


@pytest.fixture
def files(tmp_path):
    p = write_problem_files(tmp_path)
    rng = np.random.default_rng(10)
    write_features(tmp_path / "ood_val.h5", np.abs(rng.normal(size=(60, p["head"].dim)) * 2.5).astype(np.float32))
    q = make_problem(seed=6)
    write_features(tmp_path / "id_val.h5", q["arrays"]["test"][0], labels=q["arrays"]["test"][1])
    return tmp_path, p


args = benchmark_args


def slow_knn(xtr, x, k):
    bank = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(((q[:, None, :] - bank[None]) ** 2).sum(-1), 0))
    return -np.sort(d, axis=1)[:, k - 1]


def test_cli_tune_with_id_validation_file(files, capsys):
    d, p = files
    assert main(args(d, "--methods", "knn,odin,msp", "--tune", str(d / "ood_val.h5"), "--tune_id",
                     str(d / "id_val.h5"), "--json", str(d / "r.json"))) == 0
    out = capsys.readouterr().out
    k = int(re.search(r"note: tuned knn: k=(\d+) \(validation AUROC", out).group(1))
    assert "2 could not be scored" in out  # k = 500 and 1000 exceed the 400 train rows
    assert re.search(r"note: tuned odin: T=[\d.]+", out)
    assert "not tuned (no grid, or every parameter fixed): msp" in out
    # the chosen k is the best of the feasible grid on the validation files, recomputed here
    xtr = p["arrays"]["train"][0].astype(np.float64)
    q = make_problem(seed=6)["arrays"]["test"][0].astype(np.float64)
    import h5py
    with h5py.File(d / "ood_val.h5") as f:
        xv = f["features"][:].astype(np.float64)
    val = {kk: auroc(slow_knn(xtr, q, kk), slow_knn(xtr, xv, kk)) for kk in (50, 100, 200)}
    assert val[k] == pytest.approx(max(val.values()), abs=2 / (120 * 60))
    # the test sets are scored whole with the chosen k
    rec = next(r for r in json.loads((d / "r.json").read_text())["records"] if r["method"] == "knn" and r["dataset"] == "near")
    x_id, x_ood = (p["arrays"][s][0].astype(np.float64) for s in ("test", "ood"))
    want = auroc(slow_knn(xtr, x_id, k), slow_knn(xtr, x_ood, k))
    assert rec["auroc"] == pytest.approx(want, abs=2 / (120 * 90))  # float32 distances may swap a near tie


def test_cli_tune_holds_out_part_of_the_id_test_split(files, capsys):
    d, p = files
    assert main(args(d, "--methods", "nci", "--tune", str(d / "ood_val.h5"), "--json", str(d / "r.json"))) == 0
    out = capsys.readouterr().out
    assert "a seeded 10% of the ID test split (12 of 120 rows, seed 0), left out of the reported results" in out
    alpha = float(re.search(r"note: tuned nci: alpha=([\d.e-]+)", out).group(1))
    held = np.zeros(120, bool)
    held[np.random.default_rng(0).choice(120, 12, replace=False)] = True
    W, b = p["head"].weight.astype(np.float64), p["head"].bias.astype(np.float64)
    m = p["arrays"]["train"][0].astype(np.float64).mean(0)

    def nci(x):
        x = x.astype(np.float64)
        c = x - m
        w = W[np.argmax(x @ W.T + b, axis=1)]
        return (w * c).sum(1) / np.linalg.norm(c, axis=1) + alpha * np.abs(x).sum(1)
    rec = next(r for r in json.loads((d / "r.json").read_text())["records"] if r["dataset"] == "near")
    want = auroc(nci(p["arrays"]["test"][0][~held]), nci(p["arrays"]["ood"][0]))
    assert rec["auroc"] == pytest.approx(want, abs=1e-9)


def test_cli_param_keeps_a_value_fixed(files, capsys):
    d, _ = files
    assert main(args(d, "--methods", "knn", "--param", "knn.k=7", "--tune", str(d / "ood_val.h5"))) == 0
    assert "not tuned (no grid, or every parameter fixed): knn" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["same", "copy", "link"])
def test_cli_refuses_a_test_ood_file_as_validation_set(files, capsys, how):
    d, _ = files
    val = d / "near.h5"
    if how == "copy":
        val = d / "copy_of_near.h5"
        shutil.copy(d / "near.h5", val)
    elif how == "link":
        val = d / "link.h5"
        val.symlink_to(d / "near.h5")
    assert main(args(d, "--methods", "msp", "--tune", str(val))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "test OOD set near" in err[0]


def test_cli_refuses_the_id_test_file_as_id_validation(files, capsys):
    d, _ = files
    assert main(args(d, "--methods", "msp", "--tune", str(d / "ood_val.h5"), "--tune_id", str(d / "val.h5"))) == 2
    assert "ID test set" in capsys.readouterr().err


def test_cli_tune_id_alone_is_an_error(files, capsys):
    d, _ = files
    assert main(args(d, "--methods", "msp", "--tune_id", str(d / "id_val.h5"))) == 2
    assert "--tune_id is an ID validation file for --tune OOD_VAL" in capsys.readouterr().err


def test_knn_sweep_searches_each_split_once(monkeypatch):
    from ood.detectors import knn
    calls = []
    search = knn.top_similarities
    monkeypatch.setattr(knn, "faiss", None)
    monkeypatch.setattr(knn, "top_similarities", lambda *a, **kw: calls.append(a[3]) or search(*a, **kw))
    p = make_problem(seed=3)
    choice = tuning.tune_method("knn", p["train"], p["test"], p["ood"])
    assert calls == [200, 200]  # k = 1000 and 500 exceed the 400 train rows; 200 serves 100 and 50 too
    assert choice.tried == 3 and choice.skipped == 2
