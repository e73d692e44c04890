"""benchmark.py end to end on small random files: table, JSON, CSV, and one clear line for each bad input."""
import csv
import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood.benchmark import main
from ood.features import write_features
from tests.helpers import benchmark_args, write_problem_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def files(tmp_path):
    return tmp_path, write_problem_files(tmp_path)


args = benchmark_args


def test_cli_table_json_csv(files, capsys):
    d, p = files
    assert main(args(d, "--json", str(d / "r.json"), "--csv", str(d / "r.csv"))) == 0
    out = capsys.readouterr().out
    assert "ViM" in out and "ID accuracy" in out
    recs = json.loads((d / "r.json").read_text())["records"]
    from tests.test_detectors import CORE
    methods = {r["method"] for r in recs}
    assert set(CORE) <= methods and len(recs) == 2 * len(methods)
    assert "knn" not in methods and "not run unless named in --methods" in out  # opt-in: train x test cost
    assert set(recs[0]) >= {"method", "dataset", "auroc", "fpr95", "aupr_in", "aupr_out"}
    assert {r["dataset"] for r in recs} == {"near", "far"}
    rows = list(csv.DictReader(open(d / "r.csv")))
    assert len(rows) == len(recs) and rows[0]["method"] == recs[0]["method"]
    # the energy record equals a direct computation from the arrays
    W, b = p["head"].weight.astype(np.float64), p["head"].bias.astype(np.float64)
    energy = lambda x: np.log(np.exp(x.astype(np.float64) @ W.T + b).sum(1))  # noqa: E731
    rec = next(r for r in recs if r["method"] == "energy" and r["dataset"] == "near")
    s_id, s_ood = energy(p["arrays"]["test"][0]), energy(p["arrays"]["ood"][0])
    want = roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    assert rec["auroc"] == pytest.approx(want, abs=1e-9)
    line = next(line for line in out.splitlines() if line.startswith("energy "))
    assert f"{100 * rec['auroc']:.2f}" in line


@pytest.mark.parametrize("fmt,marker", [("markdown", "|---|"), ("latex", r"\begin{tabular}")])
def test_cli_formats(files, capsys, fmt, marker):
    d, _ = files
    assert main(args(d, "--methods", "msp,vim", "--format", fmt, "--fpr", "openood")) == 0
    out = capsys.readouterr().out
    assert marker in out and "OpenOOD" in out


def test_cli_params_and_vim_flags_change_results(files, capsys):
    d, _ = files
    main(args(d, "--methods", "gen", "--json", str(d / "a.json")))
    main(args(d, "--methods", "gen", "--gamma", "0.9", "--M", "2", "--json", str(d / "b.json")))
    main(args(d, "--methods", "gen", "--param", "gen.gamma=0.9", "--param", "gen.M=2", "--json", str(d / "c.json")))
    a, b, c = (json.loads((d / f"{k}.json").read_text())["records"] for k in "abc")
    assert a != b and b == c


def test_cli_reads_vim_pickles(files, tmp_path, capsys):
    d, p = files
    with open(d / "fc.pkl", "wb") as f:
        pickle.dump([p["head"].weight, p["head"].bias], f)
    for name, key in (("train", "train"), ("val", "test"), ("ood", "ood")):
        with open(d / f"{name}.pkl", "wb") as f:
            pickle.dump(p["arrays"][key][0], f)
    (d / "labels.txt").write_text("".join(f"img {y}\n" for y in p["arrays"]["train"][1]))
    rc = main([str(d / "fc.pkl"), str(d / "train.pkl"), str(d / "val.pkl"), str(d / "ood.pkl"), "--quiet",
               "--train_label", str(d / "labels.txt"), "--json", str(d / "p.json")])
    assert rc == 0
    main(args(d, "--json", str(d / "h.json")))
    from_pkl = {r["method"]: r["auroc"] for r in json.loads((d / "p.json").read_text())["records"]}
    from_h5 = {r["method"]: r["auroc"] for r in json.loads((d / "h.json").read_text())["records"] if r["dataset"] == "near"}
    # the pickles hold no ID test labels: temp_scaling fits T on the train labels there, on the labelled hold-out here
    assert from_pkl.pop("temp_scaling") != pytest.approx(from_h5.pop("temp_scaling"))
    assert from_pkl == pytest.approx(from_h5)


def test_mahalanobis_is_skipped_without_train_labels(files, capsys):
    d, p = files
    write_features(d / "train.h5", p["arrays"]["train"][0])
    assert main(args(d)) == 0
    out = capsys.readouterr().out
    assert "mahalanobis skipped" in out and "\nmahalanobis " not in out


def assert_one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_bad_inputs_give_one_line(files, capsys):
    d, p = files
    assert_one_line_error(capsys, args(d)[:4] + [str(d / "nope.h5")], "nope.h5", "no such file")
    data = (d / "val.h5").read_bytes()
    (d / "cut.h5").write_bytes(data[: len(data) // 2])
    assert_one_line_error(capsys, args(d)[:2] + [str(d / "cut.h5")] + args(d)[3:], "cut.h5")
    with h5py.File(d / "far.h5", "r+") as h5:
        h5.attrs["complete"] = False
    assert_one_line_error(capsys, args(d), "far.h5", "incomplete")
    write_features(d / "far.h5", np.zeros((5, p["head"].dim + 1), np.float32))
    assert_one_line_error(capsys, args(d), "far.h5", "width")
    x = np.zeros((5, p["head"].dim), np.float32)
    x[3, 2] = np.nan
    write_features(d / "far.h5", x)
    assert_one_line_error(capsys, args(d), "far.h5", "NaN")
    write_features(d / "far.h5", np.zeros((0, p["head"].dim), np.float32))
    assert_one_line_error(capsys, args(d), "far.h5", "no rows")
    write_features(d / "far.h5", np.ones((5, p["head"].dim), np.float32))
    y = p["arrays"]["train"][1].copy()
    y[7] = 99
    write_features(d / "train.h5", p["arrays"]["train"][0], labels=y)
    assert_one_line_error(capsys, args(d, "--methods", "mahalanobis"), "train.h5", "outside")
    write_features(d / "train.h5", p["arrays"]["train"][0], labels=p["arrays"]["train"][1])
    (d / "short.txt").write_text("a 1\nb 2\n")
    assert_one_line_error(capsys, args(d, "--train_label", str(d / "short.txt")), "short.txt", "2 labels")
    assert_one_line_error(capsys, args(d, "--methods", "msp,bogus"), "bogus")
    assert_one_line_error(capsys, args(d, "--param", "vim.bogus=1"), "vim.bogus")


def test_script_runs_as_a_program(files):
    d, _ = files
    r = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *args(d, "--methods", "msp,energy")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "energy" in r.stdout and "Mean AUROC" in r.stdout


def test_a_missing_input_file_is_one_line_before_torch_is_imported(tmp_path):
    code = ("import sys; from ood.benchmark import main; "
            f"rc = main([{str(tmp_path / 'fc.h5')!r}, 'train.h5', 'test.h5', 'ood.h5', '--methods', 'vim']); "
            "print(rc, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False"]
    assert out.stderr.strip() == f"error: {tmp_path / 'fc.h5'}: no such file (fc file)"
