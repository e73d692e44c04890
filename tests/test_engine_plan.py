"""The run's plan of shared values: detectors that share a kept value run next to each other, the value is freed
after its last reader, and neither changes a score or the order of the results."""
import numpy as np

from ood.detectors import create
from ood.engine import run_detectors
from ood.features import Head
from ood.inputs import Inputs
from ood.split import Split

from .helpers import make_problem

METHODS = ["react", "local_react", "gen_react", "gen_local_react", "msp"]


def inputs_of(p):
    head = p["head"]
    x, y = p["arrays"]["train"]
    train = Split.from_arrays("train", x, head, labels=y)
    test = Split.from_arrays("id", p["arrays"]["test"][0], head, labels=p["arrays"]["test"][1])
    ood = Split.from_arrays("ood", p["arrays"]["ood"][0], head)
    return Inputs(head, train, test, [ood])


def test_clipped_logits_are_held_one_kind_at_a_time_and_freed_after_their_last_reader(monkeypatch):
    p = make_problem(seed=3)
    inputs = inputs_of(p)
    events = []
    forget = Split.forget
    monkeypatch.setattr(Split, "forget", lambda self, prefix: (events.append(("free", prefix[1], self.name)),
                                                               forget(self, prefix)))
    result = run_detectors(inputs, METHODS, log=lambda m: events.append(("done", m.split("]")[1].split()[0])))
    order = [e[:2] for e in events if e[0] == "done" or e[2] == "ood"]
    assert order == [("done", "react"), ("free", "train"), ("done", "gen_react"), ("done", "local_react"),
                     ("free", "local"), ("done", "gen_local_react"), ("done", "msp")]
    assert [r["method"] for r in result.records] == METHODS and list(result.scores) == METHODS
    for split in inputs.splits:
        assert not [k for k in split._memo if isinstance(k, tuple) and k[0] == "clipped_logits"]
    for name in METHODS:  # each alone, on fresh splits: the same scores
        alone = inputs_of(p)
        det = create(name).fit(alone.train)
        np.testing.assert_array_equal(result.scores[name]["ood"], det.score(alone.oods[0]))
        np.testing.assert_array_equal(result.scores[name]["id"], det.score(alone.test))


def test_react_family_keeps_a_summary_not_the_clipped_logits_and_widens_it_for_a_larger_gen_m():
    import torch

    from ood.detectors.logits import gen_from_logits
    from ood.detectors.react import SUMMARY_TOP

    rng = np.random.default_rng(4)
    C, D = 150, 12
    W, b = rng.normal(size=(C, D)).astype(np.float32), rng.normal(size=C).astype(np.float32)
    x = np.abs(rng.normal(size=(300, D))).astype(np.float32)
    q = np.abs(rng.normal(size=(40, D)) * 1.5).astype(np.float32)
    head = Head(W, b)
    train, split = Split.from_arrays("train", x, head), Split.from_arrays("q", q, head)
    c = float(np.quantile(x, 0.9))
    clipped = np.minimum(q, c).astype(np.float64) @ W.T.astype(np.float64) + b
    energy = np.log(np.exp(clipped - clipped.max(1, keepdims=True)).sum(1)) + clipped.max(1)
    react = create("react", clip_quantile=0.9).fit(train)
    np.testing.assert_allclose(react.score(split), energy, rtol=1e-5)
    (key,) = [k for k in split._memo if isinstance(k, tuple) and k[0] == "clipped_logits"]
    assert split._memo[key].shape == (40, 2 + SUMMARY_TOP)  # not the 150 clipped logits
    for M in (30, 120):  # within the summary, and wider than it (remade)
        got = create("gen_react", clip_quantile=0.9, M=M).fit(train).score(split)
        want = gen_from_logits(torch.from_numpy(clipped.astype(np.float32)), 0.1, M).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert split._memo[key].shape == (40, 2 + 120)
