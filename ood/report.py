"""Tables (plain text, Markdown, LaTeX), JSON / CSV records of a benchmark result, and the comparison of runs.

Tables show percent with 2 decimals, one row per detector, AUROC and FPR95 per OOD set and their mean; the
header names the FPR convention. OOD sets can be grouped (``near``, ``far``) with a mean per group, rows sorted
by any column, the best value of each column set in bold (Markdown, LaTeX), and 95 % bootstrap intervals
(:mod:`ood.bootstrap`) shown in brackets. Markdown and LaTeX name detectors as papers do (``ViM``,
``GEN + ReAct``); plain text, JSON and CSV keep the registry names you type in ``--methods``. Records hold
fractions, one per (method, dataset); JSON never holds NaN (``null`` instead).

Command line (on the JSON files ``benchmark.py --json`` writes)::

    python -m ood.report compare A.json B.json [--labels a,b] [--format markdown]   # runs side by side
    python -m ood.report table A.json --near a,b --far c,d --sort near.auroc --format latex

>>> from types import SimpleNamespace
>>> res = SimpleNamespace(datasets=["x"], fpr="vim", accuracy=None, notes=[], records=[
...     {"method": "vim", "dataset": "x", "auroc": 0.9, "fpr95": 0.3},
...     {"method": "msp", "dataset": "x", "auroc": 0.8, "fpr95": 0.5}])
>>> print(format_table(res, "markdown").splitlines()[-2])
| ViM | **90.00** | **30.00** | **90.00** | **30.00** |
"""
from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError
from .fileio import write_texts
from .metrics import FPR_LABELS

RECORD_KEYS = ("method", "dataset", "auroc", "fpr95", "aupr_in", "aupr_out")
FORMATS = ("table", "markdown", "latex")
#: metric -> (header text, True when higher is better)
TABLE_METRICS = {"auroc": ("AUROC", True), "fpr95": ("FPR95", False)}
#: registry name -> the name papers use; a detector not listed keeps its registry name
DISPLAY_NAMES = {
    "msp": "MSP", "maxlogit": "MaxLogit", "energy": "Energy", "entropy": "Entropy", "gen": "GEN",
    "gradnorm": "GradNorm", "react": "ReAct", "gen_react": "GEN + ReAct", "local_react": "Local ReAct",
    "gen_local_react": "GEN + Local ReAct", "vim": "ViM", "residual": "Residual", "gen_residual": "GEN + Residual",
    "mahalanobis": "Mahalanobis", "kl_matching": "KL-Matching", "temp_scaling": "Temp. Scaling", "odin": "ODIN",
    "knn": "KNN", "nnguide": "NNGuide", "ash_p": "ASH-P", "ash_b": "ASH-B", "ash_s": "ASH-S", "scale": "SCALE",
    "vra": "VRA", "dice": "DICE", "she": "SHE", "nci": "NCI", "fdbd": "fDBD", "nusa": "NuSA", "neco": "NECO",
    "rmd": "RMD", "mos": "MOS", "mcm": "MCM", "gmm": "GMM", "pnml": "pNML", "lts": "LTS",
    "grad_uncertainty": "GradUncertainty", "openmax": "OpenMax", "relation": "Relation", "cfood": "CF-OOD",
}


def display_name(method: str) -> str:
    """The name a paper uses for a registry name (``gen_react`` -> ``GEN + ReAct``); unknown names unchanged.

    >>> display_name("gen_react"), display_name("my_plugin")
    ('GEN + ReAct', 'my_plugin')
    """
    return DISPLAY_NAMES.get(method, method)


def _names(value) -> List[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v.strip()]


