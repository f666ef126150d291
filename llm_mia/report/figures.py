"""Figures of the HTML report as PNG bytes (matplotlib, Agg backend), to be inlined as data: URIs."""

from __future__ import annotations

import base64
import io as _io
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from llm_mia.core.io import to_float
from llm_mia.report.plots import exposure_plot, roc_plot

#: Exposure estimators drawn when a secret record carries them (bits), with their legend labels.
EXPOSURE_KEYS = {"exposure_rank": "rank", "exposure_exact": "exact", "exposure_extrapolated": "extrapolated"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an <img src>."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(v) -> float | None:

    if v is None or isinstance(v, bool):
        return None
    try:
        f = to_float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def exposure_png(secret_rows: Sequence[dict], n_references: int | None = None) -> bytes | None:
    """Exposure against insertion count (:func:`llm_mia.report.plots.exposure_plot`, the figure the
    audit and ``llm-mia exposure`` write as exposure.png) as PNG bytes; None without exposures."""

    rows = [{**r, **{k: to_float(r[k]) for k in EXPOSURE_KEYS if r.get(k) is not None}}
            for r in secret_rows if _num(r.get("exposure_rank")) is not None]
    if not rows:
        return None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "exposure.png"
        exposure_plot(path, rows, n_references=n_references)
        return path.read_bytes()


def roc_png(labels: Sequence[int], scores: dict[str, Sequence[float]]) -> bytes | None:
    """Log-log ROC curves of the membership signals (:func:`llm_mia.report.plots.roc_plot`) as PNG bytes."""

    if len(set(labels)) < 2 or not scores:
        return None
    clean = {k: [to_float(x) for x in v] for k, v in scores.items()}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "roc.png"
        roc_plot(path, list(labels), clean, title="Membership ROC (members vs held-out)")
        return path.read_bytes()


def zlib_scatter_png(samples: Sequence[dict]) -> bytes | None:
    """Carlini et al. 2021 fig. 3: zlib entropy (bits) against the model's perplexity (log scale),
    one dot per unique sample, memorized samples in colour and those holding a planted secret
    circled. None without samples."""
    rows = [s for s in samples if s.get("duplicate_of") is None]
    pts = [(_num(s.get("perplexity")), _num(s.get("zlib_bytes")), s.get("memorized"), bool(s.get("secrets"))) for s in rows]
    pts = [p for p in pts if p[0] is not None and p[1] is not None and math.isfinite(p[0]) and p[0] > 0]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for flag, colour, label in ((False, "#9aa0a6", "not memorized"), (None, "#9aa0a6", None), (True, "#d93025", "memorized")):
        sel = [p for p in pts if p[2] is flag]
        if sel:
            ax.scatter([p[0] for p in sel], [8 * p[1] for p in sel], s=12, alpha=0.75, color=colour,
                       label=label if label else None)
    sec = [p for p in pts if p[3]]
    if sec:
        ax.scatter([p[0] for p in sec], [8 * p[1] for p in sec], s=60, facecolors="none", edgecolors="#1a73e8",
                   label="holds a planted secret")
    ax.set_xscale("log")
    ax.set_xlabel("perplexity under the model (log scale)")
    ax.set_ylabel("zlib entropy (bits)")
    ax.set_title("Samples: zlib entropy against perplexity")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _png(fig)
