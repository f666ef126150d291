"""`llm-mia extract`: sample a model, rank the samples, flag the memorized ones (:mod:`llm_mia.extraction`)."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.cli.options import echo_engine
from llm_mia.cli.options import engine as engine_option
from llm_mia.cli.options import model_args as model_args_option
from llm_mia.cli.options import pii_regions as pii_regions_option


def extract(
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder or HF id."),
    model_args: str | None = model_args_option(),
    out: Path = typer.Option(..., "--out",
                             help="Output folder (samples.jsonl, top.jsonl, extract.json; private/: shards and "
                                  "clear-text rows)."),
    num_samples: int = typer.Option(1000, "--num-samples", min=1, help="Samples per strategy."),
    strategy: str = typer.Option("top-k", "--strategy",
                                 help="top-k, temperature-decay, internet, chat, divergence (the last two: chat models only, "
                                      "Nasr et al. 2023), or several, comma-separated."),
    prompts: str | None = typer.Option(None, "--prompts",
                                          help="Prompt corpus of the internet strategy: .txt/.jsonl/folder/hf:NAME "
                                               "(default: prompts/internet.txt)."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model for the reference ranking."),
    corpus: Path | None = typer.Option(None, "--corpus",
                                       help="Corpus folder: verify samples against its train.jsonl and secrets.json."),
    seed: int = typer.Option(0, "--seed"),
    length: int | None = typer.Option(None, "--length",
                                      help="New tokens per sample (default: min(256, what fits the context))."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Samples generated per batch."),
    top_n: int = typer.Option(100, "--top-n", min=1, help="Samples kept per (strategy, ranking) in top.jsonl."),
    memorized_min_tokens: int = typer.Option(50, "--memorized-min-tokens", min=1,
                                             help="A verbatim training match this long (or the whole sample) = "
                                                  "memorized."),
    near_similarity: float = typer.Option(0.9, "--near-similarity",
                                          help="Near-verbatim memorized: token edit similarity to a training window "
                                               "at least this (Ippolito et al. 2023)."),
    near_window: int = typer.Option(50, "--near-window", help="Window (tokens) of the near-verbatim match."),
    resume: bool = typer.Option(False, "--resume", help="Continue the samples already in --out (after a kill)."),
    show_secrets: bool = typer.Option(False, "--show-secrets",
                                      help="samples.jsonl / top.jsonl in clear text (default: redacted; clear "
                                           "copies in --out/private/)."),
    device: str | None = typer.Option(None, "--device"),
    pii_regions: str | None = pii_regions_option(panel=None),
    engine: str = engine_option(),
):
    """Sample from a model (Carlini et al. 2021 strategies), rank by their metrics, flag memorized samples.

    Runs data-parallel under `accelerate launch` (each process its own share of sample indices)."""
    from llm_mia.core import io
    from llm_mia.data.secrets import load_secrets
    from llm_mia.extraction.extract import ExtractConfig
    from llm_mia.extraction.extract import extract as run
    from llm_mia.extraction.pii_findings import resolve_regions
    from llm_mia.models.loading import load_model

    regions = resolve_regions(pii_regions, corpus)  # checked before any model work
    cfg = ExtractConfig(num_samples=num_samples, strategies=tuple(x.strip() for x in strategy.split(",") if x.strip()),
                        prompt_source=prompts, seed=seed, max_new_tokens=length, batch_size=batch_size, top_n=top_n,
                        memorized_min_tokens=memorized_min_tokens, near_similarity=near_similarity,
                        near_window=near_window, resume=resume, show_secrets=show_secrets,
                        pii_regions=regions)  # checks options
    io.check_output_dir(out)
    train_texts, secrets = None, []
    if corpus is not None:
        train_texts = [r["text"] for r in io.read_jsonl(corpus / "train.jsonl")]
        if (corpus / "secrets.json").exists():
            secrets = load_secrets(corpus / "secrets.json")
    from llm_mia.extraction.extract import dist_state

    state = dist_state()  # several processes: each on its own device (CPU: all on the CPU)
    dev = device or (str(state.device) if state is not None else None)
    tgt = load_model(model, device=dev, model_args=model_args, engine=engine)
    ref = load_model(reference, device=dev) if reference else None
    echo_engine(tgt)
    s = run(tgt, out, reference=ref, train_texts=train_texts, secrets=secrets, cfg=cfg)
    if s is not None:  # process 0
        typer.echo(f"{s['num_samples']} samples ({s['unique_samples']} unique), {s['memorized_total']} memorized "
                   f"({s.get('near_memorized_total')} near-verbatim) "
                   f"-> {out}")
