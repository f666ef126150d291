"""A gated verdict as JUnit XML: one test case per policy limit (passed, ``<failure>`` when the
limit is exceeded, ``<error>`` when it is inconclusive or the report cannot answer it), so CI test
dashboards show the release gate next to the unit tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from llm_mia.core import io


def junit_xml(report: dict, verdict: dict) -> str:
    """The JUnit XML document (a ``<testsuites>`` with one ``<testsuite name="llm-mia release gate">``)."""
    checks = verdict.get("checks") or []
    n_fail = sum(c["status"] == "failed" for c in checks)
    n_err = sum(c["status"] in ("error", "inconclusive") for c in checks)
    counts = {"tests": str(len(checks)), "failures": str(n_fail), "errors": str(n_err), "skipped": "0"}
    root = ET.Element("testsuites", name="llm-mia", **counts)
    suite = ET.SubElement(root, "testsuite", name="llm-mia release gate", time="0", **counts)
    props = ET.SubElement(suite, "properties")
    prov = report.get("provenance") or {}
    for k, v in (("verdict", verdict.get("status")), ("line", verdict.get("line")), ("policy", verdict.get("policy")),
                 ("model", prov.get("model")), ("model_weights_sha256", prov.get("model_weights_sha256"))):
        if v is not None:
            ET.SubElement(props, "property", name=k, value=str(v))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname="llm_mia.gate", name=c["name"], time="0")
        if c["status"] == "failed":
            el = ET.SubElement(case, "failure", message=c["text"], type="LimitExceeded")
            el.text = "\n".join(str(it) for it in c.get("items") or []) or c["text"]
        elif c["status"] in ("inconclusive", "error"):
            kind = "Inconclusive" if c["status"] == "inconclusive" else "Unanswerable"
            ET.SubElement(case, "error", message=f"{c['text']}: {c['reason']}", type=kind)
        ET.SubElement(case, "system-out").text = c["text"]
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, report: dict, verdict: dict) -> None:
    """Write :func:`junit_xml` to ``path`` (atomic)."""
    io.write_text(path, junit_xml(report, verdict))
