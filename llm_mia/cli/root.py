"""`llm-mia` command line: each subcommand parses its arguments and calls the library.

Exit codes, the same for every subcommand: 0 success (a gate passed), 1 a release-gate limit is
exceeded, 2 any error (bad input, a crash of ours or of a dependency, a dependency's ``SystemExit``,
Ctrl-C), printed as one line ``error: ...``; 3 an inconclusive gate (the audit could not have detected
a leak). Set ``LLM_MIA_DEBUG=1`` to see the traceback of an unexpected error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from llm_mia.core.errors import LlmMiaError
from llm_mia.training.config import LoraSpec, TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audit language models for training-data leakage: extraction, canary exposure, membership scoring.")
corpus_app = typer.Typer(no_args_is_help=True, help="Build corpora with planted secrets.")
app.add_typer(corpus_app, name="corpus")
from llm_mia.cli.canaries import canaries_app  # noqa: E402

app.add_typer(canaries_app, name="canaries")
shadow_app = typer.Typer(no_args_is_help=True, help="Shadow models for LiRA, RMIA and the Shokri attack.")
app.add_typer(shadow_app, name="shadow")


@shadow_app.command("train")
def shadow_train(
    population: Path = typer.Option(..., "--population", help="Texts from the target's data distribution (.txt/.jsonl/.csv)."),
    n: int = typer.Option(8, "--n", help="Shadow models K (each text IN for half of them)."),
    out: Path = typer.Option(..., "--out", help="Shadow folder: membership.json, population.jsonl, model-00/ ..."),
    preset: str = typer.Option("tiny", "--preset", help="Training preset of every shadow model (tiny | small | mini)."),
    base: str | None = typer.Option(None, "--base", help="Fine-tune this base (the target's base) for each shadow model."),
    tokenizer_from: str | None = typer.Option(None, "--tokenizer-from", help="Train from scratch with this model "
                                                 "folder's tokenizer (the target's folder)."),
    steps: int | None = typer.Option(None, "--steps", help="Override the preset's number of steps."),
    seed: int = typer.Option(0, "--seed", help="Seed of the IN/OUT draw; model k trains with seed + k."),
):
    """Train K shadow models on balanced random halves of a population; a rerun resumes after a kill."""
    from llm_mia.membership.shadow import train_shadows

    sh = train_shadows(population, out, n_models=n, preset=preset, base=base, tokenizer_from=tokenizer_from,
                       max_steps=steps, seed=seed, echo=lambda s: typer.echo(s, err=True))
    typer.echo(f"{sh.n_models} shadow models on {len(sh.texts)} population texts -> {out}")


@app.callback()
def _global_options(
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads of torch (default: "
                                          "OMP_NUM_THREADS when set, else 1, the fastest on a busy machine; "
                                          "see llm_mia/core/threads.py)."),
):
    from llm_mia.core.threads import apply_threads

    apply_threads(threads)


def _check_model_args(value: str | None) -> str | None:
    """Parse --model-args as soon as it is read, so a bad key fails before any other input."""
    if value is not None:
        from llm_mia.models.hub import parse_model_args

        parse_model_args(value)
    return value


def _model_args_option():
    return typer.Option(None, "--model-args", callback=_check_model_args,
                        help="lm-evaluation-harness model arguments: pretrained=BASE,peft=ADAPTER,revision=...,"
                             "dtype=...,trust_remote_code=true,allow_pickle=true (applied to --model); for openai:URL "
                             "name=,api=completions|chat|text,tokenizer=,top_logprobs=,batch=,concurrency=,max_retries=,timeout=.")


def _check_engine(value: str) -> str:
    """--engine, checked as soon as it is read (vLLM installed included), before any other work."""
    from llm_mia.models.loading import ENGINES

    if value not in ENGINES:
        raise LlmMiaError(f"--engine must be {' or '.join(ENGINES)}, got '{value}'")
    if value == "vllm":
        from llm_mia.models.vllm_engine import require_vllm

        require_vllm()
    return value


def _engine_option():
    return typer.Option("hf", "--engine", callback=_check_engine,
                        help="hf (transformers, the reference) or vllm: vLLM runs the model once its per-token "
                             "log-probs match the HF engine's on 16 texts (the cross-check); needs llm_mia[vllm].")


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LlmMiaError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not vals or any(v < 1 for v in vals):
        raise LlmMiaError(f"{what} must be positive integers, got '{text}'")
    return vals


@corpus_app.command("build")
def corpus_build(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl, heldout.jsonl, secrets.json."),
    source: str = typer.Option("python-docs", "--source", help="python-docs (embedded), a .txt/.jsonl file or folder, or hf:NAME[:CONFIG]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the secrets and their placement."),
    repeats: str = typer.Option("1,2,4,8,16,32", "--repeats", help="Insertion counts of the planted secrets."),
    heldout_fraction: float = typer.Option(0.2, "--heldout-fraction", help="Share of documents held out as non-members."),
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

    s = build_corpus(source, out, seed=seed, repeats=tuple(_parse_ints(repeats, "--repeats")),
                     heldout_fraction=heldout_fraction, max_chars=max_chars, templates=templates,
                     unit=unit, min_chars=min_chars)
    for line in s.lines():
        typer.echo(line)
    typer.echo(f"corpus: {s.n_train} member and {s.n_heldout} held-out documents, {s.n_secrets} secrets -> {out}")


_TC = TrainConfig  # `llm-mia train` reads every default from TrainConfig / LoraSpec (llm_mia.training.config)


@app.command()
def train(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus folder from `llm-mia corpus build`."),
    out: Path = typer.Option(..., "--out", help="Output model folder (safetensors, tokenizer, recipe.json)."),
    base: str | None = typer.Option(_TC.base, "--base", help="Fine-tune this HF model id or folder instead of training from scratch."),
    preset: str = typer.Option(_TC.preset, "--preset", help="tiny | small | mini"),
    reference: bool = typer.Option(_TC.reference, "--reference", help="Train a reference model on the held-out split (no secrets)."),
    tokenizer_from: str | None = typer.Option(_TC.tokenizer_from, "--tokenizer-from", help="Reuse this model folder's tokenizer."),
    seed: int = typer.Option(_TC.seed, "--seed"),
    max_steps: int | None = typer.Option(_TC.max_steps, "--max-steps", help="Override the preset's number of steps."),
    defense: str = typer.Option(_TC.defense, "--defense", help="none | dp (DP-SGD) | dedup (training-data dedup) | "
                                "selena (Split-AI + self-distillation) | adv-reg (adversarial regularisation)."),
    epsilon: float | None = typer.Option(_TC.epsilon, "--epsilon", help="DP target epsilon (sets the noise multiplier)."),
    delta: float = typer.Option(_TC.delta, "--delta", help="DP delta."),
    noise_multiplier: float | None = typer.Option(_TC.noise_multiplier, "--noise-multiplier", help="DP sigma, instead of --epsilon."),
    max_grad_norm: float = typer.Option(_TC.max_grad_norm, "--max-grad-norm", help="DP per-record clipping norm."),
    micro_batch: int | None = typer.Option(_TC.micro_batch, "--micro-batch", help="DP records per forward pass."),
    weight_decay: float | None = typer.Option(_TC.weight_decay, "--weight-decay", help="Override the preset's AdamW weight decay."),
    dropout: float | None = typer.Option(_TC.dropout, "--dropout", help="Override the preset's dropout (from scratch only)."),
    early_stopping: int | None = typer.Option(_TC.early_stopping, "--early-stopping",
                                                 help="Patience (held-out evaluations without a new best)."),
    dedup_min_chars: int = typer.Option(_TC.dedup_min_chars, "--dedup-min-chars", help="--defense dedup: repeated-span length."),
    selena_k: int = typer.Option(_TC.selena_k, "--selena-k", help="--defense selena: Split-AI sub-models K."),
    selena_l: int = typer.Option(_TC.selena_l, "--selena-l", help="--defense selena: sub-models each document is left out of (L < K)."),
    selena_sub_steps: int | None = typer.Option(_TC.selena_sub_steps, "--selena-sub-steps",
                                                   help="--defense selena: steps of each sub-model (default: the run's steps)."),
    adv_lambda: float = typer.Option(_TC.adv_lambda, "--adv-lambda", help="--defense adv-reg: weight of the adversary's gain."),
    adv_k: int = typer.Option(_TC.adv_k, "--adv-k", help="--defense adv-reg: adversary steps per model step."),
    reference_set: str | None = typer.Option(_TC.reference_set, "--reference-set",
                                                help="--defense adv-reg: JSONL of non-member texts for the adversary "
                                                     "(default: a seeded half of heldout.jsonl)."),
    lora: bool = typer.Option(False, "--lora", help="With --base: fine-tune LoRA matrices (peft) and save the adapter only."),
    lora_r: int = typer.Option(LoraSpec.r, "--lora-r", help="LoRA rank."),
    lora_alpha: float = typer.Option(LoraSpec.alpha, "--lora-alpha", help="LoRA scaling alpha (the update is scaled by alpha / r)."),
    lora_dropout: float = typer.Option(LoraSpec.dropout, "--lora-dropout", help="Dropout on the LoRA input."),
    lora_targets: str | None = typer.Option(None, "--lora-targets", help="Comma-separated module names "
                                               "(default: c_attn,c_proj,c_fc for GPT-2, peft's default otherwise)."),
):
    """Train (or fine-tune) a GPT-2 on a corpus, optionally with a defence."""
    from llm_mia.core.io import check_output_dir
    from llm_mia.training.train import train_model

    check_output_dir(out)
    if not lora and (lora_targets is not None or (lora_r, lora_alpha, lora_dropout) != (LoraSpec.r, LoraSpec.alpha, LoraSpec.dropout)):
        raise LlmMiaError("--lora-r/--lora-alpha/--lora-dropout/--lora-targets go with --lora")
    spec = LoraSpec(r=lora_r, alpha=lora_alpha, dropout=lora_dropout,
                    target_modules=tuple(x.strip() for x in lora_targets.split(",") if x.strip()) if lora_targets else None) \
        if lora else None
    cfg = TrainConfig(base=base, preset=preset, reference=reference, tokenizer_from=tokenizer_from, seed=seed,
                      max_steps=max_steps, defense=defense, epsilon=epsilon, delta=delta, noise_multiplier=noise_multiplier,
                      max_grad_norm=max_grad_norm, micro_batch=micro_batch, weight_decay=weight_decay, dropout=dropout,
                      early_stopping=early_stopping, dedup_min_chars=dedup_min_chars, lora=spec, selena_k=selena_k,
                      selena_l=selena_l, selena_sub_steps=selena_sub_steps, adv_lambda=adv_lambda, adv_k=adv_k,
                      reference_set=reference_set)
    s = train_model(corpus, out, config=cfg)
    typer.echo(f"trained {s.steps} steps in {s.seconds:.0f} s: train loss {s.train_loss:.3f}, "
               f"held-out loss {s.heldout_loss:.3f} -> {out}")


@app.command()
def extract(
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder or HF id."),
    model_args: str | None = _model_args_option(),
    out: Path = typer.Option(..., "--out", help="Output folder (samples.jsonl, top.jsonl, extract.json; private/: shards and clear-text rows)."),
    num_samples: int = typer.Option(1000, "--num-samples", min=1, help="Samples per strategy."),
    strategy: str = typer.Option("top-k", "--strategy",
                                 help="top-k, temperature-decay, internet, or several, comma-separated."),
    prompts: str | None = typer.Option(None, "--prompts",
                                          help="Prompt corpus of the internet strategy: .txt/.jsonl/folder/hf:NAME "
                                               "(default: prompts/internet.txt)."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model for the reference ranking."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus folder: verify samples against its train.jsonl and secrets.json."),
    seed: int = typer.Option(0, "--seed"),
    length: int | None = typer.Option(None, "--length", help="New tokens per sample (default: min(256, what fits the context))."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Samples generated per batch."),
    top_n: int = typer.Option(100, "--top-n", min=1, help="Samples kept per (strategy, ranking) in top.jsonl."),
    memorized_min_tokens: int = typer.Option(50, "--memorized-min-tokens", min=1,
                                             help="A verbatim training match this long (or the whole sample) = memorized."),
    resume: bool = typer.Option(False, "--resume", help="Continue the samples already in --out (after a kill)."),
    show_secrets: bool = typer.Option(False, "--show-secrets",
                                      help="samples.jsonl / top.jsonl in clear text (default: redacted; clear copies in --out/private/)."),
    device: str | None = typer.Option(None, "--device"),
    pii_regions: str | None = typer.Option(None, "--pii-regions",
                                              help="Phone regions of the PII detection, ISO 3166 codes, comma-separated, "
                                                   "first = preferred (default US,GB,DE,FR,IN,BR, after the corpus's locales)."),
    engine: str = _engine_option(),
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
                        memorized_min_tokens=memorized_min_tokens, resume=resume, show_secrets=show_secrets,
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
    _echo_engine(tgt)
    s = run(tgt, out, reference=ref, train_texts=train_texts, secrets=secrets, cfg=cfg)
    if s is not None:  # process 0
        typer.echo(f"{s['num_samples']} samples ({s['unique_samples']} unique), {s['memorized_total']} memorized -> {out}")


@app.command()
def score(
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder or HF id."),
    model_args: str | None = _model_args_option(),
    input: Path = typer.Option(..., "--input", help="Texts: .txt (one a line), .jsonl or .csv."),
    output: Path = typer.Option(..., "--output", help="Output JSONL, one record per input, in input order."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model (enables the reference signals)."),
    text_field: str = typer.Option("text", "--text-field"),
    label_field: str = typer.Option("label", "--label-field", help="0/1 labels (member = 1), used for --metrics."),
    signals: str | None = typer.Option(None, "--signals", help="Comma-separated signal names (default: all whose inputs are given)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1,
                                             help="Texts per forward pass (default: a per-device token budget)."),
    prepend_bos: bool = typer.Option(False, "--prepend-bos", help="Condition on the BOS/EOS id so the first token is scored."),
    recall_prefix: Path | None = typer.Option(None, "--recall-prefix", help="File of non-member text to prefix (ReCaLL)."),
    dc_pdd_corpus: Path | None = typer.Option(None, "--dc-pdd-corpus", help="Texts whose token frequencies calibrate DC-PDD."),
    metrics: Path | None = typer.Option(None, "--metrics", help="Write AUC, bootstrap CI and TPR at FPR per signal (needs labels)."),
    roc: Path | None = typer.Option(None, "--roc", help="Draw log-log ROC curves to this PNG (needs labels)."),
    calibrate_on: Path | None = typer.Option(None, "--calibrate-on", help="Known non-members: per-signal thresholds and decisions."),
    target_fpr: float = typer.Option(0.01, "--target-fpr", help="FPR of the calibrated thresholds."),
    device: str | None = typer.Option(None, "--device"),
    shadow: Path | None = typer.Option(None, "--shadow", help="Shadow folder (`llm-mia shadow train`): adds LiRA, "
                                          "RMIA with K references and the Shokri attack."),
    engine: str = _engine_option(),
):
    """Score texts for membership with every signal; optional ROC metrics and calibrated decisions."""
    from llm_mia.membership.scoring import score_file

    res = score_file(model, input, output, reference=reference, text_field=text_field, label_field=label_field,
                     signals=[x.strip() for x in signals.split(",") if x.strip()] if signals else None,
                     batch_size=batch_size, prepend_bos=prepend_bos, recall_prefix=recall_prefix,
                     dc_pdd_corpus=dc_pdd_corpus, metrics_path=metrics, roc_path=roc, calibrate_on=calibrate_on,
                     target_fpr=target_fpr, device=device, model_args=model_args, shadow_dir=shadow,
                     engine=engine)
    _echo_engine(res.get("engine"))
    for w in res.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"scored {res['n']} texts ({res['n_flagged']} flagged) -> {output}"
               + (f"; metrics -> {metrics}" if metrics else ""))
    for sig, t in res.get("thresholds", {}).items():
        typer.echo(f"threshold at FPR {target_fpr:g} for {sig}: {t:.6g} (member iff score > threshold)")


@app.command()
def exposure(
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder or HF id."),
    model_args: str | None = _model_args_option(),
    secrets: Path = typer.Option(..., "--secrets", help="secrets.json (from `llm-mia corpus build` or written by hand)."),
    out: Path = typer.Option(..., "--out", help="Output folder: exposure.json, exposure.csv, exposure.png."),
    references: int = typer.Option(10_000, "--references", min=1, help="Random candidates per secret for the rank estimator."),
    exact_limit: int = typer.Option(1_000_000, "--exact-limit", min=0,
                                    help="Enumerate spaces of at most this many members for the exact exposure."),
    beams: int = typer.Option(5, "--beams", min=1, help="Beams for beam-search extraction."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Rows per forward pass (64 was fastest on a 2-core CPU)."),
    device: str | None = typer.Option(None, "--device"),
    engine: str = _engine_option(),
):
    """Canary exposure (Carlini et al. 2019) of every secret: rank, exact, extrapolated; greedy, beam, sampling extraction."""
    from llm_mia.core.io import check_output_dir
    from llm_mia.exposure.secrets import run_exposure

    check_output_dir(out)

    res = run_exposure(model, secrets, out, n_references=references, exact_limit=exact_limit, seed=seed, beams=beams,
                       batch_size=batch_size, device=device, model_args=model_args, engine=engine)
    c = res.controls
    typer.echo(f"{len(res.rows)} secrets, {sum(r['greedy_extracted'] for r in res.rows)} greedily extracted -> "
               f"{out / 'exposure.json'}")
    if c.get("n"):
        typer.echo(f"controls: mean rank exposure {c['mean_exposure_rank']:.2f} bits, expected {c['expected_bits']:.2f} "
                   f"(1/ln 2 = 1.44); off by {c['difference_bits']:+.2f} bits = {c['z']:+.1f} standard errors")


@app.command()
def audit(
    ctx: typer.Context,
    out: Path | None = typer.Option(None, "--out", help="Report folder (default ./audit-demo with --demo)."),
    corpus: Path | None = typer.Option(None, "--corpus", help="Corpus folder: shorthand for --members DIR/train.jsonl "
                                          "--nonmembers DIR/heldout.jsonl --secrets DIR/secrets.json."),
    model: str | None = typer.Option(None, "--model", help="Model folder, PEFT adapter folder, HF id, or "
                                        "openai:URL (an OpenAI-compatible endpoint; key from LLM_MIA_API_KEY) to audit."),
    model_args: str | None = _model_args_option(),
    members: str | None = typer.Option(None, "--members", help="Training examples: .txt/.jsonl/.csv/.parquet or "
                                          "hf:NAME[:CONFIG]:SPLIT (plain text or chat 'messages')."),
    nonmembers: str | None = typer.Option(None, "--nonmembers", help="Held-out examples (same formats), for membership."),
    secrets: Path | None = typer.Option(None, "--secrets", help="Planted canaries (secrets.json); without it exposure "
                                           "is not measured."),
    text_column: str = typer.Option("text", "--text-column", help="Column / field holding the text."),
    score_spans: str = typer.Option("assistant", "--score-spans", help="Chat rows: score the assistant turns only "
                                    "(assistant) or every token (all)."),
    reference: str | None = typer.Option(None, "--reference", help="Reference model folder, 'base' (a PEFT adapter's "
                                            "base; the default for an adapter) or 'none'."),
    discoverable: int = typer.Option(200, "--discoverable", min=0, help="Training examples sampled for discoverable "
                                     "memorization (0 = off)."),
    discoverable_prefix: int = typer.Option(50, "--discoverable-prefix", min=1,
                                            help="Prompt tokens of discoverable memorization (the suffix is 50 tokens)."),
    demo: bool = typer.Option(False, "--demo", help="The fine-tuning case on the embedded python-docs text: pre-train a base, fine-tune it with LoRA "
                                                 "on the private part with planted secrets, audit the adapter with the base as reference."),
    num_samples: int = typer.Option(500, "--num-samples", min=1, help="Extraction samples per strategy."),
    strategy: str = typer.Option("top-k,temperature-decay,internet", "--strategy",
                                 help="Extraction strategies, comma-separated."),
    prompts: str | None = typer.Option(None, "--prompts",
                                          help="Prompt corpus of the internet strategy (default: the corpus's heldout.jsonl)."),
    candidates: int = typer.Option(2000, "--candidates", min=1, help="Random candidates per secret for rank exposure."),
    exact_limit: int = typer.Option(100_000, "--exact-limit", min=0,
                                    help="Enumerate secret spaces of at most this many members for the exact exposure."),
    seed: int = typer.Option(0, "--seed"),
    show_secrets: bool = typer.Option(False, "--show-secrets", help="Print secrets and PII in the report unredacted."),
    preset: str = typer.Option("small", "--preset", help="Model preset for --demo (tiny | small)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Training steps for --demo (default: the preset's)."),
    policy: Path | None = typer.Option(None, "--policy", help="Release gate: a policy TOML (see examples/policy.toml). "
                                          "Exit 0 = pass, 1 = a limit exceeded, 2 = error, 3 = inconclusive; the verdict is printed."),
    membership_docs: int = typer.Option(200, "--membership-docs", min=2, help="Members (and as many held-out documents) scored."),
    length: int | None = typer.Option(None, "--length", help="New tokens per extraction sample (default: min(256, context - 1))."),
    compare: list[str] | None = typer.Option(None, "--compare",
                                                help="Compare models: NAME=FOLDER or FOLDER, repeatable or comma-separated "
                                                     "(needs --corpus, --out); NAME=FOLDER@memguard:EPS serves the model "
                                                     "through MemGuard; writes compare.json / compare.md."),
    compare_defenses: bool = typer.Option(False, "--compare-defenses",
                                          help="With --demo: train the baseline and defended models and compare them."),
    quick: bool = typer.Option(False, "--quick", help="With --compare-defenses: the tiny, fast version (tests)."),
    api_modes: str = typer.Option("full,topk:5,rounded:2,label-only", "--api-modes",
                                  help="With --compare: API output limits to run the membership signals through "
                                       "(full, topk:K, rounded:D, memguard:EPS, label-only)."),
    sarif: Path | None = typer.Option(None, "--sarif", help="With --policy: write the verdict as SARIF 2.1.0 "
                                         "(GitHub code scanning) to this file."),
    junit: Path | None = typer.Option(None, "--junit", help="With --policy: write JUnit XML, one test case per limit."),
    pii_regions: str | None = typer.Option(None, "--pii-regions",
                                              help="Phone regions of the PII detection, ISO 3166 codes, comma-separated, "
                                                   "first = preferred (default US,GB,DE,FR,IN,BR, after the corpus's locales)."),
    canaries: Path | None = typer.Option(None, "--canaries", help="Canaries JSONL planted with `llm-mia canaries plant`."),
    inclusion: Path | None = typer.Option(None, "--inclusion", help="With --canaries: its inclusion.json."),
    shadow: Path | None = typer.Option(None, "--shadow", help="Shadow folder (`llm-mia shadow train`): adds LiRA, "
                                          "RMIA with K references and the Shokri attack to membership."),
    max_queries: int | None = typer.Option(None, "--max-queries", min=1,
                                              help="With --model openai:URL: stop with an error before the API call "
                                                   "that would pass this many (samples written so far are resumed)."),
    engine: str = _engine_option(),
):
    """Run extraction, secret exposure, membership scoring and PII detection; write report.html,
    report.md, report.json and modelcard.md; with --policy, gate the release on the result.

    Exit 0 = pass (or no policy), 1 = a limit exceeded, 2 = error, 3 = inconclusive (the audit could
    not have detected a leak; 0 when the policy sets allow_inconclusive)."""
    from llm_mia.audit.demo import run_demo
    from llm_mia.audit.pipeline import AuditConfig, run_audit
    from llm_mia.data.pii import parse_regions

    mode = "compare-defenses" if compare_defenses else "compare" if compare else "demo" if demo else "audit"
    if compare_defenses and not demo:
        raise LlmMiaError("--compare-defenses goes with --demo")
    _refuse_unused(ctx, mode)
    if (sarif or junit) and policy is None:
        raise LlmMiaError("--sarif and --junit report a release gate's verdict: add --policy")
    regions = parse_regions(pii_regions) if pii_regions else None  # checked before any model work
    pol = None
    if policy is not None:
        from llm_mia.audit.policy import load_policy

        pol = load_policy(policy)  # a bad policy fails before any work is done
    _check_ci(sarif, junit, inputs=(policy,))
    if out is not None:
        from llm_mia.core.io import check_output_dir

        check_output_dir(out)

    from llm_mia.data.chat import SCORE_SPANS

    if score_spans not in SCORE_SPANS:
        raise LlmMiaError(f"--score-spans must be one of {', '.join(SCORE_SPANS)}, got '{score_spans}'")
    cfg = AuditConfig(num_samples=num_samples, n_candidates=candidates, exact_limit=exact_limit, seed=seed,
                      show_secrets=show_secrets, strategies=tuple(x.strip() for x in strategy.split(",") if x.strip()),
                      prompt_source=prompts, membership_docs=membership_docs, max_new_tokens=length,
                      discoverable_samples=discoverable, discoverable_prefix=discoverable_prefix, score_spans=score_spans,
                      pii_regions=regions, max_queries=max_queries)
    if compare or compare_defenses:
        _audit_compare(out=out, corpus=corpus, reference=reference, compare=compare, compare_defenses=compare_defenses,
                       quick=quick, api_modes=api_modes, seed=seed, cfg=cfg, policy=pol,
                       canaries=(canaries, inclusion) if canaries or inclusion else None, shadow=shadow)
        return
    if demo:
        out = out or Path("audit-demo")
    elif (model is None and model_args is None) or out is None or (corpus is None and (members is None or nonmembers is None)):
        raise LlmMiaError("audit needs --model, --out and --members/--nonmembers files or a --corpus folder (or --demo)")
    import warnings

    from llm_mia.core.errors import LlmMiaWarning

    try:
        with warnings.catch_warnings():  # printed below as one line each
            warnings.simplefilter("ignore", LlmMiaWarning)
            if demo:
                report = run_demo(out, preset=preset, cfg=cfg, max_steps=max_steps, policy=pol)
            else:
                if (canaries is None) != (inclusion is None):
                    raise LlmMiaError("--canaries and --inclusion go together")
                report = run_audit(corpus, model, out, members=members, nonmembers=nonmembers, secrets_path=secrets,
                                   text_column=text_column, reference_path=reference, cfg=cfg, policy=pol,
                                   model_args=model_args, canaries=(canaries, inclusion) if canaries else None,
                                   shadow_dir=shadow, engine=engine)
    except LlmMiaError as e:  # a limit the report cannot answer: the report exists, so do the CI files
        if getattr(e, "report", None) is not None:
            _write_ci(e.report, e.report["verdict"], out, sarif=sarif, junit=junit)
        raise
    for w in _audit_warnings(report):
        typer.echo(f"warning: {w}", err=True)
    _write_ci(report, report["verdict"], out, sarif=sarif, junit=junit)
    typer.echo(f"report: {out / 'report.html'} (and {out / 'report.md'}, {out / 'report.json'}, {out / 'modelcard.md'})")
    _verdict_exit(report["verdict"])


def _echo_engine(model_or_info) -> None:
    """One stderr line with the vLLM cross-check's figures (nothing for the HF engine)."""
    info = getattr(model_or_info, "engine_info", model_or_info) or {}
    c = info.get("crosscheck")
    if c:
        typer.echo(f"engine vllm {info.get('vllm_version')}: cross-check passed on {c['n_texts']} texts "
                   f"({c['n_tokens']} tokens, {c['dtype']}): max |log p difference| {c['max_abs_diff']:.2g} nats "
                   f"(tolerance {c['tolerance']:g})", err=True)


