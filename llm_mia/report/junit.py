"""A gated verdict as JUnit XML: one test case per policy limit (passed, ``<failure>`` when the
limit is exceeded, ``<skipped>`` when it is inconclusive or not measured, ``<error>`` when the report
cannot answer it: :data:`llm_mia.report.ci.OUTCOMES`), each case with the check's confidence interval
as a ``<property name="interval">`` where it has one, so CI test dashboards show the release gate next
to the unit tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from llm_mia.core import io
from llm_mia.report.ci import clean_text, interval_text, outcome


def junit_xml(report: dict, verdict: dict) -> str:
    """The JUnit XML document (a ``<testsuites>`` with one ``<testsuite name="llm-mia release gate">``)."""
    checks = verdict.get("checks") or []
    kinds = [outcome(c["status"])[0] for c in checks]
    counts = {"tests": str(len(checks)), "failures": str(kinds.count("failure")), "errors": str(kinds.count("error")),
              "skipped": str(kinds.count("skipped"))}
    root = ET.Element("testsuites", name="llm-mia", **counts)
    suite = ET.SubElement(root, "testsuite", name="llm-mia release gate", time="0", **counts)
    props = ET.SubElement(suite, "properties")
    prov = report.get("provenance") or {}
    for k, v in (("verdict", verdict.get("status")), ("line", verdict.get("line")), ("policy", verdict.get("policy")),
                 ("model", prov.get("model")), ("model_weights_sha256", prov.get("model_weights_sha256"))):
        if v is not None:
            ET.SubElement(props, "property", name=k, value=clean_text(v))
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname="llm_mia.gate", name=clean_text(c["name"]), time="0")
        element, kind, _, _ = outcome(c["status"])
        if interval_text(c):  # the figure's one-sided confidence bounds, as the verdict computed them
            cprops = ET.SubElement(case, "properties")
            ET.SubElement(cprops, "property", name="interval", value=interval_text(c))
            ET.SubElement(cprops, "property", name="status", value=clean_text(c["status"]))
        if element == "failure":
            el = ET.SubElement(case, "failure", message=clean_text(c["text"]), type=kind)
            el.text = clean_text("\n".join(str(it) for it in c.get("items") or []) or c["text"])
        elif element is not None:
            ET.SubElement(case, element, message=clean_text(f"{c['text']}: {c['reason']}"), type=kind)
        ET.SubElement(case, "system-out").text = clean_text(c["text"])
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(path: str | Path, report: dict, verdict: dict) -> None:
    """Write :func:`junit_xml` to ``path`` (atomic)."""
    io.write_text(path, junit_xml(report, verdict))