def parse_groups(datasets: Sequence[str], near=None, far=None) -> Dict[str, List[str]]:
    """``{"near": [...], "far": [...]}`` from comma strings or lists, checked against the run's OOD sets; empty
    groups are left out, sets in neither group stay ungrouped (they count in the overall mean only).

    >>> parse_groups(["a", "b", "c"], near="a", far="b,c")
    {'near': ['a'], 'far': ['b', 'c']}
    """
    groups = {k: _names(v) for k, v in (("near", near), ("far", far)) if _names(v)}
    seen = set()
    for group, names in groups.items():
        for name in names:
            if name not in datasets:
                raise InputError(f"--{group} {name}: no OOD set of that name (the sets: {', '.join(datasets)})")
            if name in seen:
                raise InputError(f"--{group} {name}: the set is already in another group")
            seen.add(name)
    return groups


@dataclass
class Column:
    """A pair of table columns (AUROC, FPR95): one OOD set (``kind`` "set"), the mean of a group ("group") or
    the mean of all sets ("all"). ``key`` = (kind, name) never collides, whatever the sets are called."""

    kind: str
    name: str  # the set name, the group name, or "all"
    label: str  # in the header
    sets: List[str]
    group: Optional[str] = None  # the group a column belongs to (LaTeX header), None when ungrouped

    @property
    def key(self) -> tuple:
        return self.kind, self.name

    @property
    def id(self) -> str:
        """How options and CSV files name the column: the set name, ``<group>_mean`` or ``mean``."""
        return self.name if self.kind == "set" else f"{self.name}_mean" if self.kind == "group" else "mean"


def table_columns(datasets: Sequence[str], groups: Optional[Dict[str, List[str]]] = None) -> List[Column]:
    """The table's columns: each group's sets then its mean, the ungrouped sets, then the mean over all."""
    groups = groups or {}
    cols = []
    for group, names in groups.items():
        cols += [Column("set", n, n, [n], group) for n in names]
        cols.append(Column("group", group, f"{group.capitalize()} mean", list(names), group))
    grouped = {n for names in groups.values() for n in names}
    cols += [Column("set", n, n, [n]) for n in datasets if n not in grouped]
    cols.append(Column("all", "all", "Mean", list(datasets)))
    return cols


def column_interval(intervals: Optional[dict], method: str, column: Column) -> dict:
    """The bootstrap intervals of one table cell pair from :func:`ood.bootstrap.result_intervals` output."""
    per = (intervals or {}).get(method, {})
    return (per.get("sets", {}).get(column.name) if column.kind == "set"
            else per.get("means", {}).get(column.name)) or {}


def table_values(result, columns: Sequence[Column]) -> Dict[str, Dict[str, dict]]:
    """``{method: {column key: {"auroc": fraction, "fpr95": fraction}}}``; a mean is None when one of its sets is."""
    by = {(r["method"], r["dataset"]): r for r in result.records}
    out = {}
    for m in dict.fromkeys(r["method"] for r in result.records):
        out[m] = {}
        for c in columns:
            out[m][c.key] = {}
            for metric in TABLE_METRICS:
                vals = [by[m, s].get(metric) if (m, s) in by else None for s in c.sets]
                out[m][c.key][metric] = None if any(v is None for v in vals) else float(np.mean(vals))
    return out


def _sort_keys(columns: Sequence[Column]) -> dict:
    keys = {"method": None, "name": None}
    for c in sorted(columns, key=lambda c: c.kind == "set"):  # a set's own name wins over a mean's alias
        for metric, (head, _) in TABLE_METRICS.items():
            for alias in (f"{c.label} {head}", f"{c.id}.{metric}", f"{c.id}_{metric}", f"{c.id} {metric}"):
                keys[alias.lower()] = (c.key, metric)
    return keys


