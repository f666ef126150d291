"""`llm-mia corpus build`: a corpus with planted secrets (:mod:`llm_mia.data.corpus`)."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.cli.options import parse_ints

corpus_app = typer.Typer(no_args_is_help=True, help="Build corpora with planted secrets.")


@corpus_app.command("build")
def corpus_build(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl, heldout.jsonl, secrets.json."),
    source: str = typer.Option("python-docs", "--source",
                               help="python-docs (embedded), a .txt/.jsonl file or folder, or hf:NAME[:CONFIG]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the secrets and their placement."),
    repeats: str = typer.Option("1,2,4,8,16,32", "--repeats", help="Insertion counts of the planted secrets."),
    heldout_fraction: float = typer.Option(0.2, "--heldout-fraction",
                                           help="Share of documents held out as non-members."),
    max_chars: int | None = typer.Option(None, "--max-chars", help="Cap on the corpus size in characters."),
    templates: Path | None = typer.Option(None, "--templates",
                                             help="Canary templates JSON (default prompts/canary_templates.json)."),
    unit: str | None = typer.Option(None, "--unit", help="One document = a whole file, a blank-line paragraph or a "
                                       "line: file | paragraph | line (default: file for a folder, paragraph for one "
                                       "text file, the record for .jsonl and hf:)."),
    min_chars: int = typer.Option(50, "--min-chars", help="Drop (and count) documents shorter than this."),
):
    """Deduplicate a corpus, split it into members / held-out and plant canaries and synthetic PII in the members."""
    from llm_mia.data.corpus import build_corpus

    s = build_corpus(source, out, seed=seed, repeats=tuple(parse_ints(repeats, "--repeats")),
                     heldout_fraction=heldout_fraction, max_chars=max_chars, templates=templates,
                     unit=unit, min_chars=min_chars)
    for line in s.lines():
        typer.echo(line)
    typer.echo(f"corpus: {s.n_train} member and {s.n_heldout} held-out documents, {s.n_secrets} secrets -> {out}")