def _audit_warnings(report: dict) -> list[str]:
    """One line each: the reference is the target; non-members that duplicate members."""
    out = []
    if report["provenance"].get("reference_excluded"):
        out.append(f"{report['provenance']['reference_excluded']}; the reference signals are left out")
    ov = (report.get("membership") or {}).get("overlap") or {}
    if ov.get("n_overlapping"):
        out.append(f"{ov['n_overlapping']} of {ov['n_nonmembers']} non-members duplicate a member "
                   f"({ov['exact']} exact, {ov['near']} near); left out of membership")
    return out


#: The audit options each mode uses (every other one given on the command line is refused).
_COMMON = {"out", "seed"}
_AUDIT_KNOBS = {"num_samples", "strategy", "prompts", "candidates", "exact_limit", "show_secrets", "policy",
                "membership_docs", "length", "pii_regions", "discoverable", "discoverable_prefix"}
_MODE_OPTIONS = {
    "audit": _COMMON | _AUDIT_KNOBS | {"corpus", "model", "model_args", "reference", "sarif", "junit", "members",
                                       "nonmembers", "secrets", "text_column", "score_spans", "canaries",
                                       "inclusion", "shadow", "max_queries", "engine"},
    "demo": _COMMON | _AUDIT_KNOBS | {"demo", "preset", "max_steps", "sarif", "junit"},
    "compare": _COMMON | _AUDIT_KNOBS | {"corpus", "reference", "compare", "api_modes", "canaries", "inclusion",
                                         "shadow"},
    "compare-defenses": _COMMON | {"demo", "compare_defenses", "quick"},
}
_MODE_NAMES = {"audit": "`audit --model` (with --members/--nonmembers or --corpus)", "demo": "`audit --demo`", "compare": "`audit --compare`",
               "compare-defenses": "`audit --demo --compare-defenses`"}
