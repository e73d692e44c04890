"""Test helpers shared by the test modules: small random problems and their benchmark input files."""
import numpy as np

from ood.features import Head
from ood.split import Split


def make_problem(seed=0, C=7, D=16, n_train=400, n_test=120, n_ood=90):
    """Small random features with class structure: train (labelled), ID test, one OOD set, and a head."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(C, D)) * 2
    W = rng.normal(size=(C, D)).astype(np.float32)
    b = rng.normal(size=C).astype(np.float32)

    def sample(n, labelled=True):
        y = rng.integers(0, C, n)
        x = np.abs(centers[y] + rng.normal(size=(n, D))) if labelled else np.abs(rng.normal(size=(n, D)) * 2.5)
        return x.astype(np.float32), (y if labelled else np.full(n, -1))

    head = Head(W, b)
    xtr, ytr = sample(n_train)
    xte, yte = sample(n_test)
    xo, yo = sample(n_ood, labelled=False)
    return {
        "head": head,
        "train": Split.from_arrays("train", xtr, head, labels=ytr),
        "test": Split.from_arrays("id", xte, head, labels=yte),
        "ood": Split.from_arrays("ood", xo, head, labels=yo),
        "arrays": {"train": (xtr, ytr), "test": (xte, yte), "ood": (xo, yo)},
    }


def write_problem_files(directory, seed=5):
    """A problem as benchmark.py inputs: fc.h5, train.h5, val.h5 (ID test), near.h5 and far.h5 (OOD)."""
    from ood.features import write_fc, write_features

    p = make_problem(seed=seed)
    head = p["head"]
    write_fc(directory / "fc.h5", head.weight, head.bias)
    for name, key in (("train", "train"), ("val", "test"), ("near", "ood")):
        x, y = p["arrays"][key]
        write_features(directory / f"{name}.h5", x, labels=y)
    far = np.abs(np.random.default_rng(9).normal(size=(70, head.dim)) * 3).astype(np.float32)
    write_features(directory / "far.h5", far)
    return p


def benchmark_args(d, *extra):
    """benchmark.py arguments over the files of :func:`write_problem_files` in ``d``."""
    return [str(d / "fc.h5"), str(d / "train.h5"), str(d / "val.h5"), str(d / "near.h5"), str(d / "far.h5"),
            "--quiet", *extra]


def write_problem(directory, seed=5, model="toy", ood_model=None):
    """Like :func:`write_problem_files`, with a ``model`` attribute in every file (``ood_model`` for the OOD
    file near.h5); returns the paths by role: fc, train, test, near, far."""
    from ood.features import write_fc, write_features

    p = make_problem(seed=seed)
    head = p["head"]
    write_fc(directory / "fc.h5", head.weight, head.bias, model=model)
    paths = {"fc": directory / "fc.h5"}
    for name, key in (("train", "train"), ("test", "test"), ("near", "ood")):
        x, y = p["arrays"][key]
        write_features(directory / f"{name}.h5", x, labels=y, model=ood_model if name == "near" and ood_model else model)
        paths[name] = directory / f"{name}.h5"
    return paths


def float64_arrays(problem):
    """(W, b, train features, train labels) of a :func:`make_problem` problem, the arrays in float64."""
    W = problem["head"].weight.astype(np.float64)
    b = problem["head"].bias.astype(np.float64)
    xtr, ytr = problem["arrays"]["train"]
    return W, b, xtr.astype(np.float64), ytr


def assert_matches_slow(problem, name, slow, rtol=1e-5, atol=1e-6, **params):
    """Fit ``name`` on the problem's train split and compare its float64 scores of the test and OOD splits with
    ``slow(row)``, a float64 restatement called once per row; returns the fitted detector."""
    from ood.detectors import create

    det = create(name, **params).fit(problem["train"])
    for key in ("test", "ood"):
        got = det.score(problem[key])
        want = np.array([slow(h) for h in problem["arrays"][key][0].astype(np.float64)])
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{name} on {key}")
    return det
