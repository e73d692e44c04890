"""PNG pictures of a benchmark result: per detector, ID-vs-OOD score histograms and ROC curves in one figure."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def roc_points(id_scores, ood_scores):
    """(FPR, TPR) of ID-positive thresholds from high to low, starting at (0, 0)."""
    s = np.concatenate([id_scores, ood_scores])
    y = np.r_[np.ones(len(id_scores)), np.zeros(len(ood_scores))]
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    return np.r_[0, fps / max(1, len(ood_scores))], np.r_[0, tps / max(1, len(id_scores))]


def write_plots(result, out_dir) -> list:
    """One ``<method>.png`` per detector under ``out_dir``; returns the paths written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by = {(r["method"], r["dataset"]): r for r in result.records}
    written = []
    for method, s in result.scores.items():
        sets = result.datasets
        fig, axes = plt.subplots(1, len(sets) + 1, figsize=(4 * (len(sets) + 1), 3.4))
        for ax, name in zip(axes[:-1], sets):
            both = np.concatenate([s["id"], s[name]])  # each panel its own range: one extreme set squeezes none
            lo, hi = np.percentile(both, [0.5, 99.5])
            bins = np.linspace(lo, hi, 60) if hi > lo else 30
            ax.hist(s["id"], bins=bins, alpha=0.55, density=True, label="ID test", color="tab:blue")
            ax.hist(s[name], bins=bins, alpha=0.55, density=True, label=name, color="tab:red")
            r = by[method, name]
            ax.set_title(f"{name}: AUROC {100 * r['auroc']:.1f}, FPR95 {100 * r['fpr95']:.1f}", fontsize=9)
            ax.set_xlabel("score (higher = more ID)")
            ax.legend(fontsize=8)
        ax = axes[-1]
        for name in sets:
            fpr, tpr = roc_points(s["id"], s[name])
            ax.plot(fpr, tpr, label=f"{name} ({100 * by[method, name]['auroc']:.1f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("FPR (OOD accepted)")
        ax.set_ylabel("TPR (ID accepted)")
        ax.set_title("ROC", fontsize=9)
        ax.legend(fontsize=8, loc="lower right")
        fig.suptitle(method)
        fig.tight_layout()
        path = out_dir / f"{method}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