#: Where an option belongs, for the message that refuses it.
_BELONGS = {"preset": "--demo", "max_steps": "--demo", "api_modes": "--compare", "quick": "--demo --compare-defenses",
            "model": "an audit of one model (--compare lists its models)",
            "max_queries": "an audit of an openai:URL endpoint (--model)", "model_args": "an audit of one model", "demo": "--demo alone or --compare-defenses",
            "corpus": "an audit of existing models", "reference": "an audit of existing models",
            "sarif": "the gate of one model: for --compare run `llm-mia gate OUT/NAME/report.json --policy ... --sarif ...`",
            "junit": "the gate of one model: for --compare run `llm-mia gate OUT/NAME/report.json --policy ... --junit ...`",
            "compare": "--corpus --out", "compare_defenses": "--demo",
            "canaries": "an audit of existing models (--compare-defenses plants its own)",
            "inclusion": "an audit of existing models (--compare-defenses plants its own)",
            "shadow": "an audit of existing models (--model or --compare)",
            "engine": "an audit of one model (`audit --model`)"}


def _refuse_unused(ctx: typer.Context, mode: str) -> None:
    """Every option given on the command line is honoured by ``mode`` or refused here, before any work."""
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name) if p.name in ctx.params else None
        if src is None or src.name in ("DEFAULT", "DEFAULT_MAP"):  # (typer may vendor click: compare names)
            continue
        if p.name not in _MODE_OPTIONS[mode]:
            where = _BELONGS.get(p.name)
            raise LlmMiaError(f"{p.opts[0]} is not used by {_MODE_NAMES[mode]}"
                              + (f" (it goes with {where})" if where else "") + "; drop it")