def sort_methods(values: dict, columns: Sequence[Column], sort: str) -> List[str]:
    """Methods ordered by a column, best first (AUROC high to low, FPR95 low to high, names A to Z); missing
    values last. ``sort``: ``method``, ``<set>.<auroc|fpr95>``, ``near_mean.auroc``, ``mean.fpr95`` or a header
    ("Mean AUROC")."""
    keys = _sort_keys(columns)
    want = sort.strip().lower()
    if want not in keys:
        choices = ["method"] + [f"{c.id}.{m}" for c in columns for m in TABLE_METRICS]
        raise InputError(f"--sort {sort}: no such column; choose from {', '.join(choices)}")
    methods = list(values)
    if keys[want] is None:
        return sorted(methods)
    col, metric = keys[want]
    sign = -1 if TABLE_METRICS[metric][1] else 1
    present = [m for m in methods if values[m][col][metric] is not None]
    return (sorted(present, key=lambda m: sign * values[m][col][metric])
            + [m for m in methods if values[m][col][metric] is None])


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _best(values: dict, methods: Sequence[str], col: tuple, metric: str) -> Optional[str]:
    """The best displayed value of a column (ties at 2 decimals are all best)."""
    shown = [round(100 * values[m][col][metric], 2) for m in methods if values[m][col][metric] is not None]
    if not shown:
        return None
    return f"{(max(shown) if TABLE_METRICS[metric][1] else min(shown)):.2f}"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _escape_latex(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def _cell(v, ci, fmt: str, bold: bool) -> str:
    text = _pct(v)
    if bold and v is not None:
        text = f"**{text}**" if fmt == "markdown" else rf"\textbf{{{text}}}" if fmt == "latex" else text
    if ci is not None and v is not None:
        interval = f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
        text += rf" {{\scriptsize {interval}}}" if fmt == "latex" else f" {interval}"
    return text


def _preamble(result, groups=None, bootstrap: Optional[dict] = None) -> list:
    lines = [f"AUROC (%) and {FPR_LABELS[result.fpr]} (%), ID = in-distribution test set"]
    if getattr(result, "accuracy", None) is not None:
        lines.append(f"ID accuracy: {100 * result.accuracy:.2f}%")
    for group, names in (groups or {}).items():
        lines.append(f"{group} OOD: {', '.join(names)}")
    if bootstrap:
        lines.append(f"[lo, hi]: {100 * bootstrap.get('level', 0.95):.0f}% bootstrap percentile interval, "
                     f"{bootstrap['resamples']} resamples of the ID and the OOD scores (seed {bootstrap['seed']})")
    lines += [f"note: {n}" for n in getattr(result, "notes", [])]
    return lines


def render(header, rows, fmt: str = "table") -> list:
    """The lines of one table: aligned plain text, Markdown or a LaTeX booktabs tabular."""
    if fmt == "markdown":
        return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
                + ["| " + " | ".join(r) + " |" for r in rows])
    if fmt == "latex":
        return ([r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(_escape_latex(h) for h in header) + r" \\", r"\midrule"]
                + [" & ".join(_escape_latex(c) for c in r) + r" \\" for r in rows] + [r"\bottomrule", r"\end{tabular}"])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def _latex_header(columns: Sequence[Column], groups: dict) -> list:
    """Two or three booktabs header rows: groups (when given), OOD sets, metrics."""
    lines = []
    if groups:
        cells, rules, at = [""], [], 2
        for c in columns:
            title = f"{c.group.capitalize()} OOD" if c.group else ""
            if len(cells) > 1 and cells[-1][0] == title:
                cells[-1][1] += 2
            else:
                cells.append([title, 2])
        for title, span in cells[1:]:
            if title:
                rules.append(rf"\cmidrule(lr){{{at}-{at + span - 1}}}")
            at += span
        lines.append(" & ".join([""] + [rf"\multicolumn{{{s}}}{{c}}{{{_escape_latex(t)}}}" if t else " & ".join([""] * s)
                                        for t, s in cells[1:]]) + r" \\")
        lines.append(" ".join(rules))
    labels = [("Mean" if c.kind == "group" else "Mean (all)" if groups and c.kind == "all" else c.label)
              for c in columns]
    lines.append(" & ".join(["Method"] + [rf"\multicolumn{{2}}{{c}}{{{_escape_latex(t)}}}" for t in labels]) + r" \\")
    lines.append(" ".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(columns))))
    lines.append(" & ".join([""] + [r"AUROC $\uparrow$", r"FPR95 $\downarrow$"] * len(columns)) + r" \\")
    return lines


