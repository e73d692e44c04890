"""The public library API: the notebook example, stale-score safety, NotFittedError, plugins, provenance."""
import doctest
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ood
from ood.benchmark import main as benchmark_main
from ood.split import Split

from .helpers import write_problem

ROOT = Path(__file__).resolve().parents[1]


def test_public_names():
    for name in ("create", "list_detectors", "register", "evaluate", "FeatureFile", "Head", "Split",
                 "run_benchmark", "InputError", "NotFittedError"):
        assert name in dir(ood) and getattr(ood, name) is not None


def _problem(seed):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(6, 12))
    x = rng.normal(size=(120, 6)) @ B + 0.05 * rng.normal(size=(120, 12))
    return x, rng.integers(0, 3, 120)


@pytest.mark.parametrize("method", ["vim", "residual", "gen_residual", "mahalanobis", "rmd", "knn", "nnguide",
                                    "she", "kl_matching", "neco", "react", "dice"])
def test_refit_on_other_train_gives_fresh_scores(method):
    """Fit on train A, score T; fit on train B, score T: equal to the scores of a fresh detector and split."""
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 12)), rng.normal(size=3)
    (xa, ya), (xb, yb) = _problem(1), _problem(2)
    xt = 3 * rng.normal(size=(40, 12))
    params = {"k": 5} if method in ("knn", "nnguide") else {}
    head = ood.Head(W.astype(np.float32), b.astype(np.float32))
    t = Split.from_arrays("t", xt, head)
    det = ood.create(method, **params)
    det.fit(Split.from_arrays("a", xa, head, labels=ya))
    first = det.score(t)
    det.fit(Split.from_arrays("b", xb, head, labels=yb))
    again = det.score(t)
    fresh = ood.create(method, **params).fit(Split.from_arrays("b2", xb, head, labels=yb)).score(
        Split.from_arrays("t2", xt, head))
    np.testing.assert_array_equal(again, fresh)
    assert not np.array_equal(first, again)


def test_new_labels_drop_label_statistics():
    rng = np.random.default_rng(3)
    x, y = _problem(4)
    W, b = rng.normal(size=(3, 12)), np.zeros(3)
    head = ood.Head(W.astype(np.float32), b.astype(np.float32))
    train, test = Split.from_arrays("a", x, head, labels=y), Split.from_arrays("t", x[:20], head)
    first = ood.create("mahalanobis").fit(train).score(test)
    y2 = np.random.default_rng(7).integers(0, 3, y.size)  # another partition of the rows
    train.labels = y2
    relabelled = ood.create("mahalanobis").fit(train).score(test)
    fresh = ood.create("mahalanobis").fit(Split.from_arrays("b", x, head, labels=y2)).score(
        Split.from_arrays("t2", x[:20], head))
    np.testing.assert_allclose(relabelled, fresh, rtol=1e-12)
    assert not np.allclose(first, relabelled)


def test_split_uids_are_never_reused():
    uids = set()
    for _ in range(200):
        s = Split.from_arrays("x", np.ones((2, 3)))
        assert s.uid not in uids
        uids.add(s.uid)
        del s


def test_unfitted_detector_refuses_to_score():
    with pytest.raises(ood.NotFittedError, match="call fit"):
        ood.create("mahalanobis").score(np.ones((3, 4)))


def test_head_optional_for_feature_detectors_and_required_for_logits():
    x, y = _problem(5)
    s = ood.create("knn", k=3).fit(x).score(x[:5])
    assert s.shape == (5,) and np.isfinite(s).all()
    with pytest.raises(ood.InputError, match="needs the classifier head"):
        ood.create("energy").fit(x).score(x[:5])


@pytest.mark.parametrize("params, match", [({"dim": 1.5}, "vim.dim must be an integer"),
                                           ({"dim": "abc"}, "vim.dim"), ({"nope": 1}, "unknown parameter vim.nope")])
def test_parameters_checked_at_create(params, match):
    with pytest.raises(ood.ParameterError, match=match):
        ood.create("vim", **params)


@pytest.mark.parametrize("method, params", [("knn", {"k": 0}), ("gen", {"gamma": -1.0}), ("odin", {"T": 0.0}),
                                            ("react", {"clip_quantile": 1.5}), ("gen", {"M": 0})])
