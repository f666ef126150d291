"""`llm-mia canaries make | plant | audit`: the commands of :mod:`llm_mia.data.canaries`."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.core.errors import LlmMiaError

canaries_app = typer.Typer(no_args_is_help=True,
                           help="Designed canaries: make them, plant them in your training file, audit one run.")


@canaries_app.command("make")
def make(
    kind: str = typer.Option(..., "--kind", help="random | new-token | rare-bigram | synthetic"),
    out: Path = typer.Option(..., "--out", help="Output canaries JSONL (id, text, kind)."),
    n: int = typer.Option(1000, "--n", help="Number of canaries."),
    tokenizer: str | None = typer.Option(None, "--tokenizer", help="Tokenizer folder (new-token, rare-bigram)."),
    model: str | None = typer.Option(None, "--model", help="Model folder: its tokenizer; synthetic samples from it."),
    train: Path | None = typer.Option(None, "--train", help="Your training file (.txt/.jsonl): tokens, bigrams, prompts."),
    seed: int = typer.Option(0, "--seed"),
    length: int = typer.Option(8, "--length", min=2, help="Tokens per new-token / rare-bigram canary."),
    temperature: float = typer.Option(1.0, "--temperature", help="Synthetic sampling temperature (>= 0.8)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Tokens per synthetic canary."),
    device: str | None = typer.Option(None, "--device"),
):
    """Draw distinct canaries of one kind."""
    from llm_mia.core import io
    from llm_mia.data.canaries import KINDS, make_canaries

    if kind not in KINDS:
        raise LlmMiaError(f"unknown canary kind '{kind}' (known: {', '.join(KINDS)})")
    if Path(out).exists():
        raise LlmMiaError(f"{out} exists: canaries are made once (planting depends on the file)")
    texts = _train_texts(train) if train is not None else None
    loaded, tok = None, None
    if kind == "synthetic":
        if model is None:
            raise LlmMiaError("synthetic canaries need --model")
        if not temperature >= 0.8:
            raise LlmMiaError(f"--temperature must be >= 0.8 for synthetic canaries, got {temperature}")
    if kind != "random" and texts is None:
        raise LlmMiaError(f"{kind} canaries need --train (the training file)")
    if kind == "synthetic":
        from llm_mia.models.loading import load_model

        loaded = load_model(model, device=device)
    elif kind != "random":
        if not (tokenizer or model):
            raise LlmMiaError(f"{kind} canaries need --tokenizer or --model")
        from llm_mia.training.train import _load_tokenizer

        tok = _load_tokenizer(tokenizer or model)
    rows = make_canaries(kind, n, seed=seed, tokenizer=tok, model=loaded, train_texts=texts, length=length,
                         temperature=temperature, max_new_tokens=max_new_tokens)
    io.write_jsonl(out, rows)
    typer.echo(f"{len(rows)} {kind} canaries -> {out}")


def _train_texts(path: Path) -> list[str]:
    from llm_mia.data.canaries import _read_train, _row_text

    rows, fmt = _read_train(Path(path))
    return [_row_text(r, fmt) for r in rows]


@canaries_app.command("plant")
def plant(
    train: Path = typer.Option(..., "--train", help="Your training file: .txt (a document a line) or .jsonl (text or messages)."),
    canaries: Path = typer.Option(..., "--canaries", help="Canaries JSONL from `llm-mia canaries make`."),
    out: Path = typer.Option(..., "--out", help="Output folder: train.<ext> (train on it) and inclusion.json (keep apart)."),
    repeats: int = typer.Option(1, "--repeats", help="Copies of each included canary."),
    seed: int = typer.Option(0, "--seed", help="Seed of the inclusion draws and the positions."),
):
    """Include each canary with probability 1/2 (R copies at random positions) in a copy of your training file."""
    from llm_mia.data.canaries import plant_canaries

    rec = plant_canaries(train, canaries, out, repeats=repeats, seed=seed)
    typer.echo(f"{rec['n_included']} of {rec['n_canaries']} canaries planted {repeats}x -> {out / rec['planted_file']}; "
               f"inclusion record {out / 'inclusion.json'} (do not train on it)")


@canaries_app.command("audit")
def audit(
    model: str = typer.Option(..., "--model", help="The model trained on the planted file."),
    canaries: Path = typer.Option(..., "--canaries", help="Canaries JSONL."),
    inclusion: Path = typer.Option(..., "--inclusion", help="inclusion.json from `llm-mia canaries plant`."),
    out: Path = typer.Option(..., "--out", help="Output folder for canary-audit.json."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model (default signal reference_diff)."),
    delta: float | None = typer.Option(None, "--delta", help="Delta of the bounds (default: the model's DP delta, else 1e-5)."),
    beta: float = typer.Option(0.05, "--beta", help="1 - confidence of every bound."),
    signal: str | None = typer.Option(None, "--signal", help="Membership signal (default reference_diff, else loss)."),
    train: Path | None = typer.Option(None, "--train", help="The planted training file, checked against the record."),
    seed: int = typer.Option(0, "--seed", help="Seed of the threshold-selection split."),
    threshold_strategy: str = typer.Option("split", "--threshold-strategy",
                                           help="Threshold of the Gaussian-DP / Clopper-Pearson bounds: split "
                                                "(half choose, half evaluate) or bonferroni (every cutoff, corrected)."),
    device: str | None = typer.Option(None, "--device"),
):
    """TPR at low FPR and epsilon lower bounds (one-run, Gaussian DP, Clopper-Pearson) from one training run."""
    from llm_mia.privacy.canary_audit import audit_canaries, summary_line

    res = audit_canaries(model, canaries, inclusion, out, reference=reference, delta=delta, beta=beta, signal=signal,
                         train_path=train, seed=seed, device=device, strategy=threshold_strategy)
    from llm_mia.core.parallel import is_main

    if not is_main():  # under `accelerate launch` process 0 reports
        return
    typer.echo(summary_line(res))
    typer.echo(f"-> {out / 'canary-audit.json'}")
