"""Tables, records and the comparison of runs, checked against values computed here from the records."""
import csv
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from ood import report
from ood.benchmark import main as benchmark_main
from ood.errors import InputError
from tests.helpers import benchmark_args, write_problem_files

SETS = ["ssb_hard", "ninco", "inat", "textures"]


def synthetic_result(seed=0, methods=("msp", "vim", "gen_react", "my_plugin"), sets=SETS, fpr="vim"):
    rng = np.random.default_rng(seed)
    records = [{"method": m, "dataset": d, "auroc": float(rng.uniform(0.4, 1)), "fpr95": float(rng.uniform(0, 1)),
                "aupr_in": 0.5, "aupr_out": 0.5} for m in methods for d in sets]
    return SimpleNamespace(records=records, datasets=list(sets), fpr=fpr, accuracy=0.8, notes=["a note"],
                           params={"vim": {"dim": 4}}, provenance={"date": "2026-11-22"}, scores={})


def markdown_rows(text):
    """{first cell: [cells]} of the table rows of a Markdown table (bold marks kept)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return header, rows


def number(cell):
    return float(cell.replace("**", "").split(" ")[0])


def test_markdown_table_values_groups_and_bold():
    res = synthetic_result()
    text = report.format_table(res, "markdown", near="ssb_hard,ninco", far="inat,textures")
    header, rows = markdown_rows(text)
    by = {(r["method"], r["dataset"]): r for r in res.records}
    assert set(rows) == {"MSP", "ViM", "GEN + ReAct", "my_plugin"}  # display names, a plugin keeps its own
    names = {"MSP": "msp", "ViM": "vim", "GEN + ReAct": "gen_react", "my_plugin": "my_plugin"}
    for shown, m in names.items():
        for metric, head in (("auroc", "AUROC"), ("fpr95", "FPR95")):
            for d in SETS:
                assert number(rows[shown][f"{d} {head}"]) == pytest.approx(round(100 * by[m, d][metric], 2))
            for col, sets in (("Near mean", SETS[:2]), ("Far mean", SETS[2:]), ("Mean", SETS)):
                want = 100 * sum(by[m, d][metric] for d in sets) / len(sets)
                assert number(rows[shown][f"{col} {head}"]) == pytest.approx(round(want, 2))
    for col in header[1:]:  # the best value of every column in bold, and only it
        vals = {s: number(rows[s][col]) for s in rows}
        best = max(vals.values()) if "AUROC" in col else min(vals.values())
        for s in rows:
            assert rows[s][col].startswith("**") == (vals[s] == best), (col, s)
    assert header.index("ninco AUROC") < header.index("Near mean AUROC") < header.index("inat AUROC")
    assert "near OOD: ssb_hard, ninco" in text and "note: a note" in text


def test_plain_table_keeps_registry_names_and_no_bold():
    text = report.format_table(synthetic_result(), "table")
    assert "**" not in text and re.search(r"^gen_react\s", text, re.M) and "GEN + ReAct" not in text


def test_sort_by_any_column_best_first():
    res = synthetic_result(1)
    by = {(r["method"], r["dataset"]): r for r in res.records}
    methods = ["msp", "vim", "gen_react", "my_plugin"]
    for sort, key, reverse in (("ninco.fpr95", lambda m: by[m, "ninco"]["fpr95"], False),
                               ("Mean AUROC", lambda m: np.mean([by[m, d]["auroc"] for d in SETS]), True),
                               ("far_mean.auroc", lambda m: np.mean([by[m, d]["auroc"] for d in SETS[2:]]), True),
                               ("method", lambda m: m, False)):
        text = report.format_table(res, "table", near=SETS[:2], far=SETS[2:], sort=sort)
        order = [line.split()[0] for line in text.splitlines()[-4:]]
        assert order == sorted(methods, key=key, reverse=reverse), sort
    with pytest.raises(InputError, match="--sort bogus"):
        report.format_table(res, sort="bogus")


def test_a_set_named_like_a_mean_keeps_its_own_column():
    res = synthetic_result(2, sets=["near", "mean"])
    _, rows = markdown_rows(report.format_table(res, "markdown", near="near", far="mean"))
    by = {(r["method"], r["dataset"]): r for r in res.records}
    assert number(rows["MSP"]["mean AUROC"]) == pytest.approx(round(100 * by["msp", "mean"]["auroc"], 2))
    want = 100 * (by["msp", "near"]["auroc"] + by["msp", "mean"]["auroc"]) / 2
    assert number(rows["MSP"]["Mean AUROC"]) == pytest.approx(round(want, 2))


def test_missing_values_show_as_na_and_sort_last():
    res = synthetic_result(3)
    res.records[0]["auroc"] = None  # msp on the first set
    text = report.format_table(res, "table", sort="mean.auroc")
    last = text.splitlines()[-1]
    assert last.startswith("msp") and "n/a" in last


def test_latex_is_booktabs_with_consistent_columns():
    res = synthetic_result(4)
    text = report.format_table(res, "latex", near=SETS[:2], far=SETS[2:])
    lines = text.splitlines()
    top = lines.index(r"\toprule")
    assert all(line.startswith("% ") for line in lines[:top - 1])
    assert any("booktabs" in line for line in lines[:top - 1])
    spec = re.fullmatch(r"\\begin\{tabular\}\{(\w+)\}", lines[top - 1]).group(1)
    body = lines[top:lines.index(r"\bottomrule")]
    assert sum(line.endswith(r"\\") for line in body) == 3 + 4  # three header rows, four detectors
    for line in body:
        if line.endswith(r"\\"):
            cells = line[:-2].split(" & ")
            width = sum(int(m.group(1)) if (m := re.match(r"\\multicolumn\{(\d+)\}", c.strip())) else 1
                        for c in cells)
            assert width == len(spec), line
    assert r"ssb\_hard" in text and r"\textbf{" in text and "GEN + ReAct" in text and "my\\_plugin" in text
    rules = [line for line in body if line.startswith(r"\cmidrule")]
    assert [line.count(r"\cmidrule") for line in rules] == [2, 7] and r"\multicolumn{6}{c}{Near OOD}" in text


def test_intervals_in_the_table_and_records():
    res = synthetic_result(5, sets=["a", "b"])
    ci = {"msp": {"sets": {"a": {"auroc": (0.1, 0.2), "fpr95": (0.3, 0.4)}},
                  "means": {"all": {"auroc": (0.15, 0.25), "fpr95": (0.35, 0.45)}}}}
    text = report.format_table(res, "markdown", intervals=ci, bootstrap={"resamples": 9, "seed": 1})
    _, rows = markdown_rows(text)
    assert rows["MSP"]["a AUROC"].endswith("[10.00, 20.00]") and rows["MSP"]["Mean FPR95"].endswith("[35.00, 45.00]")
    assert "[" not in rows["MSP"]["b AUROC"] and "9 resamples" in text
    recs = report.records(res, ci)
    assert recs[0]["auroc_ci"] == [0.1, 0.2] and recs[1]["auroc_ci"] is None
    rows = list(csv.DictReader(report.csv_text(res, ci).splitlines()))
    assert float(rows[0]["fpr95_ci_high"]) == 0.4 and rows[1]["fpr95_ci_low"] == ""


def test_json_never_holds_nan_and_both_files_or_neither(tmp_path):
    res = synthetic_result(6)
    res.records[0]["auroc"] = float("nan")
    res.params["vim"]["alpha"] = float("inf")
    text = report.json_text(res, groups={"near": SETS[:2]})

    def refuse(token):
        raise AssertionError(f"bare {token} in the JSON")
    obj = json.loads(text, parse_constant=refuse)
    assert obj["records"][0]["auroc"] is None and obj["groups"] == {"near": SETS[:2]}
    (tmp_path / "blocker").write_text("a file where a directory should be")
    with pytest.raises(OSError):
        report.write_outputs(res, json_path=tmp_path / "r.json", csv_path=tmp_path / "blocker" / "r.csv")
    assert not (tmp_path / "r.json").exists() and not list(tmp_path.glob("*.partial"))


def test_groups_are_checked():
    with pytest.raises(InputError, match="--near x: no OOD set"):
        report.parse_groups(["a", "b"], near="x")
    with pytest.raises(InputError, match="already in another group"):
        report.parse_groups(["a", "b"], near="a", far="a,b")
    assert report.parse_groups(["a", "b"], near=" a ,", far=None) == {"near": ["a"]}


def write_run(path, res):
    path.write_text(report.json_text(res))
    return path


def test_compare_equals_a_direct_computation(tmp_path, capsys):
    a = synthetic_result(7, methods=("msp", "vim", "knn"))
    b = synthetic_result(8, methods=("vim", "msp", "rmd"), sets=SETS[:3] + ["extra"])
    pa, pb = write_run(tmp_path / "resnet.json", a), write_run(tmp_path / "vit.json", b)
    assert report.main(["compare", str(pa), str(pb), "--format", "markdown", "--csv", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "left out: knn, rmd" in out and "left out (and out of the means): extra, textures" in out
    va = {(r["method"], r["dataset"]): r for r in a.records}
    vb = {(r["method"], r["dataset"]): r for r in b.records}
    common = SETS[:3]
    tables = out.split("FPR95 (%)")
    for metric, part in (("auroc", tables[0]), ("fpr95", tables[1])):
        _, rows = markdown_rows(part)
        assert list(rows) == ["MSP", "ViM"]  # the first run's order, detectors both runs have
        for shown, m in (("MSP", "msp"), ("ViM", "vim")):
            for d in common:
                x, y = va[m, d][metric], vb[m, d][metric]
                assert float(rows[shown][f"{d} resnet"]) == pytest.approx(round(100 * x, 2))
                assert float(rows[shown][f"{d} vit"]) == pytest.approx(round(100 * y, 2))
                assert float(rows[shown][f"{d} vit-resnet"]) == pytest.approx(round(100 * (y - x), 2), abs=0.0051)
            mx = sum(va[m, d][metric] for d in common) / 3
            my = sum(vb[m, d][metric] for d in common) / 3
            assert float(rows[shown]["Mean vit-resnet"]) == pytest.approx(round(100 * (my - mx), 2), abs=0.0051)
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    row = next(r for r in rows if r["method"] == "vim" and r["column"] == "inat" and r["metric"] == "auroc"
               and r["run"] == "vit")
    assert float(row["diff"]) == pytest.approx(vb["vim", "inat"]["auroc"] - va["vim", "inat"]["auroc"])


def test_compare_refuses_mixed_fpr_conventions(tmp_path, capsys):
    pa = write_run(tmp_path / "a.json", synthetic_result(9))
    pb = write_run(tmp_path / "b.json", synthetic_result(10, fpr="openood"))
    assert report.main(["compare", str(pa), str(pb)]) == 2
    err = capsys.readouterr().err
    assert "different FPR conventions" in err and len(err.strip().splitlines()) == 1
    assert report.main(["compare", str(pa), str(pb), "--metrics", "auroc"]) == 0
    assert report.main(["compare", str(pa)]) == 2
    (tmp_path / "bad.json").write_text("{}")
    assert report.main(["compare", str(pa), str(tmp_path / "bad.json")]) == 2
    assert "bad.json: no benchmark records" in capsys.readouterr().err


def test_run_labels_stay_distinct():
    assert report.run_labels(["x/results.json", "y/results.json"]) == ["x/results", "y/results"]
    assert report.run_labels(["x/r.json", "x/r.json"]) == ["run1", "run2"]


def test_table_from_json_is_the_table_of_the_run(tmp_path, capsys):
    res = synthetic_result(11)
    path = write_run(tmp_path / "r.json", res)
    assert report.main(["table", str(path), "--format", "markdown", "--sort", "mean.auroc"]) == 0
    again = capsys.readouterr().out.strip()
    assert again == report.format_table(res, "markdown", sort="mean.auroc").strip()


def test_benchmark_cli_groups_sort_bootstrap(tmp_path, capsys):
    write_problem_files(tmp_path)
    argv = benchmark_args(tmp_path, "--methods", "msp,energy,mahalanobis", "--near", "near", "--far", "far",
                          "--sort", "mean.auroc", "--bootstrap", "50", "--format", "markdown",
                          "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"))
    assert benchmark_main(argv) == 0
    out = capsys.readouterr().out
    _, rows = markdown_rows(out)
    means = [number(r["Mean AUROC"]) for r in rows.values()]
    assert means == sorted(means, reverse=True) and "50 resamples" in out
    obj = json.loads((tmp_path / "r.json").read_text())
    assert obj["groups"] == {"near": ["near"], "far": ["far"]} and obj["bootstrap"]["resamples"] == 50
    for r in obj["records"]:
        assert r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
    assert "auroc_ci_low" in (tmp_path / "r.csv").read_text().splitlines()[0]
    for bad, needle in ((["--near", "nope"], "--near nope"), (["--sort", "x.auroc"], "--sort x.auroc"),
                        (["--bootstrap", "0"], "--bootstrap 0")):
        assert benchmark_main(benchmark_args(tmp_path, *bad)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and needle in err and len(err.splitlines()) == 1


def test_compare_takes_the_first_runs_groups(tmp_path, capsys):
    a, b = synthetic_result(12), synthetic_result(13, sets=SETS[:3])
    (tmp_path / "a.json").write_text(report.json_text(a, groups={"near": SETS[:2], "far": SETS[2:]}))
    pb = write_run(tmp_path / "b.json", b)
    assert report.main(["compare", str(tmp_path / "a.json"), str(pb), "--metrics", "auroc", "--format", "markdown"]) == 0
    _, rows = markdown_rows(capsys.readouterr().out)
    va = {(r["method"], r["dataset"]): r["auroc"] for r in a.records}
    want = 100 * (va["vim", "ssb_hard"] + va["vim", "ninco"]) / 2
    assert float(rows["ViM"]["Near mean a"]) == pytest.approx(round(want, 2))
    assert float(rows["ViM"]["Far mean a"]) == pytest.approx(round(100 * va["vim", "inat"], 2))  # textures: not in b
