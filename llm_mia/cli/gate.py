"""`llm-mia gate`: a release policy checked against an existing report.json (:mod:`llm_mia.audit.policy`)."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.cli.options import check_ci, verdict_exit, write_ci


def gate(
    report: Path = typer.Argument(..., help="report.json of an earlier `llm-mia audit`."),
    policy: Path = typer.Option(..., "--policy", help="Policy TOML (see examples/policy.toml)."),
    sarif: Path | None = typer.Option(None, "--sarif", help="Write the verdict as SARIF 2.1.0 to this file."),
    junit: Path | None = typer.Option(None, "--junit", help="Write JUnit XML, one test case per limit."),
):
    """Check a release policy against an existing report.json (no model is run).

    Exit 0 = pass, 1 = a limit exceeded, 2 = error (bad policy, not a report, or a limit the report
    cannot answer), 3 = inconclusive (0 when the policy sets allow_inconclusive).
    """
    from llm_mia.audit.policy import (
        UnanswerableLimit,
        evaluate,
        load_policy,
        load_report,
    )

    pol = load_policy(policy)
    rep = load_report(report)
    check_ci(sarif, junit, inputs=(report, policy))
    try:
        v = evaluate(rep, pol)
    except UnanswerableLimit as e:
        write_ci(rep, {"policy": pol.source, **e.verdict.to_dict()}, report.parent, sarif=sarif, junit=junit)
        raise
    write_ci(rep, {"policy": pol.source, **v.to_dict()}, report.parent, sarif=sarif, junit=junit)
    verdict_exit(v.to_dict())
