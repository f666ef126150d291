"""`llm-mia shadow train`: shadow models for LiRA, RMIA and the Shokri attack (:mod:`llm_mia.membership.shadow`)."""

from __future__ import annotations

from pathlib import Path

import typer

shadow_app = typer.Typer(no_args_is_help=True, help="Shadow models for LiRA, RMIA and the Shokri attack.")


@shadow_app.command("train")
def shadow_train(
    population: Path = typer.Option(..., "--population",
                                    help="Texts from the target's data distribution (.txt/.jsonl/.csv)."),
    n: int = typer.Option(8, "--n", help="Shadow models K (each text IN for half of them)."),
    out: Path = typer.Option(..., "--out", help="Shadow folder: membership.json, population.jsonl, model-00/ ..."),
    preset: str = typer.Option("tiny", "--preset", help="Training preset of every shadow model (tiny | small | mini)."),
    base: str | None = typer.Option(None, "--base",
                                    help="Fine-tune this base (the target's base) for each shadow model."),
    tokenizer_from: str | None = typer.Option(None, "--tokenizer-from", help="Train from scratch with this model "
                                                 "folder's tokenizer (the target's folder)."),
    steps: int | None = typer.Option(None, "--steps", help="Override the preset's number of steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the IN/OUT draw; model k trains with seed + k."),
    like: Path | None = typer.Option(None, "--like", help="A target model folder trained by llm-mia: copy its recipe "
                                     "(LoRA adapters of the same base and rank, its preset and steps)."),
):
    """Train K shadow models on balanced random halves of a population; a rerun resumes after a kill."""
    from llm_mia.membership.shadow import train_shadows

    sh = train_shadows(population, out, n_models=n, preset=preset, base=base, tokenizer_from=tokenizer_from,
                       max_steps=steps, seed=seed, like=like, echo=lambda s: typer.echo(s, err=True))
    from llm_mia.core.parallel import is_main

    if is_main():  # under `accelerate launch` each process trained its share; process 0 reports
        typer.echo(f"{sh.n_models} shadow models on {len(sh.texts)} population texts -> {out}")
