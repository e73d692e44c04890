"""Figures, checked on the matplotlib objects: labels on every axis, legends that name the sets, colours that
mean one thing, the 95 %-TPR threshold and operating points where the scores put them, readable axes."""
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_hex
from sklearn.metrics import roc_curve

from ood import plots
from ood.errors import InputError
from ood.metrics import evaluate


def scores_for(kind, rng, n_id=400, n_ood=300):
    if kind == "linear":
        return rng.normal(1, 1, n_id), rng.normal(0, 1.5, n_ood)
    if kind == "symlog":  # ViM on far OOD: a narrow ID group next to a heavy OOD tail
        return rng.normal(-3, 0.5, n_id), -np.exp(rng.normal(6, 1, n_ood))
    if kind == "rank":  # a spike on a constant offset inside a wide group: no log helps
        return 1000 + rng.normal(0, 0.01, n_id), 1000 + rng.normal(0, 30, n_ood)
    if kind == "offset":  # large values with a small spread: offset notation on the ticks
        return 1e6 + rng.normal(0, 1e4, n_id), 1e6 + rng.normal(-2e4, 2e4, n_ood)
    raise ValueError(kind)


def make_result(rng, kinds=("linear", "symlog"), methods=("msp", "vim"), fpr="vim"):
    sets = [f"set_{k}" for k in kinds]
    scores, records = {}, []
    for m in methods:
        s = {"id": scores_for(kinds[0], rng)[0]}  # one ID set per detector, each OOD set of its own kind
        for k, name in zip(kinds, sets):
            s[name] = scores_for(k, rng)[1]
        for name in sets:
            records.append({"method": m, "dataset": name, **evaluate(s["id"], s[name], fpr)})
        scores[m] = s
    return SimpleNamespace(records=records, scores=scores, datasets=sets, fpr=fpr)


def figure_for(result, method):
    by = {(r["method"], r["dataset"]): r for r in result.records}
    return plots.detector_figure(method, result.scores[method], {d: by[method, d] for d in result.datasets},
                                 result.datasets, result.fpr)


def texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def test_every_axis_is_labelled_and_the_legends_name_the_sets():
    res = make_result(np.random.default_rng(0))
    fig = figure_for(res, "vim")
    assert len(fig.axes) == len(res.datasets) + 1
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax
        assert ax.get_title()
    hist, roc = fig.axes[:-1], fig.axes[-1]
    for ax, name in zip(hist, res.datasets):
        assert "higher = more ID" in ax.get_xlabel() and ax.get_ylabel() == "% of the group per bin"
        assert ax.get_title().startswith(f"{name}: AUROC")
    roc_names = texts(roc.get_legend())
    for name in res.datasets:
        assert any(t.startswith(name) for t in roc_names), roc_names
    assert texts(fig.legends[0])[:2] == ["ID test", "OOD (the panel's set)"]
    assert "ViM convention" in fig.get_suptitle() and fig.get_suptitle().startswith("ViM")


def test_colours_mean_one_thing():
    res = make_result(np.random.default_rng(1))
    fig = figure_for(res, "msp")
    hist_colours = {to_hex(p.get_edgecolor()) for ax in fig.axes[:-1] for p in ax.patches}
    assert hist_colours == {to_hex(plots.ID_COLOR), to_hex(plots.OOD_COLOR)}
    curve_colours = {to_hex(line.get_color()) for line in fig.axes[-1].lines if len(line.get_xdata()) > 2}
    assert len(curve_colours) == len(res.datasets) and not curve_colours & hist_colours


