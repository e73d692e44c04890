"""Tables (plain text, Markdown, LaTeX) and JSON / CSV records of a benchmark result.

Tables show percent with 2 decimals, one row per detector, AUROC and FPR95 per OOD set and their mean; the
header names the FPR convention. Records hold fractions, one per (method, dataset).
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np

from .fileio import write_texts
from .metrics import FPR_LABELS

RECORD_KEYS = ("method", "dataset", "auroc", "fpr95", "aupr_in", "aupr_out")


def _pct(values) -> str:
    """Percent with 2 decimals of the mean of ``values``; "n/a" where a detector could not score (None)."""
    return "n/a" if any(v is None for v in values) else f"{100 * np.mean(values):.2f}"


def _rows(result):
    by = {(r["method"], r["dataset"]): r for r in result.records}
    header = ["Method"]
    for d in result.datasets + ["Mean"]:
        header += [f"{d} AUROC", f"{d} FPR95"]
    rows = []
    for m in dict.fromkeys(r["method"] for r in result.records):
        cells = [m]
        for d in result.datasets:
            cells += [_pct([by[m, d]["auroc"]]), _pct([by[m, d]["fpr95"]])]
        cells += [_pct([by[m, d]["auroc"] for d in result.datasets]),
                  _pct([by[m, d]["fpr95"] for d in result.datasets])]
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
    """One record per (method, dataset): the metrics as fractions (None where the detector could not score),
    the FPR convention, the hyperparameters as used and the note, if any."""
    params = getattr(result, "params", {}) or {}
    return [{**{k: r[k] for k in RECORD_KEYS}, "fpr_convention": result.fpr, "params": params.get(r["method"], {}),
             "note": r.get("note")} for r in result.records]


def to_json(obj) -> str:
    """JSON that never holds a bare NaN or Infinity: non-finite floats become null."""
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        return x
    return json.dumps(clean(obj), indent=2, allow_nan=False) + "\n"


def json_text(result) -> str:
    """The JSON of a result: its records, notes and provenance (inputs, versions, command, date)."""
    return to_json({"records": records(result), "notes": result.notes,
                    "provenance": getattr(result, "provenance", {})})


def csv_text(result) -> str:
    """The CSV of a result: one row per (method, dataset), the hyperparameters as a JSON column."""
    buf = io.StringIO()
    recs = [{**r, "params": json.dumps(r["params"], sort_keys=True)} for r in records(result)]
    w = csv.DictWriter(buf, fieldnames=list(recs[0]))
    w.writeheader()
    w.writerows(recs)
    return buf.getvalue()


def write_outputs(result, json_path=None, csv_path=None):
    """Write the JSON and the CSV of a result: both are replaced, or neither."""
    write_texts([(p, f(result)) for p, f in ((json_path, json_text), (csv_path, csv_text)) if p])