def _check_ci(sarif: Path | None, junit: Path | None, inputs=()) -> None:
    """--sarif / --junit must be writable files (checked before any work)."""
    from llm_mia.core.io import check_output_file

    for flag, path in (("--sarif", sarif), ("--junit", junit)):
        if path is not None:
            check_output_file(path, inputs=inputs, what=flag)


def _write_ci(report: dict, verdict: dict, report_dir: Path, *, sarif: Path | None, junit: Path | None) -> None:
    """SARIF 2.1.0 and JUnit XML of a gated verdict (see llm_mia.report.sarif / junit)."""
    if sarif is not None:
        from llm_mia.report.sarif import write_sarif

        write_sarif(sarif, report, verdict, report_dir=report_dir)
    if junit is not None:
        from llm_mia.report.junit import write_junit

        write_junit(junit, report, verdict)


def _verdict_exit(verdict: dict) -> None:
    """Print the verdict line on stdout; exit with the verdict's code (0 pass or no policy, 1 fail,
    2 error, 3 inconclusive)."""
    typer.echo(verdict["line"])
    code = verdict.get("exit_code") or 0
    if code:
        raise typer.Exit(code=code)


@app.command()
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
    _check_ci(sarif, junit, inputs=(report, policy))
    try:
        v = evaluate(rep, pol)
    except UnanswerableLimit as e:
        _write_ci(rep, {"policy": pol.source, **e.verdict.to_dict()}, report.parent, sarif=sarif, junit=junit)
        raise
    _write_ci(rep, {"policy": pol.source, **v.to_dict()}, report.parent, sarif=sarif, junit=junit)
    _verdict_exit(v.to_dict())