def test_threshold_and_operating_points_are_where_the_scores_put_them():
    rng = np.random.default_rng(2)
    res = make_result(rng)
    fig = figure_for(res, "msp")
    s = res.scores["msp"]
    k = int(np.floor(0.95 * s["id"].size))
    t = np.sort(s["id"])[::-1][k - 1]  # the k-th largest ID score
    line = next(ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--")
    assert line.get_xdata()[0] == pytest.approx(t)  # the first panel is linear: score units
    roc = fig.axes[-1]
    points = [ln for ln in roc.lines if ln.get_marker() == "o" and len(ln.get_xdata()) == 1]
    for point, name in zip(points, res.datasets):
        fpr = sum(1 for v in s[name] if v >= t) / len(s[name])
        tpr = sum(1 for v in s["id"] if v >= t) / len(s["id"])
        assert point.get_xdata()[0] == pytest.approx(fpr) and point.get_ydata()[0] == pytest.approx(tpr)
        rec = next(r for r in res.records if r["method"] == "msp" and r["dataset"] == name)
        assert point.get_xdata()[0] == pytest.approx(rec["fpr95"])  # the ViM convention's FPR95


@pytest.mark.parametrize("kind,label", [("linear", "score (higher"), ("symlog", "symmetric-log"),
                                        ("rank", "pooled rank")])
def test_squeezed_groups_get_a_readable_axis_that_says_so(kind, label):
    a, b = scores_for(kind, np.random.default_rng(3))
    assert plots.ScoreAxis.choose(a, b).kind == kind
    res = SimpleNamespace(records=[{"method": "m", "dataset": "x", **evaluate(a, b)}],
                          scores={"m": {"id": a, "x": b}}, datasets=["x"], fpr="vim")
    ax = figure_for(res, "m").axes[0]
    assert label in ax.get_xlabel()
    lo, hi = ax.get_xlim()
    t = plots.ScoreAxis.choose(a, b)
    for group in (a, b):  # both groups' middle 90 % spread over at least 5 % of the panel
        g_lo, g_hi = np.percentile(t.to_axis(group), [5, 95])
        assert (g_hi - g_lo) >= 0.05 * (hi - lo)


def overlaps(boxes):
    return any(b1.overlaps(b2) for i, b1 in enumerate(boxes) for b2 in boxes[i + 1:])


@pytest.mark.parametrize("kind", ["linear", "symlog", "rank", "offset"])
def test_tick_labels_never_overlap(kind):
    a, b = scores_for(kind, np.random.default_rng(4))
    res = SimpleNamespace(records=[{"method": "m", "dataset": "x", **evaluate(a, b)}],
                          scores={"m": {"id": a, "x": b}}, datasets=["x"], fpr="vim")
    fig = figure_for(res, "m")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [lab.get_window_extent(renderer) for lab in axis.get_ticklabels()
                     if lab.get_visible() and lab.get_text()]
            assert len(boxes) >= 2 and not overlaps(boxes), (ax.get_title(), [lab.get_text() for lab in
                                                                               axis.get_ticklabels()])


def test_a_reused_figure_draws_what_a_fresh_one_draws():
    """A figure redrawn for a second detector keeps nothing of the first (limits, ticks, axis kinds, labels)."""
    rng = np.random.default_rng(5)
    first = {"id": scores_for("symlog", rng)[0], "x": scores_for("symlog", rng)[1], "y": scores_for("rank", rng)[1]}
    second = {"id": scores_for("linear", rng)[0], "x": scores_for("linear", rng)[1], "y": scores_for("linear", rng)[1]}
    recs = [{d: evaluate(s["id"], s[d]) for d in ("x", "y")} for s in (first, second)]
    reused = plots.DetectorFigure(["x", "y"])
    reused.update("vim", first, recs[0])
    reused.update("msp", second, recs[1]).canvas.draw()
    fresh = plots.detector_figure("msp", second, recs[1], ["x", "y"])
    fresh.canvas.draw()
    assert np.array_equal(np.asarray(reused.fig.canvas.buffer_rgba()), np.asarray(fresh.canvas.buffer_rgba()))


def test_overview_sorts_detectors_and_names_the_sets():
    res = make_result(np.random.default_rng(7), methods=("msp", "vim", "gen_react", "energy"))
    fig = plots.overview_figure(res, {"near": [res.datasets[0]], "far": [res.datasets[1]]})
    ax = fig.axes[0]
    by = {(r["method"], r["dataset"]): r for r in res.records}
    mean = {m: np.mean([by[m, d]["auroc"] for d in res.datasets]) for m in ("msp", "vim", "gen_react", "energy")}
    names = {"msp": "MSP", "vim": "ViM", "gen_react": "GEN + ReAct", "energy": "Energy"}
    shown = [t.get_text() for t in ax.get_yticklabels()]  # bottom to top
    assert shown == [names[m] for m in sorted(mean, key=mean.get)]
    legend = texts(fig.legends[0])
    assert legend == [f"{res.datasets[0]} (near)", f"{res.datasets[1]} (far)", "mean"]
    for a in fig.axes:
        assert a.get_xlabel()
    assert "AUROC" in fig.axes[0].get_xlabel() and "FPR95" in fig.axes[1].get_xlabel()


def test_write_plots_formats_failed_detectors_and_missing_sets(tmp_path):
    res = make_result(np.random.default_rng(8), methods=("msp", "vim", "energy"))
    del res.scores["energy"]  # it could not be run: its records are null
    for r in res.records:
        if r["method"] == "energy":
            r.update(auroc=None, fpr95=None)
    del res.scores["vim"][res.datasets[1]]  # vim could not score one set
    magic = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}
    for fmt in ("png", "pdf", "svg"):
        paths = plots.write_plots(res, tmp_path / fmt, fmt=fmt)
        assert sorted(p.name for p in paths) == sorted(f"{n}.{fmt}" for n in ("msp", "vim", "overview"))
        assert all(p.read_bytes().startswith(magic[fmt]) for p in paths)
    svg = (tmp_path / "svg" / "msp.svg").read_text()
    assert "ID test" in svg  # text stays text in vector output
    fig = figure_for(SimpleNamespace(**{**vars(res), "records": res.records}), "vim")
    assert fig.axes[1].get_title() == f"{res.datasets[1]}: not scored"
    with pytest.raises(InputError, match="--plot_format"):
        plots.write_plots(res, tmp_path, fmt="jpg")


def test_roc_points_and_thinning():
    rng = np.random.default_rng(9)
    a, b = np.round(rng.normal(1, 1, 500), 1), np.round(rng.normal(0, 1, 400), 1)
    fpr, tpr = plots.roc_points(a, b)
    want_fpr, want_tpr, _ = roc_curve(np.r_[np.ones(500), np.zeros(400)], np.r_[a, b], drop_intermediate=False)
    assert np.allclose(fpr, want_fpr) and np.allclose(tpr, want_tpr)
    big = rng.normal(size=20000)
    x, y = plots.roc_points(big + 0.5, rng.normal(size=20000))
    tx, ty = plots.thin_curve(x, y, 300)
    assert len(tx) <= 301 and (tx[0], ty[0], tx[-1], ty[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(tx) >= 0) and np.all(np.diff(ty) >= 0)
    assert np.max(np.abs(np.interp(x, tx, ty) - y)) < 0.02  # the thinned curve follows the full one
