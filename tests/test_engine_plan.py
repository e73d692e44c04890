"""The run's plan of shared values: detectors that share a kept value run next to each other, the value is freed
after its last reader, and neither changes a score or the order of the results."""
import numpy as np

from ood.detectors import create
from ood.engine import run_detectors
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
