"""Figures for reports: log-log ROC curves (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm_mia.io import atomic_path


def roc_plot(path: str | Path, y_true, scores: dict[str, list[float]], *, title: str = "Membership ROC") -> None:
    """Draw log-log ROC curves, one per signal, into ``path`` (PNG); NaN scores are dropped per signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        keep = ~np.isnan(s)
        if len(set(y[keep])) < 2:
            continue
        s = np.where(np.isinf(s[keep]), np.sign(s[keep]) * np.finfo(np.float64).max, s[keep])
        fpr, tpr, _ = roc_curve(y[keep], s)
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=f"{name} (AUC {roc_auc_score(y[keep], s):.3f})")
    ax.plot([1e-4, 1], [1e-4, 1], ls="--", c="grey", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
