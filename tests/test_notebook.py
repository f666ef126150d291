"""notebooks/walkthrough.ipynb runs top to bottom (nbclient, a fresh kernel, one thread) on this checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_mia.audit.policy import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs(monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="dev extra: pip install -e '.[dev]'")
    nbclient = pytest.importorskip("nbclient", reason="dev extra: pip install -e '.[dev]'")
    # the kernel imports this checkout's llm_mia (not another install), runs one thread, no hub access
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    nb = nbformat.read(NB, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}})
    client.execute()
    outs = {i: "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in c.get("outputs", []))
            for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    joined = "\n".join(outs.values())
    # the audit cell printed a verdict and wrote the three reports; the gate agreed with it
    assert any(w in joined for w in ("PASS: ", "FAIL: ", "INCONCLUSIVE: "))
    assert "'report.html'" in joined and "'report.json'" in joined and "'report.md'" in joined
    lines = joined.splitlines()
    verdict = next(x for x in lines if x.startswith(("PASS: ", "FAIL: ", "INCONCLUSIVE: ")))
    gate = next(x for x in lines if x.startswith("exit "))
    assert gate == f"exit {EXIT_CODES[verdict.split(':')[0]]} | {verdict}"