def _parse_compare(items: list[str]) -> list[tuple[str, str, str | None]]:
    """``NAME=FOLDER[@memguard:EPS]`` or ``FOLDER`` items (each may be comma-separated) -> (name, folder,
    serving mode or None) triples (``@memguard:EPS``: the model served through MemGuard)."""
    pairs = []
    for item in items:
        for part in (x.strip() for x in item.split(",")):
            if not part:
                continue
            serving = None
            head, at, tail = part.rpartition("@")
            if at and tail.strip().lower().startswith("memguard"):
                part, serving = head, tail.strip()
            name, sep, path = part.partition("=")
            if not sep:
                name, path = Path(part.rstrip("/")).name, part
            pairs.append((name.strip(), path.strip(), serving))
    return pairs


def _audit_compare(*, out, corpus, reference, compare, compare_defenses, quick, api_modes, seed, cfg, policy,
                   canaries=None, shadow=None) -> None:
    from llm_mia.audit.compare import compare_models
    from llm_mia.audit.defenses import run_compare_defenses
    from llm_mia.models.output_modes import parse_mode

    modes = [x.strip() for x in api_modes.split(",") if x.strip()]
    for m in modes:
        parse_mode(m)  # unknown modes fail before any work
    if compare_defenses:
        if compare:
            raise LlmMiaError("--compare-defenses trains its own models: drop --compare")
        if canaries:
            raise LlmMiaError("--compare-defenses plants its own canaries: drop --canaries / --inclusion")
        out = out or Path("compare-demo")
        res = run_compare_defenses(out, quick=quick, seed=seed)
    else:
        if corpus is None or out is None:
            raise LlmMiaError("--compare needs --corpus and --out")
        if canaries and None in canaries:
            raise LlmMiaError("--canaries and --inclusion go together")
        res = compare_models(corpus, _parse_compare(compare), out, reference_path=reference, cfg=cfg, api_modes=modes,
                             policy=policy, canaries=canaries, shadow_dir=shadow)
    typer.echo(f"compared {len(res['rows'])} models: {out / 'compare.md'} (and {out / 'compare.json'})")
    if policy is not None:  # each model gated: the worst verdict decides (a failure before an inconclusive)
        for r in res["rows"]:
            typer.echo(f"{r['name']}: {r['verdict']['line']}")
        codes = [r["verdict"]["exit_code"] for r in res["rows"]]
        code = 1 if 1 in codes else max(codes)
        if code:
            raise typer.Exit(code=code)