def format_table(result, fmt: str = "table", near=None, far=None, sort: Optional[str] = None,
                 bold_best: bool = True, intervals: Optional[dict] = None, bootstrap: Optional[dict] = None) -> str:
    """The benchmark table under its preamble (FPR convention, ID accuracy, groups, notes).

    ``near``/``far``: OOD set names (lists or comma strings) grouped with a mean per group; ``sort``: a column
    (:func:`sort_methods`); ``bold_best``: the best value per column in bold (Markdown, LaTeX);
    ``intervals``: :func:`ood.bootstrap.result_intervals` output, shown as ``[lo, hi]`` after each value, with
    ``bootstrap`` (``{"resamples", "seed", "level"}``) described in the preamble.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    groups = parse_groups(result.datasets, near, far)
    columns = table_columns(result.datasets, groups)
    values = table_values(result, columns)
    methods = sort_methods(values, columns, sort) if sort else list(values)
    best = {(c.key, m): _best(values, methods, c.key, m) for c in columns for m in TABLE_METRICS}
    rows = []
    for method in methods:
        name = method if fmt == "table" else display_name(method)
        cells = [_escape_latex(name) if fmt == "latex" else name]
        for c in columns:
            for metric in TABLE_METRICS:
                v = values[method][c.key][metric]
                ci = column_interval(intervals, method, c).get(metric)
                cells.append(_cell(v, ci, fmt, bold_best and v is not None and _pct(v) == best[c.key, metric]))
        rows.append(cells)
    pre = _preamble(result, groups, bootstrap if intervals else None)
    if fmt == "markdown":
        return "\n".join([f"{line}  " for line in pre] + [""] + render(
            ["Method"] + [f"{c.label} {TABLE_METRICS[m][0]}" for c in columns for m in TABLE_METRICS], rows, fmt))
    if fmt == "latex":
        spec = "l" + "r" * (2 * len(columns))
        return "\n".join([f"% {line}" for line in pre]
                         + [r"% LaTeX: needs \usepackage{booktabs} (\toprule, \midrule, \cmidrule, \bottomrule)",
                            rf"\begin{{tabular}}{{{spec}}}", r"\toprule"] + _latex_header(columns, groups)
                         + [r"\midrule"] + [" & ".join(r) + r" \\" for r in rows] + [r"\bottomrule", r"\end{tabular}"])
    header = ["Method"] + [f"{c.label} {TABLE_METRICS[m][0]}" for c in columns for m in TABLE_METRICS]
    return "\n".join(pre + [""] + render(header, rows, fmt))


def records(result, intervals: Optional[dict] = None) -> list:
    """One record per (method, dataset): the metrics as fractions (None where the detector could not score),
    the FPR convention, the hyperparameters as used, the note (if any) and, with ``intervals``,
    ``auroc_ci``/``fpr95_ci`` as [lo, hi]."""
    params = getattr(result, "params", {}) or {}
    out = []
    for r in result.records:
        rec = {**{k: r.get(k) for k in RECORD_KEYS}, "fpr_convention": result.fpr,
               "params": params.get(r["method"], {}), "note": r.get("note")}
        if intervals is not None:
            ci = intervals.get(r["method"], {}).get("sets", {}).get(r["dataset"]) or {}
            rec.update({f"{m}_ci": list(ci[m]) if m in ci else None for m in TABLE_METRICS})
        out.append(rec)
    return out


def to_json(obj) -> str:
    """JSON that never holds a bare NaN or Infinity: non-finite floats become null.

    >>> to_json({"a": float("nan"), "b": [1.5, np.float32(2)]}).split()
    ['{', '"a":', 'null,', '"b":', '[', '1.5,', '2.0', ']', '}']
    """
    def clean(x):
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        return x
    return json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"


def json_text(result, intervals: Optional[dict] = None, groups: Optional[dict] = None,
              bootstrap: Optional[dict] = None) -> str:
    """The JSON of a result: its records, notes, provenance (inputs, versions, command, date), the OOD groups
    and, with a bootstrap, its settings and the intervals of every table column (means included)."""
    obj = {"records": records(result, intervals), "notes": result.notes, "id_accuracy": result.accuracy,
           "provenance": getattr(result, "provenance", {}) or {}}
    if groups:
        obj["groups"] = groups
    if intervals is not None:
        obj["bootstrap"] = {**(bootstrap or {}), "intervals": intervals}
    return to_json(obj)


def csv_text(result, intervals: Optional[dict] = None) -> str:
    """The CSV of a result: one row per (method, dataset), the hyperparameters as a JSON column, and with
    ``intervals`` the columns ``auroc_ci_low``, ``auroc_ci_high``, ``fpr95_ci_low``, ``fpr95_ci_high``."""
    buf = io.StringIO()
    recs = []
    for r in records(result, intervals):
        row = {k: v for k, v in r.items() if not k.endswith("_ci")}
        row["params"] = json.dumps(r["params"], sort_keys=True)
        if intervals is not None:
            for m in TABLE_METRICS:
                ci = r[f"{m}_ci"] or (None, None)
                row[f"{m}_ci_low"], row[f"{m}_ci_high"] = ci
        recs.append(row)
    w = csv.DictWriter(buf, fieldnames=list(recs[0]) if recs else list(RECORD_KEYS))
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


def write_outputs(result, json_path=None, csv_path=None, intervals: Optional[dict] = None,
                  groups: Optional[dict] = None, bootstrap: Optional[dict] = None):
    """Write the JSON and the CSV of a result: both are replaced, or neither."""
    texts = []
    if json_path:
        texts.append((json_path, json_text(result, intervals, groups, bootstrap)))
    if csv_path:
        texts.append((csv_path, csv_text(result, intervals)))
    write_texts(texts)


def add_report_options(p: argparse.ArgumentParser):
    """The benchmark's table, interval and figure options: ``--near``, ``--far``, ``--sort``, ``--bootstrap``,
    ``--bootstrap_seed``, ``--plot_format``."""
    p.add_argument("--near", metavar="SETS", help="comma list of near-OOD sets (file stems): grouped, with their mean")
    p.add_argument("--far", metavar="SETS", help="comma list of far-OOD sets (file stems): grouped, with their mean")
    p.add_argument("--sort", metavar="COLUMN", help="sort the table by a column, best first: method, mean.auroc, "
                                                    "near_mean.fpr95, <set>.auroc, ... (default: the run's order)")
    p.add_argument("--bootstrap", type=int, metavar="N", help="95%% intervals of AUROC and FPR95 from N resamples "
                   "of the ID and OOD scores (the scores are fixed; e.g. 1000)")
    p.add_argument("--bootstrap_seed", type=int, default=0, help="seed of the resamples (default 0)")
    p.add_argument("--plot_format", choices=("png", "pdf", "svg"), default="png",
                   help="file format of --plots (pdf, svg: vector); default png")


def check_report_options(datasets: Sequence[str], near=None, far=None, sort: Optional[str] = None,
                         bootstrap: Optional[int] = None):
    """Refuse bad table options before any expensive work: unknown sets in the groups, an unknown sort column,
    fewer than one resample. ``datasets``: the OOD set names the run will have (the files' stems)."""
    groups = parse_groups(datasets, near, far)
    if sort:
        sort_methods({}, table_columns(datasets, groups), sort)
    if bootstrap is not None and bootstrap < 1:
        raise InputError(f"--bootstrap {bootstrap}: the number of resamples must be at least 1")


def publish(result, fmt: str = "table", json_path=None, csv_path=None, plots=None, plot_format: str = "png",
            near=None, far=None, sort: Optional[str] = None, bootstrap: Optional[int] = None, seed: int = 0,
            log=None, show=None) -> str:
    """Everything a run reports: bootstrap intervals (``bootstrap`` resamples, if asked), the table (handed to
    ``show``, e.g. ``print``, before any file is written), the JSON and CSV (both written or neither), the
    figures under ``plots``. Returns the table."""
    import time

    groups = parse_groups(result.datasets, near, far)
    intervals = settings = None
    if bootstrap:
        from . import bootstrap as boot

        tic = time.perf_counter()
        settings = {"resamples": bootstrap, "seed": seed, "level": boot.LEVEL,
                    "method": "percentile; ID and OOD scores resampled separately; scores fixed"}
        intervals = boot.result_intervals(result, bootstrap, seed, groups)
        if log:
            log(f"bootstrap: {bootstrap} resamples in {time.perf_counter() - tic:.1f} s")
    table = format_table(result, fmt, near=near, far=far, sort=sort, intervals=intervals, bootstrap=settings)
    if show:
        show(table)
    write_outputs(result, json_path=json_path, csv_path=csv_path, intervals=intervals, groups=groups,
                  bootstrap=settings)
    if plots:
        from . import plots as plotting

        tic = time.perf_counter()
        written = plotting.write_plots(result, plots, fmt=plot_format, near=near, far=far)
        if log:
            log(f"plots: {len(written)} files in {plots} in {time.perf_counter() - tic:.1f} s")
    return table


@dataclass
class LoadedResult:
    """A result read back from its JSON: what tables and comparisons need (no scores)."""

    records: List[dict]
    datasets: List[str]
    fpr: str
    accuracy: Optional[float] = None
    notes: List[str] = field(default_factory=list)
    params: Dict[str, dict] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    groups: Dict[str, List[str]] = field(default_factory=dict)
    path: str = ""
    bootstrap: dict = field(default_factory=dict)  # settings and "intervals", when the run had --bootstrap


def load_result(path) -> LoadedResult:
    """Read the JSON of ``benchmark.py --json`` (or of ``--protocol sood``: its detection records)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON file ({e})") from None
    recs = obj.get("records", obj.get("detection")) if isinstance(obj, dict) else None
    if not isinstance(recs, list) or not all(isinstance(r, dict) and {"method", "dataset"} <= set(r) for r in recs):
        raise InputError(f"{path}: no benchmark records (a list of {{method, dataset, auroc, ...}} under 'records')")
    conventions = {r.get("fpr_convention") for r in recs} - {None}
    if len(conventions) > 1:
        raise InputError(f"{path}: records of several FPR conventions ({', '.join(sorted(conventions))})")
    prov = obj.get("provenance") or {}
    fpr = conventions.pop() if conventions else prov.get("fpr_convention", "vim")
    accuracy = obj.get("id_accuracy", prov.get("id_accuracy"))
    return LoadedResult(recs, list(dict.fromkeys(r["dataset"] for r in recs)), fpr, accuracy,
                        list(obj.get("notes") or []), {r["method"]: r.get("params") or {} for r in recs}, prov,
                        obj.get("groups") or {}, str(path), obj.get("bootstrap") or {})


def run_labels(paths: Sequence) -> List[str]:
    """Short distinct labels for result files: the file stems, or parent/stem where stems repeat.

    >>> run_labels(["a/results.json", "b/results.json"]), run_labels(["x.json", "y.json"])
    (['a/results', 'b/results'], ['x', 'y'])
    """
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    labels = [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]
    return labels if len(set(labels)) == len(labels) else [f"run{i + 1}" for i in range(len(paths))]


def compare_values(results: Sequence, metrics: Sequence[str] = ("auroc", "fpr95"), groups=None) -> dict:
    """The numbers of a comparison: the detectors and OOD sets every run has, and per (method, column, metric)
    the run values (fractions) and the differences of runs 2.. from run 1.

    Returns ``{"methods", "columns", "missing", "values": {(method, column key, metric): [v per run]},
    "diffs": {...: [v_k - v_1 for k >= 2]}}``; a mean column averages the common sets only.
    """
    if len(results) < 2:
        raise InputError("compare needs two or more result files")
    unknown = [m for m in metrics if m not in TABLE_METRICS]
    if unknown:
        raise InputError(f"--metrics {','.join(unknown)}: choose from {', '.join(TABLE_METRICS)}")
    if "fpr95" in metrics and len({r.fpr for r in results}) > 1:
        raise InputError("the runs use different FPR conventions ("
                         + ", ".join(f"{getattr(r, 'path', '') or i}: {r.fpr}" for i, r in enumerate(results))
                         + "); compare them with --metrics auroc")
    sets = [d for d in results[0].datasets if all(d in r.datasets for r in results)]
    if not sets:
        raise InputError("the runs have no OOD set in common")
    methods = [m for m in dict.fromkeys(rec["method"] for rec in results[0].records)
               if all(any(rec["method"] == m for rec in r.records) for r in results)]
    if not methods:
        raise InputError("the runs have no detector in common")
    missing = sorted({rec["method"] for r in results for rec in r.records} - set(methods))
    missing_sets = sorted({d for r in results for d in r.datasets} - set(sets))
    columns = table_columns(sets, parse_groups(sets, *((groups or {}).get(k) for k in ("near", "far"))))
    tables = [table_values(r, columns) for r in results]
    values, diffs = {}, {}
    for m in methods:
        for c in columns:
            for metric in metrics:
                vs = [t[m][c.key][metric] for t in tables]
                values[m, c.key, metric] = vs
                diffs[m, c.key, metric] = [None if v is None or vs[0] is None else v - vs[0] for v in vs[1:]]
    return {"methods": methods, "columns": columns, "missing": {"methods": missing, "sets": missing_sets},
            "values": values, "diffs": diffs}


def _signed(d) -> str:
    return "n/a" if d is None else f"{100 * d:+.2f}"


def compare_table(results: Sequence, labels: Optional[Sequence[str]] = None, fmt: str = "table",
                  metrics: Sequence[str] = ("auroc", "fpr95"), groups=None) -> str:
    """Runs side by side: one table per metric, for each OOD set (and mean) the value of every run and the
    difference of each later run from the first (percentage points), rows = the detectors all runs have."""
    if fmt not in FORMATS:
        raise InputError(f"unknown table format {fmt!r}; choose from {', '.join(FORMATS)}")
    cmp = compare_values(results, metrics, groups)
    labels = list(labels) if labels else [f"run{i + 1}" for i in range(len(results))]
    if len(labels) != len(results):
        raise InputError(f"--labels: {len(labels)} labels for {len(results)} result files")
    out = ["Runs compared: " + ", ".join(f"{lab} = {getattr(r, 'path', '') or lab}" for lab, r in zip(labels, results)),
           f"differences: each run minus {labels[0]}, in percentage points"]
    if cmp["missing"]["methods"]:
        out.append(f"not in every run, left out: {', '.join(cmp['missing']['methods'])}")
    if cmp["missing"]["sets"]:
        out.append(f"OOD sets not in every run, left out (and out of the means): {', '.join(cmp['missing']['sets'])}")
    if fmt == "latex":
        out = [f"% {line}" for line in out] + [r"% LaTeX: needs \usepackage{booktabs}"]
    elif fmt == "markdown":
        out = [f"{line}  " for line in out]
    for metric in metrics:
        head, higher = TABLE_METRICS[metric]
        convention = f", {FPR_LABELS[results[0].fpr]}" if metric == "fpr95" else ""
        title = f"{head} (%){convention} ({'higher' if higher else 'lower'} is better)"
        header = ["Method"]
        for c in cmp["columns"]:
            header += [f"{c.label} {lab}" for lab in labels] + [f"{c.label} {lab}-{labels[0]}" for lab in labels[1:]]
        rows = []
        for m in cmp["methods"]:
            cells = [m if fmt == "table" else display_name(m)]
            for c in cmp["columns"]:
                cells += [_pct(v) for v in cmp["values"][m, c.key, metric]]
                cells += [_signed(d) for d in cmp["diffs"][m, c.key, metric]]
            rows.append(cells)
        out += {"table": ["", title], "markdown": ["", title, ""], "latex": ["", f"% {title}"]}[fmt]
        out += render(header, rows, fmt)
    return "\n".join(out)


def compare_csv(results: Sequence, labels: Sequence[str], metrics: Sequence[str] = ("auroc", "fpr95"),
                groups=None) -> str:
    """The comparison as long CSV: method, column, metric, run, value, diff (from the first run; fractions)."""
    cmp = compare_values(results, metrics, groups)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", "column", "metric", "run", "value", "diff"])
    ids = {c.key: c.id for c in cmp["columns"]}
    for (m, col, metric), vs in cmp["values"].items():
        diffs = [0.0 if vs[0] is not None else None] + cmp["diffs"][m, col, metric]
        for lab, v, d in zip(labels, vs, diffs):
            w.writerow([m, ids[col], metric, lab, "" if v is None else repr(v), "" if d is None else repr(d)])
    return buf.getvalue()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ood.report",
                                description="Tables from benchmark.py --json files: one run, or runs side by side.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="the same detectors and OOD sets across runs, with differences")
    c.add_argument("results", nargs="+", help="two or more JSON files of benchmark.py --json")
    c.add_argument("--labels", help="comma list of run labels (default: the file stems)")
    c.add_argument("--metrics", default="auroc,fpr95", help="comma list from auroc, fpr95 (default both)")
    c.add_argument("--csv", help="also write the comparison as long CSV (method, column, metric, run, value, diff)")
    t = sub.add_parser("table", help="the table of one run again, grouped, sorted or in another format")
    t.add_argument("result", help="a JSON file of benchmark.py --json")
    t.add_argument("--sort", help="column to sort by, best first: method, mean.auroc, <set>.fpr95, near_mean.auroc, "
                                  "...")
    t.add_argument("--no_bold", action="store_true", help="no bold best values")
    for q in (c, t):
        q.add_argument("--format", choices=FORMATS, default="table")
        q.add_argument("--near", help="comma list of near-OOD sets (a mean per group)")
        q.add_argument("--far", help="comma list of far-OOD sets")
    return p


def main(argv=None) -> int:
    from .cli import run_main

    args = build_parser().parse_args(argv)

    def go() -> int:
        if args.command == "compare":
            results = [load_result(p) for p in args.results]
            labels = _names(args.labels) or run_labels(args.results)
            metrics = _names(args.metrics)
            groups = {"near": args.near, "far": args.far}
            if args.near is None and args.far is None:  # the first run's own groups, when it was grouped
                common = set.intersection(*(set(r.datasets) for r in results))
                groups = {k: [n for n in v if n in common] for k, v in results[0].groups.items() if k in ("near", "far")}
            if args.csv:
                from .fileio import check_writable
                check_writable(args.csv, "CSV output")
            print(compare_table(results, labels, args.format, metrics, groups))
            if args.csv:
                write_texts([(args.csv, compare_csv(results, labels, metrics, groups))])
            return 0
        res = load_result(args.result)
        near, far = args.near, args.far
        if near is None and far is None:
            near, far = res.groups.get("near"), res.groups.get("far")
        intervals = res.bootstrap.get("intervals")
        settings = {k: v for k, v in res.bootstrap.items() if k != "intervals"}
        print(format_table(res, args.format, near=near, far=far, sort=args.sort, bold_best=not args.no_bold,
                           intervals=intervals, bootstrap=settings))
        return 0
    return run_main(go)


if __name__ == "__main__":
    raise SystemExit(main())