def test_out_of_range_parameters_refused(method, params):
    with pytest.raises(ood.ParameterError, match=f"{method}.{next(iter(params))} must be"):
        ood.create(method, **params)


PLUGIN = '''
import numpy as np
import ood


@ood.register("norm_plugin_test")
class FeatureNorm(ood.Detector):
    """Minus the distance of the feature norm from the mean train norm."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def fit(self, train):
        self.mean_ = float(np.linalg.norm(train.features, axis=1).mean())
        return self

    def score(self, split):
        return -self.scale * np.abs(np.linalg.norm(split.features, axis=1) - self.mean_)
'''


@pytest.fixture
def registry_restored():
    """The registry as it was before the test: a plugin registered in-process must not leak into later runs."""
    from ood.detectors import base
    before = dict(base._REGISTRY)
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def test_plugin_detector_runs_through_the_cli(tmp_path, capsys, registry_restored):
    d = write_problem(tmp_path)
    plugin = tmp_path / "my_detector.py"
    plugin.write_text(PLUGIN)
    out = tmp_path / "r.json"
    assert benchmark_main([str(d[k]) for k in ("fc", "train", "test", "near")] + [
        "--plugin", str(plugin), "--methods", "norm_plugin_test,msp", "--param", "norm_plugin_test.scale=2",
        "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert {r["method"] for r in res["records"]} == {"norm_plugin_test", "msp"}
    assert res["provenance"]["params"]["norm_plugin_test"] == {"scale": 2.0}


def test_json_names_every_hyperparameter_and_the_provenance(tmp_path):
    d = write_problem(tmp_path)
    out = tmp_path / "r.json"
    assert benchmark_main([str(d[k]) for k in ("fc", "train", "test", "near")] + [
        "--methods", "vim,gen,knn", "--param", "vim.dim=4", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    prov = res["provenance"]
    assert prov["params"]["vim"] == {"dim": 4}
    assert prov["params"]["gen"] == {"gamma": 0.1, "M": 100}
    assert prov["params"]["knn"] == {"k": 50, "search": "exact", "nlist": 0, "nprobe": 0, "hnsw_m": 32, "ef_search": 0}
    assert prov["fitted"]["vim"]["dim_"] == 4
    assert prov["fpr_convention"] == "vim" and "id_accuracy" in prov
    roles = {f["role"]: f for f in prov["inputs"]}
    assert roles["train"]["bytes"] == d["train"].stat().st_size and roles["train"]["model"] == "toy"
    assert "numpy" in prov["library_versions"] and prov["command"][0] and prov["date"]
    assert all(r["params"] == prov["params"][r["method"]] for r in res["records"])


def test_mixed_models_refused_unless_allowed(tmp_path, capsys):
    d = write_problem(tmp_path, ood_model="other")
    argv = [str(d[k]) for k in ("fc", "train", "test", "near")] + ["--methods", "msp", "--quiet"]
    assert benchmark_main(argv) == 2
    err = capsys.readouterr().err
    assert "different models" in err and "near.h5" in err and "--allow_mixed_models" in err
    assert benchmark_main(argv + ["--allow_mixed_models"]) == 0
    assert "mixed models allowed" in capsys.readouterr().out


def test_run_benchmark_result_object(tmp_path):
    d = write_problem(tmp_path)
    res = ood.run_benchmark(d["fc"], d["train"], d["test"], [d["near"]], methods=["msp", "energy"])
    assert [r["method"] for r in res.records] == ["msp", "energy"]
    assert set(res.scores["msp"]) == {"id", "near"}
    pd = pytest.importorskip("pandas")
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame) and list(frame["method"]) == ["msp", "energy"]


def _public_modules():
    names = ["ood"]
    for info in pkgutil.walk_packages(ood.__path__, "ood."):
        if info.name.endswith("__main__") or ".backbones." in info.name:
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", _public_modules())
def test_docstring_examples_run(name):
    try:
        module = importlib.import_module(name)
    except ImportError as e:  # an optional extra that is not installed
        pytest.skip(str(e))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_readme_python_blocks_run(tmp_path):
    """Every code block of the README marked as Python runs as written."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for code in blocks:
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120)
