"""Figures for reports: log-log ROC curves (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from llm_mia.core.io import atomic_path


def _save(fig, path: str | Path) -> None:
    """Write a figure as PNG atomically (temp file + rename) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


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
    _save(fig, path)


def exposure_plot(path: str | Path, rows: list[dict], *, n_references: int | None = None,
                  title: str = "Exposure against insertion count") -> None:
    """Draw each secret's exposure (bits) against how many times it was inserted into ``path`` (PNG).

    ``rows`` are exposure records (``count``, ``exposure_rank``, optionally ``exposure_exact`` and
    ``exposure_extrapolated``; ``space_size`` and ``remaining_guess_bits`` draw the bits of the random part
    a completion recovered, log2 |R| - remaining_guess_bits). Controls (count 0) sit at the left; the x axis is symmetric-log.
    Extrapolated values that are +inf are drawn as triangles at the top of the axis. A dashed line
    marks chance (1/ln 2 = 1.44 bits, where never-inserted controls should sit) and, given
    ``n_references``, a dotted one log2 N, the most the rank estimator can show.
    """

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    jitter = np.linspace(-0.08, 0.08, 5)
    counts = np.array([r["count"] for r in rows], dtype=float)
    xs = counts * (1 + jitter[np.arange(len(rows)) % 5]) + jitter[np.arange(len(rows)) % 5] * 0.5
    rank = np.array([r["exposure_rank"] for r in rows], dtype=float)
    ax.scatter(xs, rank, s=18, label="rank (sampled)", c="C0")
    exact = np.array([r.get("exposure_exact", float("nan")) for r in rows], dtype=float)
    if np.isfinite(exact).any():
        ax.scatter(xs, exact, s=26, marker="s", facecolors="none", edgecolors="C2", label="exact (whole space)")
    ext = np.array([r.get("exposure_extrapolated", float("nan")) for r in rows], dtype=float)
    finite = np.isfinite(ext)
    # partial extraction: bits of the random part recovered = log2 |R| - remaining_guess_bits (higher = more exposed)
    rec = np.array([math.log2(r["space_size"]) - float(r["remaining_guess_bits"])
                    if r.get("remaining_guess_bits") is not None and r.get("space_size") else float("nan")
                    for r in rows], dtype=float)
    top = max([1.0, *rank[np.isfinite(rank)], *ext[finite], *exact[np.isfinite(exact)], *rec[np.isfinite(rec)]]) * 1.08
    if np.isfinite(rec).any():
        ax.scatter(xs, rec, s=22, marker="D", facecolors="none", edgecolors="C4",
                   label="recovered by completion (log2 |R| - bits left)")
    if finite.any():
        ax.scatter(xs[finite], ext[finite], s=18, marker="x", c="C1", label="extrapolated (skew-normal)")
    inf = np.isposinf(ext)
    if inf.any():
        ax.scatter(xs[inf], np.full(inf.sum(), top), s=30, marker="^", c="C3", label="extrapolated = inf (far tail)")
    ax.axhline(1 / math.log(2), ls="--", c="grey", lw=0.8, label="chance, 1/ln 2 = 1.44 bits")
    if n_references:
        ax.axhline(math.log2(n_references), ls=":", c="C0", lw=0.8, label=f"log2 N = {math.log2(n_references):.1f} bits")
    ax.set_xscale("symlog", linthresh=1)
    ticks = sorted({int(c) for c in counts})
    ax.set_xticks(ticks)
    ax.set_xticklabels([("0 (controls)" if t == 0 else str(t)) for t in ticks], fontsize=8)
    ax.set_xlabel("insertions into the training data")
    ax.set_ylabel("exposure (bits)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
