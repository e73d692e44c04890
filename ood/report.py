"""Tables (plain text, Markdown, LaTeX) and JSON / CSV records of a benchmark result.

Tables show percent with 2 decimals, one row per detector, AUROC and FPR95 per OOD set and their mean; the
header names the FPR convention. Records hold fractions, one per (method, dataset).
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np

from .metrics import FPR_LABELS

RECORD_KEYS = ("method", "dataset", "auroc", "fpr95", "aupr_in", "aupr_out")


def _rows(result):
    by = {(r["method"], r["dataset"]): r for r in result.records}
    header = ["Method"]
    for d in result.datasets + ["Mean"]:
        header += [f"{d} AUROC", f"{d} FPR95"]
    rows = []
    for m in result.scores:
        cells = [m]
        for d in result.datasets:
            cells += [f"{100 * by[m, d]['auroc']:.2f}", f"{100 * by[m, d]['fpr95']:.2f}"]
        cells += [f"{100 * np.mean([by[m, d]['auroc'] for d in result.datasets]):.2f}",
                  f"{100 * np.mean([by[m, d]['fpr95'] for d in result.datasets]):.2f}"]
        rows.append(cells)
    return header, rows


def _preamble(result) -> list:
    lines = [f"AUROC (%) and {FPR_LABELS[result.fpr]} (%), ID = in-distribution test set"]
    if result.accuracy is not None:
        lines.append(f"ID accuracy: {100 * result.accuracy:.2f}%")
    lines += [f"note: {n}" for n in result.notes]
    return lines


def render(header, rows, fmt: str = "table") -> list:
    """The lines of one table: aligned plain text, Markdown or a LaTeX tabular."""
    if fmt == "markdown":
        return (["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
                + ["| " + " | ".join(r) + " |" for r in rows])
    if fmt == "latex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%")  # noqa: E731
        return ([r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                 " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
                + [" & ".join(esc(c) for c in r) + r" \\" for r in rows] + [r"\bottomrule", r"\end{tabular}"])
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def format_table(result, fmt: str = "table") -> str:
    """The benchmark table under its preamble (FPR convention, ID accuracy, notes)."""
    header, rows = _rows(result)
    pre = _preamble(result)
    if fmt == "markdown":
        pre = [f"{line}  " for line in pre] + [""]
    elif fmt == "latex":
        pre = [f"% {line}" for line in pre]
    else:
        pre = pre + [""]
    return "\n".join(pre + render(header, rows, fmt))


def records(result) -> list:
    return [{**{k: r[k] for k in RECORD_KEYS}, "fpr_convention": result.fpr} for r in result.records]


def _atomic_write(path, text: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(result, path):
    _atomic_write(path, json.dumps(records(result), indent=2) + "\n")


def write_csv(result, path):
    buf = io.StringIO()
    recs = records(result)
    w = csv.DictWriter(buf, fieldnames=list(recs[0]))
    w.writeheader()
    w.writerows(recs)
    _atomic_write(path, buf.getvalue())
