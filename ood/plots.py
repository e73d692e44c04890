"""Figures of a benchmark result, drawn to be put in a paper as they are.

Per detector (``<method>.png|pdf|svg``): one panel per OOD set with the score histograms of the ID test set and
that OOD set, the threshold that keeps 95 % of the ID test images marked, then a panel of ROC curves, one per
OOD set, with the operating point at that threshold. Across detectors (``overview.<fmt>``): AUROC and FPR95 of
every detector on every OOD set, detectors sorted by mean AUROC.

Conventions: ID is grey and OOD orange in every histogram; each OOD set has its own colour (never grey or
orange) in the ROC panels and the overview. Scores are "higher = more ID"; a histogram panel spans the middle
99 % of the pooled scores and counts each bin in % of its group (no unit of the score in it). When the middle
90 % of one group fills under 20 % of that range (ViM or Mahalanobis on far OOD: a spike next to a wide tail;
MSP saturated near 1), the panel switches to a symmetric-log axis, or to pooled ranks when that does not help
enough, and says so on the axis.

Fast: figures are built with ``matplotlib.figure.Figure`` (no pyplot state, the Agg renderer for PNG), histograms
are counted with numpy and drawn as one step patch per group, ROC curves are cut to a few hundred points along
their length, the layout is fixed (no tight_layout pass), and one figure is redrawn for every detector.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import InputError
from .report import display_name, parse_groups

PLOT_FORMATS = ("png", "pdf", "svg")
ID_COLOR, OOD_COLOR = "#595959", "#E69F00"  # histograms: ID grey, OOD orange
#: one colour per OOD set (ROC curves, overview): colour-blind-safe, none grey or orange
SET_COLORS = ("#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#7B3294", "#8C564B", "#BCBD22", "#17BECF")
SQUEEZED = 0.2  # a group whose middle 90 % spans less than this share of the panel's range is squeezed
TPR = 0.95
_RC = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
       "legend.fontsize": 7, "axes.spines.top": False, "axes.spines.right": False, "pdf.fonttype": 42,
       "svg.fonttype": "none", "axes.formatter.limits": (-3, 4), "axes.formatter.use_mathtext": False,
       "text.hinting": "none",  # unhinted glyphs: a fifth less drawing time, no visible difference at 150 dpi
       "axes.titley": 1.0, "axes.titlepad": 4.0}


def set_color(i: int) -> str:
    """The colour of the i-th OOD set of a run."""
    return SET_COLORS[i % len(SET_COLORS)]


def roc_points(id_scores, ood_scores):
    """(FPR, TPR) of ID-positive thresholds from high to low, starting at (0, 0).

    >>> [a.tolist() for a in roc_points(np.array([3.0, 2.0]), np.array([1.0, 2.0]))]
    [[0.0, 0.0, 0.5, 1.0], [0.0, 0.5, 1.0, 1.0]]
    """
    s = np.concatenate([id_scores, ood_scores])
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0, fps / max(1, len(ood_scores))], np.r_[0, tps / max(1, len(id_scores))]


def roc_sampled(sorted_id, sorted_ood, per_group: int = 1000):
    """Points of the exact ROC curve at about ``per_group`` evenly spaced order statistics of each group as
    thresholds, from (0, 0) to (1, 1): what a drawing needs, without sorting the pooled scores. Both inputs are
    sorted ascending (the ID array is sorted once per detector and serves every OOD set).

    >>> fpr, tpr = roc_sampled(np.sort(np.arange(10.0)), np.sort(np.arange(5.0) - 2))
    >>> float(fpr[0]), float(tpr[0]), float(fpr[-1]), float(tpr[-1])
    (0.0, 0.0, 1.0, 1.0)
    """
    pick = lambda s: s[np.unique(np.linspace(0, s.size - 1, min(per_group, s.size)).astype(int))]  # noqa: E731
    t = np.unique(np.concatenate([pick(sorted_id), pick(sorted_ood)]))[::-1]  # thresholds, high to low
    tpr = (sorted_id.size - np.searchsorted(sorted_id, t, "left")) / sorted_id.size  # share >= t
    fpr = (sorted_ood.size - np.searchsorted(sorted_ood, t, "left")) / sorted_ood.size
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, tpr, 1.0]


def thin_curve(x, y, max_points: int = 400):
    """At most about ``max_points`` points of a monotone curve, evenly spaced along its length (ends kept).

    >>> x = np.linspace(0, 1, 10_001)
    >>> len(thin_curve(x, x)[0]) <= 401
    True
    """
    if x.size <= max_points:
        return x, y
    d = np.r_[0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    idx = np.unique(np.r_[np.searchsorted(d, np.linspace(0, d[-1], max_points)), x.size - 1])
    return x[idx], y[idx]


def threshold_at_tpr(id_scores, tpr: float = TPR) -> float:
    """The score that keeps ``tpr`` of the ID scores: the floor(tpr N)-th largest (ViM's FPR95 threshold).

    >>> threshold_at_tpr(np.arange(100.0))
    5.0
    """
    id_scores = np.asarray(id_scores)
    k = int(np.floor(tpr * id_scores.size))
    return float(np.partition(id_scores, -k)[-k]) if k > 0 else float(id_scores.min())


def _spread(x, share: float = 0.99):
    lo, hi = np.percentile(x, [50 * (1 - share), 50 * (1 + share)])
    return float(lo), float(hi)


def _sample(x, n: int = 5000):
    """Every k-th score, at most about ``n``: enough for the percentiles that choose an axis."""
    x = np.asarray(x, dtype=np.float64)
    return x[:: max(1, x.size // n)]


def _narrow_share(a, b) -> float:
    """How much of the panel the narrower group fills: the width of its middle 90 % over the panel's range
    (the middle 99 % of both groups pooled)."""
    lo, hi = _spread(np.concatenate([a, b]))
    narrow = min(np.subtract(*_spread(a, 0.9)[::-1]), np.subtract(*_spread(b, 0.9)[::-1]))
    return narrow / (hi - lo) if hi > lo and narrow > 0 else 1.0  # a constant group: no axis helps


class ScoreAxis:
    """How a panel draws scores: ``linear``, ``symlog`` (sign(x) log10(1 + |x|/c)) or ``rank`` (the pooled rank
    in percent). :meth:`to_axis` maps scores to the axis coordinate; ``label`` says which on the axis.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ScoreAxis.choose(rng.normal(0, 1, 500), rng.normal(0, 2, 500)).kind
    'linear'
    >>> ScoreAxis.choose(rng.normal(-3, 0.5, 500), -np.exp(rng.normal(6, 1, 500))).kind
    'symlog'
    """

    LABELS = {"linear": "score (higher = more ID)",
              "symlog": "score, symmetric-log axis (higher = more ID)",
              "rank": "score as pooled rank, % (higher = more ID)"}

    def __init__(self, kind: str, c: float = 1.0, pooled: Optional[np.ndarray] = None):
        self.kind, self.c, self.pooled = kind, c, pooled
        self.label = self.LABELS[kind]

    @classmethod
    def choose(cls, id_scores, ood_scores) -> "ScoreAxis":
        """Linear unless one group is squeezed (its middle 90 % under 20 % of the panel's range, the pooled
        middle 99 %); then the symmetric-log axis (c = 1, 1/10 or 1/100 of the narrow group's width, whichever
        spreads it most) if it gives the narrow group at least 5 % and twice its linear share; else pooled ranks
        if they do better."""
        full = (id_scores, ood_scores)
        id_scores, ood_scores = _sample(id_scores), _sample(ood_scores)  # percentiles need no more
        share = _narrow_share(id_scores, ood_scores)
        if share >= SQUEEZED:
            return cls("linear")
        width = min(np.subtract(*_spread(id_scores, 0.9)[::-1]), np.subtract(*_spread(ood_scores, 0.9)[::-1]))
        best, best_share = None, 0.0
        for c in (width, width / 10, width / 100):
            sym = cls("symlog", c=c)
            s = _narrow_share(sym.to_axis(id_scores), sym.to_axis(ood_scores))
            if s > best_share:
                best, best_share = sym, s
        if best_share >= max(SQUEEZED / 4, 2 * share):  # a log axis keeps the shapes: preferred when it helps
            return best
        rank = cls("rank", pooled=np.sort(np.concatenate(full)))
        return rank if _narrow_share(rank.to_axis(id_scores), rank.to_axis(ood_scores)) > share else cls("linear")

    def to_axis(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "symlog":
            return np.sign(x) * np.log10(1 + np.abs(x) / self.c)
        if self.kind == "rank":
            left = np.searchsorted(self.pooled, x, "left")
            right = np.searchsorted(self.pooled, x, "right")
            return 100 * (left + right) / (2 * self.pooled.size)
        return x

    def from_axis(self, t):
        return np.sign(t) * self.c * (10 ** np.abs(t) - 1) if self.kind == "symlog" else np.asarray(t)

    def set_ticks(self, ax, lo: float, hi: float):
        """Few, non-overlapping tick labels: decades of the score on a symlog axis, 0-100 on ranks."""
        from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

        if self.kind == "rank":
            ax.xaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
        elif self.kind == "symlog":
            a, b = self.from_axis(np.array([lo, hi]))
            top = int(np.floor(np.log10(max(abs(a), abs(b), 1e-300))))
            cands = [0.0] + [s * 10.0 ** k for k in range(top - 12, top + 1) for s in (-1, 1)]
            ticks = sorted(v for v in cands if a <= v <= b and (v == 0 or abs(v) >= self.c))
            while len(ticks) > 5:
                ticks = ticks[::2]
            if len(ticks) >= 2:
                ax.xaxis.set_major_locator(FixedLocator(self.to_axis(ticks)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: _decade(float(self.from_axis(t)))))
            else:  # under two decades: round score values, kept apart by an eighth of the axis at least
                cands = MaxNLocator(8).tick_values(a, b)
                at, kept = self.to_axis(cands), []
                for v, t in zip(cands, at):
                    if lo <= t <= hi and (not kept or t - kept[-1][1] >= (hi - lo) / 8):
                        kept.append((v, t))
                ax.xaxis.set_major_locator(FixedLocator([t for _, t in kept]))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda t, _: f"{float(self.from_axis(t)):.3g}"))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _decade(v: float) -> str:
    """``-10³`` as plain text (Unicode superscripts: no mathtext parse, which costs more than the figure)."""
    if v == 0:
        return "0"
    k = int(round(np.log10(abs(v))))
    sign = "\u2212" if v < 0 else ""
    return f"{sign}10{str(k).translate(_SUPERSCRIPT)}"


def _fpr_title(fpr: str) -> str:
    return {"vim": "ViM convention: OOD share at or above the ID threshold",
            "oe": "OE/MOS convention: threshold with ID recall closest to 95%",
            "openood": "OpenOOD convention: OOD positive, first ROC point with OOD TPR >= 95%"}.get(fpr, fpr)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # one canvas, one renderer: its text-size cache serves every redraw
    return fig


class DetectorFigure:
    """The figure of one detector for a run's OOD sets: a histogram panel per set, then the ROC panel.

    Built once and redrawn for each detector with :meth:`update` (the axes, labels and legends stay; only the
    data, limits, ticks and titles change), which is what makes a figure per detector cheap.
    """

    def __init__(self, datasets: Sequence[str], fpr: str = "vim", bins: int = 60):
        import matplotlib
        from matplotlib.colors import to_rgba
        from matplotlib.patches import StepPatch
        from matplotlib.ticker import MaxNLocator

        self.datasets, self.fpr, self.bins = list(datasets), fpr, bins
        n = len(self.datasets) + 1
        width, height = 3.0 * n, 3.0
        with matplotlib.rc_context(_RC):
            self.fig = fig = _figure(width, height)
            axes = fig.subplots(1, n, squeeze=False)[0]
            # fixed margins in inches (no tight_layout pass): title and legend rows on top, axis labels below
            fig.subplots_adjust(left=0.62 / width, right=1 - 0.08 / width, bottom=0.5 / height,
                                top=1 - 0.78 / height, wspace=0.35)
            self.hist = []
            empty = (np.zeros(1), np.arange(2.0))
            for ax in axes[:-1]:
                patches = [ax.add_artist(StepPatch(*empty, facecolor=to_rgba(c, 0.3), edgecolor=c, lw=1.0,
                                                   label=label))
                           for c, label in ((ID_COLOR, "ID test"), (OOD_COLOR, "OOD (the panel's set)"))]
                line = ax.axvline(0, color="black", ls="--", lw=0.9,
                                  label=f"threshold keeping {100 * TPR:.0f}% of ID")
                ax.yaxis.set_major_locator(MaxNLocator(3))
                ax.set_ylabel("% of the group per bin")
                self.hist.append((ax, patches, line))
            self.roc = roc = axes[-1]
            roc.plot([0, 1], [0, 1], color="0.6", ls=":", lw=0.8, label="chance")
            roc.axhline(TPR, color="0.8", lw=0.6)
            self.curves = [roc.plot([], [], color=set_color(i), lw=1.3, label=name)[0]
                           for i, name in enumerate(self.datasets)]
            self.points = [roc.plot([], [], "o", ms=4.5, color=set_color(i), mec="black", mew=0.6)[0]
                           for i in range(len(self.datasets))]
            roc.plot([], [], "o", ms=4.5, color="white", mec="black", mew=0.6, label=f"at {100 * TPR:.0f}% TPR")
            roc.set_xlim(-0.01, 1.01)
            roc.set_ylim(-0.01, 1.01)
            roc.set_xticks([0, 0.5, 1])
            roc.set_yticks([0, 0.5, 1])
            roc.set_xlabel("FPR (share of OOD accepted)")
            roc.set_ylabel("TPR (share of ID accepted)")
            roc.set_title("ROC (AUROC %)")
            self.roc_legend = roc.legend(loc="best", frameon=False, handlelength=1.4, borderaxespad=0.2)
            self.title = fig.suptitle("", fontsize=9, y=1 - 0.06 / height, va="top")
            if self.datasets:
                fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=3, frameon=False,
                           bbox_to_anchor=(0.5 * (1 - 1 / n), 1 - 0.26 / height), handlelength=1.6)

    def _histogram(self, ax, patches, line, id_scores, ood_scores, name: str, rec: dict):
        from matplotlib.ticker import ScalarFormatter

        axis = ScoreAxis.choose(id_scores, ood_scores)
        t_id, t_ood = axis.to_axis(id_scores), axis.to_axis(ood_scores)
        if axis.kind == "rank":
            lo, hi = 0.0, 100.0
        else:  # the middle 99 % of the pooled scores: a handful of outliers squeezes nothing
            lo, hi = _spread(np.concatenate([t_id, t_ood]))
        thr = float(axis.to_axis(threshold_at_tpr(id_scores)))
        lo, hi = min(lo, thr), max(hi, thr)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, self.bins + 1)
        top = 0.0
        for patch, t in zip(patches, (t_id, t_ood)):
            counts, _ = np.histogram(t, bins=self.bins, range=(lo, hi))
            share = 100 * counts / t.size  # of the whole group: outliers out of range count in the total
            patch.set_data(share, edges)
            top = max(top, float(share.max()))
        line.set_xdata([thr, thr])
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 1.05 * top if top > 0 else 1)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_ticks(ax, lo, hi)
        ax.set_xlabel(axis.label)
        auroc, fpr95 = rec.get("auroc"), rec.get("fpr95")
        stats = "n/a" if auroc is None else f"AUROC {100 * auroc:.2f}, FPR95 {100 * fpr95:.2f}"
        ax.set_title(f"{name}: {stats}")

    def update(self, method: str, scores: Dict[str, np.ndarray], records: Dict[str, dict]):
        """Draw one detector: ``scores`` ``{"id": ..., set name: ...}``, ``records`` ``{set name: {"auroc",
        "fpr95"}}`` (fractions). Returns the Figure."""
        import matplotlib

        with matplotlib.rc_context(_RC):
            for (ax, patches, line), name in zip(self.hist, self.datasets):
                line.set_visible(name in scores)
                if name in scores:
                    self._histogram(ax, patches, line, scores["id"], scores[name], name, records.get(name, {}))
                else:  # the detector could not score this set (the record's note says why)
                    for patch in patches:
                        patch.set_data(np.zeros(1), np.arange(2.0))
                    ax.set_title(f"{name}: not scored")
            t = threshold_at_tpr(scores["id"])
            at_t = float(np.mean(scores["id"] >= t))
            sorted_id = np.sort(scores["id"])
            texts = self.roc_legend.get_texts()
            for i, name in enumerate(self.datasets):
                got = name in scores
                self.curves[i].set_data(*(thin_curve(*roc_sampled(sorted_id, np.sort(scores[name]))) if got
                                          else ([], [])))
                self.points[i].set_data(*(([float(np.mean(scores[name] >= t))], [at_t]) if got else ([], [])))
                auroc = records.get(name, {}).get("auroc")
                texts[1 + i].set_text(f"{name} ({'n/a' if auroc is None else f'{100 * auroc:.1f}'})")
            convention = {"vim": "ViM", "oe": "OE/MOS", "openood": "OpenOOD"}.get(self.fpr, self.fpr)
            self.title.set_text(f"{display_name(method)}: FPR95 at {100 * TPR:.0f}% TPR, {convention} convention")
        return self.fig


def detector_figure(method: str, scores: Dict[str, np.ndarray], records: Dict[str, dict],
                    datasets: Sequence[str], fpr: str = "vim"):
    """One detector: a histogram panel per OOD set and a ROC panel; returns the matplotlib Figure.

    ``scores``: ``{"id": ..., set name: ...}``; ``records``: ``{set name: {"auroc", "fpr95"}}`` (fractions).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> fig = detector_figure("vim", {"id": rng.normal(1, 1, 300), "far": rng.normal(0, 1, 200)},
    ...                       {"far": {"auroc": 0.76, "fpr95": 0.7}}, ["far"])
    >>> [ax.get_xlabel() for ax in fig.axes]
    ['score (higher = more ID)', 'FPR (share of OOD accepted)']
    """
    return DetectorFigure(datasets, fpr).update(method, scores, records)


def overview_figure(result, groups: Optional[Dict[str, List[str]]] = None):
    """Every detector on every OOD set: AUROC and FPR95 (%) side by side, one row per detector sorted by mean
    AUROC (best on top), one colour per OOD set; near (circles) and far (squares) sets when grouped."""
    import matplotlib

    groups = groups or {}
    by = {(r["method"], r["dataset"]): r for r in result.records}
    methods = [m for m in dict.fromkeys(r["method"] for r in result.records)
               if all(by[m, d].get("auroc") is not None for d in result.datasets if (m, d) in by)]
    mean = {m: np.mean([by[m, d]["auroc"] for d in result.datasets if (m, d) in by]) for m in methods}
    methods.sort(key=lambda m: mean[m])  # bottom to top: best on top
    marker = {d: ("o" if d in groups.get("near", []) else "s" if d in groups.get("far", []) else "o")
              for d in result.datasets}
    y = np.arange(len(methods))
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, 1.1 + 0.19 * max(len(methods), 3))
        axes = fig.subplots(1, 2, sharey=True)
        fig.subplots_adjust(left=0.17, right=0.985, bottom=0.6 / fig.get_figheight() + 0.02,
                            top=1 - 0.34 / fig.get_figheight(), wspace=0.06)
        for ax, metric, head in ((axes[0], "auroc", "AUROC (%), higher is better"),
                                 (axes[1], "fpr95", "FPR95 (%), lower is better")):
            for yy in y[::2]:
                ax.axhspan(yy - 0.5, yy + 0.5, color="0.95", lw=0)
            for i, d in enumerate(result.datasets):
                vals = [100 * by[m, d][metric] if (m, d) in by else np.nan for m in methods]
                label = f"{d} ({g})" if (g := next((k for k, v in groups.items() if d in v), None)) else d
                ax.plot(vals, y, marker[d], ms=4, color=set_color(i), mec="black", mew=0.3, ls="none", label=label)
            means = [100 * np.mean([by[m, d][metric] for d in result.datasets if (m, d) in by]) for m in methods]
            ax.plot(means, y, "|", ms=9, mew=1.5, color="black", label="mean")
            ax.set_xlabel(head)
            ax.set_xlim(-2, 102)
            ax.set_xticks([0, 25, 50, 75, 100])
        axes[0].axvline(50, color="0.6", ls=":", lw=0.8)
        axes[0].set_yticks(y, [display_name(m) for m in methods])
        axes[0].set_ylim(-0.6, len(methods) - 0.4)
        axes[1].tick_params(axis="y", left=False)
        fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(result.datasets) + 1,
                   frameon=False, bbox_to_anchor=(0.58, 1.0))
        fig.text(0.985, 0.003, f"FPR95: {_fpr_title(result.fpr)}; detectors sorted by mean AUROC; dotted: chance",
                 ha="right", va="bottom", fontsize=6.5, color="0.3")
    return fig


def write_plots(result, out_dir, fmt: str = "png", near=None, far=None, dpi: int = 150) -> list:
    """``<method>.<fmt>`` per detector that could score and ``overview.<fmt>`` under ``out_dir`` (png, or
    vector pdf/svg); ``near``/``far`` mark the OOD groups in the overview. Returns the paths written."""
    if fmt not in PLOT_FORMATS:
        raise InputError(f"--plot_format {fmt}: choose from {', '.join(PLOT_FORMATS)}")
    groups = parse_groups(result.datasets, near, far)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by = {(r["method"], r["dataset"]): r for r in result.records}
    written = []
    figure = DetectorFigure(result.datasets, result.fpr) if result.scores else None
    for method, s in result.scores.items():
        fig = figure.update(method, s, {d: by[method, d] for d in result.datasets})
        written.append(_save(fig, out_dir / f"{method}.{fmt}", dpi))
    if result.records:
        written.append(_save(overview_figure(result, groups), out_dir / f"overview.{fmt}", dpi))
    return written


def _save(fig, path: Path, dpi: int) -> Path:
    import matplotlib

    from .fileio import atomic_path

    with matplotlib.rc_context(_RC), atomic_path(path) as tmp:  # font embedding is read when saving
        fmt = path.suffix[1:]
        # zlib level 1: about half the PNG encoding time of the default level, files of about the same size
        fig.savefig(tmp, dpi=dpi, format=fmt, **({"pil_kwargs": {"compress_level": 1}} if fmt == "png" else {}))
    return path
