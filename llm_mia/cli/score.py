"""`llm-mia score`: membership scores of texts with every signal (:mod:`llm_mia.membership.scoring`)."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.cli.options import echo_engine
from llm_mia.cli.options import engine as engine_option
from llm_mia.cli.options import model_args as model_args_option


def score(
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder or HF id."),
    model_args: str | None = model_args_option(),
    input: Path = typer.Option(..., "--input", help="Texts: .txt (one a line), .jsonl or .csv."),
    output: Path = typer.Option(..., "--output", help="Output JSONL, one record per input, in input order."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model (enables the reference signals)."),
    text_field: str = typer.Option("text", "--text-field"),
    label_field: str = typer.Option("label", "--label-field", help="0/1 labels (member = 1), used for --metrics."),
    signals: str | None = typer.Option(None, "--signals",
                                       help="Comma-separated signal names (default: all whose inputs are given)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                             help="Texts per forward pass (default: a per-device token budget)."),
    prepend_bos: bool = typer.Option(False, "--prepend-bos",
                                     help="Condition on the BOS/EOS id so the first token is scored."),
    recall_prefix: Path | None = typer.Option(None, "--recall-prefix",
                                              help="File of non-member text to prefix (ReCaLL)."),
    dc_pdd_corpus: Path | None = typer.Option(None, "--dc-pdd-corpus",
                                              help="Texts whose token frequencies calibrate DC-PDD."),
    metrics: Path | None = typer.Option(None, "--metrics",
                                        help="Write AUC, bootstrap CI and TPR at FPR per signal (needs labels)."),
    roc: Path | None = typer.Option(None, "--roc", help="Draw log-log ROC curves to this PNG (needs labels)."),
    calibrate_on: Path | None = typer.Option(None, "--calibrate-on",
                                             help="Known non-members: per-signal thresholds and decisions."),
    target_fpr: float = typer.Option(0.01, "--target-fpr", help="FPR of the calibrated thresholds."),
    device: str | None = typer.Option(None, "--device"),
    shadow: Path | None = typer.Option(None, "--shadow", help="Shadow folder (`llm-mia shadow train`): adds LiRA, "
                                          "RMIA with K references and the Shokri attack."),
    engine: str = engine_option(),
    max_queries: int | None = typer.Option(None, "--max-queries", min=1,
                                           help="openai: endpoints only: the most API queries (checked before the first)."),
):
    """Score texts for membership with every signal; optional ROC metrics and calibrated decisions."""
    from llm_mia.membership.scoring import score_file

    res = score_file(model, input, output, reference=reference, text_field=text_field, label_field=label_field,
                     signals=[x.strip() for x in signals.split(",") if x.strip()] if signals else None,
                     batch_size=batch_size, prepend_bos=prepend_bos, recall_prefix=recall_prefix,
                     dc_pdd_corpus=dc_pdd_corpus, metrics_path=metrics, roc_path=roc, calibrate_on=calibrate_on,
                     target_fpr=target_fpr, device=device, model_args=model_args, shadow_dir=shadow,
                     engine=engine, max_queries=max_queries)
    from llm_mia.core.parallel import is_main

    if not is_main():  # under `accelerate launch` process 0 reports
        return
    echo_engine(res.get("engine"))
    for w in res.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    procs = f" by {res['num_processes']} processes" if res.get("num_processes", 1) > 1 else ""
    typer.echo(f"scored {res['n']} texts{procs} ({res['n_flagged']} flagged) -> {output}"
               + (f"; metrics -> {metrics}" if metrics else ""))
    for sig, t in res.get("thresholds", {}).items():
        typer.echo(f"threshold at FPR {target_fpr:g} for {sig}: {t:.6g} (member iff score > threshold)")
