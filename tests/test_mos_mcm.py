"""MOS and MCM against direct formulas written here, and both through benchmark.py (--head, group head as fc)."""
import json

import numpy as np
import pytest
from scipy.special import softmax

from ood.benchmark import main as benchmark_main
from ood.inputs import load_inputs, select_methods
from ood.detectors import create
from ood.features import FeatureFileError, Head, write_fc, write_features
from ood.heads import GroupHead, group_accuracy, write_group_head
from ood.split import Split

C, D = 9, 12
LAYOUT = np.array([2, 0, 1, 0, 2, 3, 1, 3, 0])  # group index per class, not contiguous


def random_group_head(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    G = LAYOUT.max() + 1
    return GroupHead((rng.normal(size=(C, D)) * scale).astype(np.float32), rng.normal(size=C).astype(np.float32),
                     others_weight=(rng.normal(size=(G, D)) * scale).astype(np.float32),
                     others_bias=rng.normal(size=G).astype(np.float32), group_of_class=LAYOUT.copy())


def group_softmaxes(h, head):
    """For every group, its softmax over [others, its classes in class order] (float64)."""
    z = head.weight.astype(np.float64) @ h + head.bias
    o = head.others_weight.astype(np.float64) @ h + head.others_bias
    out = []
    for g in range(head.num_groups):
        members = np.flatnonzero(head.group_of_class == g)
        out.append((members, softmax(np.r_[o[g], z[members]])))
    return out


def mos_slow(h, head):
    return -min(p[0] for _, p in group_softmaxes(h, head))


def predict_slow(h, head):
    """MOS's prediction: each group's best class (others left out), then the group whose best is highest."""
    best = [(p[1:].max(), members[p[1:].argmax()]) for members, p in group_softmaxes(h, head)]
    return max(best)[1]


def split_with(head, x, labels=None, name="s"):
    s = Split.from_arrays(name, x, head.class_head(), labels=labels)
    s.extras["group_head"] = head
    return s


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_mos_matches_the_direct_formula(scale):
    head = random_group_head(scale=scale)
    x = np.random.default_rng(1).normal(size=(50, D)).astype(np.float32)
    det = create("mos").fit(split_with(head, x))
    got = det.score(split_with(head, x))
    want = np.array([mos_slow(h, head) for h in x.astype(np.float64)])
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_group_accuracy_is_group_and_class_both_right():
    head = random_group_head(seed=2)
    x = np.random.default_rng(3).normal(size=(200, D)).astype(np.float32)
    pred = np.array([predict_slow(h, head) for h in x.astype(np.float64)])
    y = pred.copy()
    y[::4] = (y[::4] + 1) % C  # a quarter wrong
    y[1] = -1  # unknown rows are left out
    known = y >= 0
    assert group_accuracy(head, x, y, "cpu") == pytest.approx((pred[known] == y[known]).mean())


def test_mos_without_a_group_head_is_refused():
    head = random_group_head()
    x = np.zeros((3, D), np.float32)
    with pytest.raises(ValueError, match="mos needs a group-softmax head"):
        create("mos").fit(Split.from_arrays("train", x, head.class_head()))


def zeroshot_head(seed=0, scale=100.0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=(C, D))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return t, Head((scale * t).astype(np.float32), np.zeros(C, np.float32), attrs={"logit_scale": scale})


@pytest.mark.parametrize("T", [1.0, 0.5])
def test_mcm_matches_the_direct_formula(T):
    t, head = zeroshot_head()
    x = np.random.default_rng(4).normal(size=(40, D)).astype(np.float32) * 5
    got = create("mcm", T=T).score(Split.from_arrays("s", x, head))
    want = np.array([softmax((t @ (h / np.linalg.norm(h))) / T).max() for h in x.astype(np.float64)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_mcm_refuses_a_head_without_logit_scale():
    _, head = zeroshot_head()
    plain = Head(head.weight, head.bias)
    with pytest.raises(FeatureFileError, match="logit_scale"):
        create("mcm").score(Split.from_arrays("s", np.ones((2, D), np.float32), plain))


# --------------------------------------------------------------------------------------------- benchmark.py


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(5)
    head = random_group_head(seed=6, scale=2.0)
    centers = rng.normal(size=(C, D)) * 3
    for name, n in (("train", 300), ("val", 120)):
        y = rng.integers(0, C, n)
        write_features(tmp_path / f"{name}.h5", (centers[y] + rng.normal(size=(n, D))).astype(np.float32), labels=y)
    write_features(tmp_path / "far.h5", (rng.normal(size=(80, D)) * 6).astype(np.float32))
    write_group_head(tmp_path / "group.h5", head)
    flat = rng.normal(size=(C, D)).astype(np.float32)
    write_fc(tmp_path / "fc.h5", flat, np.zeros(C, np.float32))
    return tmp_path, head


def feature_args(d):
    return [str(d / "train.h5"), str(d / "val.h5"), str(d / "far.h5"), "--quiet"]


def mos_record(d):
    return next(r for r in json.loads((d / "r.json").read_text())["records"] if r["method"] == "mos")


def test_benchmark_reads_a_group_head_as_the_fc_file(files, capsys):
    d, head = files
    assert benchmark_main([str(d / "group.h5"), *feature_args(d), "--methods", "mos,msp",
                           "--json", str(d / "r.json")]) == 0
    out = capsys.readouterr().out
    from ood.features import FeatureFile
    val = FeatureFile(d / "val.h5")
    acc = group_accuracy(head, val.read("features"), val.labels(), "cpu")
    assert f"ID accuracy: {100 * acc:.2f}%" in out
    from ood.metrics import evaluate
    far = FeatureFile(d / "far.h5").read("features").astype(np.float64)
    s_id = [mos_slow(h, head) for h in val.read("features").astype(np.float64)]
    want = evaluate(np.array(s_id), np.array([mos_slow(h, head) for h in far]))
    assert mos_record(d)["auroc"] == pytest.approx(want["auroc"], abs=1e-6)


def test_benchmark_head_option_next_to_a_flat_fc(files, capsys):
    d, head = files
    assert benchmark_main([str(d / "fc.h5"), *feature_args(d), "--head", str(d / "group.h5"),
                           "--methods", "mos,energy", "--json", str(d / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "note: group head" in out and "group and class both right" in out
    assert mos_record(d)["dataset"] == "far"


def test_benchmark_skips_or_refuses_mos_and_mcm_without_their_heads(files, capsys):
    d, _ = files
    inputs = load_inputs(d / "fc.h5", d / "train.h5", d / "val.h5", [d / "far.h5"])
    methods = select_methods(None, inputs, "train.h5")
    assert "mos" not in methods and "mcm" not in methods and "msp" in methods
    assert any(n.startswith("mos skipped") for n in inputs.notes)
    assert any(n.startswith("mcm skipped") for n in inputs.notes)
    inputs = load_inputs(d / "fc.h5", d / "train.h5", d / "val.h5", [d / "far.h5"], group_head=d / "group.h5")
    assert "mos" in select_methods(None, inputs, "train.h5")
    assert benchmark_main([str(d / "fc.h5"), *feature_args(d), "--methods", "mos"]) == 2
    assert capsys.readouterr().err.startswith("error: mos needs a group-softmax head")
    assert benchmark_main([str(d / "fc.h5"), *feature_args(d), "--methods", "msp,mcm"]) == 2
    assert "error: mcm needs a CLIP zero-shot fc head" in capsys.readouterr().err


def test_benchmark_runs_mcm_and_logit_detectors_on_a_zeroshot_head(files, capsys):
    d, _ = files
    t, head = zeroshot_head(scale=50.0)
    write_fc(d / "zs.h5", head.weight, head.bias, logit_scale=50.0)
    assert benchmark_main([str(d / "zs.h5"), *feature_args(d), "--methods", "mcm,msp,energy,gen",
                           "--json", str(d / "r.json")]) == 0
    recs = {r["method"]: r for r in json.loads((d / "r.json").read_text())["records"]}
    assert set(recs) == {"mcm", "msp", "energy", "gen"}
    assert 0.0 <= recs["mcm"]["auroc"] <= 1.0