def main() -> None:
    """Console entry point: one-line errors, exit 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # our own progress bars and messages only
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        rc = app(standalone_mode=False)  # click returns (not raises) the code of typer.Exit here
    except LlmMiaError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted")
    except SystemExit as e:  # our own exits are typer.Exit (returned above): this is a dependency's sys.exit
        _fail(f"a dependency ended the program with SystemExit({e.code!r}){_raised_in(e)} before the command "
              "finished; nothing was gated (set LLM_MIA_DEBUG=1 for the traceback)", e)
    except Exception as e:  # click usage errors and anything unexpected
        import click

        if isinstance(e, click.exceptions.Exit) or type(e).__name__ == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        if isinstance(e, click.ClickException) or hasattr(e, "format_message"):  # typer may vendor click
            msg = " ".join(e.format_message().split())
            if msg:  # (no arguments at all: the help was printed, nothing more to say)
                typer.echo(f"error: {msg} (see --help)", err=True)
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort) or type(e).__name__ == "Abort":
            _fail("interrupted")
        msg = " ".join(str(e).split()) or type(e).__name__
        _fail(f"{type(e).__name__}: {msg}{_raised_in(e)} (set LLM_MIA_DEBUG=1 for the traceback)", e)
    if rc == 130:  # typer turns Ctrl-C into Exit(130); no command of ours exits 130
        _fail("interrupted")
    if isinstance(rc, int) and not isinstance(rc, bool) and rc != 0:
        sys.exit(rc)


def _raised_in(e: BaseException) -> str:
    """' in <file>:<line>' of the frame that raised ``e`` (where a dependency's exit came from)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" in {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"


def _fail(msg: str, exc: BaseException | None = None) -> None:
    """Exit 2 with one line ``error: msg`` (the traceback too with LLM_MIA_DEBUG=1): every error,
    ours or a dependency's, is 2, never 1 (the gate's 'a limit is exceeded')."""
    if exc is not None and os.environ.get("LLM_MIA_DEBUG"):
        import traceback

        traceback.print_exception(exc)
    typer.echo(f"error: {msg}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
