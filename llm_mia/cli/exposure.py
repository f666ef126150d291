"""`llm-mia exposure`: canary exposure of every secret (:mod:`llm_mia.exposure.secrets`)."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.cli.options import engine as engine_option
from llm_mia.cli.options import model_args as model_args_option


def exposure(
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder or HF id."),
    model_args: str | None = model_args_option(),
    secrets: Path = typer.Option(..., "--secrets",
                                 help="secrets.json (from `llm-mia corpus build` or written by hand)."),
    out: Path = typer.Option(..., "--out", help="Output folder: exposure.json, exposure.csv, exposure.png."),
    references: int = typer.Option(10_000, "--references", min=1,
                                   help="Random candidates per secret for the rank estimator."),
    exact_limit: int = typer.Option(1_000_000, "--exact-limit", min=0,
                                    help="Enumerate spaces of at most this many members for the exact exposure."),
    beams: int = typer.Option(5, "--beams", min=1, help="Beams for beam-search extraction."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(64, "--batch-size", min=1,
                                   help="Rows per forward pass (64 was fastest on a 2-core CPU)."),
    device: str | None = typer.Option(None, "--device"),
    engine: str = engine_option(),
):
    """Canary exposure (Carlini et al. 2019) of every secret: rank, exact, extrapolated; greedy, beam, sampling
    extraction."""
    from llm_mia.core.io import check_output_dir
    from llm_mia.exposure.secrets import run_exposure

    check_output_dir(out)

    res = run_exposure(model, secrets, out, n_references=references, exact_limit=exact_limit, seed=seed, beams=beams,
                       batch_size=batch_size, device=device, model_args=model_args, engine=engine)
    from llm_mia.core.parallel import is_main

    if not is_main():  # under `accelerate launch` process 0 reports
        return
    c = res.controls
    typer.echo(f"{len(res.rows)} secrets, {sum(r['greedy_extracted'] for r in res.rows)} greedily extracted -> "
               f"{out / 'exposure.json'}")
    if c.get("n"):
        typer.echo(f"controls: mean rank exposure {c['mean_exposure_rank']:.2f} bits, "
                   f"expected {c['expected_bits']:.2f} "
                   f"(1/ln 2 = 1.44); off by {c['difference_bits']:+.2f} bits = {c['z']:+.1f} standard errors")
