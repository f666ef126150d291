"""`llm-mia audit | compare | defenses | demo`: the audit pipeline (:mod:`llm_mia.audit`), one command per
mode, each with only its own options.

``audit`` keeps the old mode switches (``--demo``, ``--compare``, ``--compare-defenses`` and the options only
those modes had) as hidden options, for exactly one thing: saying which command replaced them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from llm_mia.cli import options as o
from llm_mia.cli.options import MEMBERSHIP, MODEL, OUTPUT
from llm_mia.core.errors import LlmMiaError


def _prepare(*, out, policy, sarif=None, junit=None, pii_regions, score_spans="assistant", strategy, num_samples,
             candidates, exact_limit, seed, show_secrets, prompts, membership_docs, length, discoverable,
             discoverable_prefix, max_queries=None):
    """The checks every audit command makes before any work, in this order; returns (AuditConfig, policy)."""
    from llm_mia.audit.pipeline import AuditConfig
    from llm_mia.core.parallel import world_size
    from llm_mia.data.pii import parse_regions

    if world_size() > 1:  # extract ends on process 0 only, the positive-control twin saves a model: not split yet
        raise LlmMiaError("audit runs in one process; under `accelerate launch` run its stages (extract, score, "
                          "exposure, canaries audit, shadow train) instead")
    if (sarif or junit) and policy is None:
        raise LlmMiaError("--sarif and --junit report a release gate's verdict: add --policy")
    regions = parse_regions(pii_regions) if pii_regions else None  # checked before any model work
    pol = None
    if policy is not None:
        from llm_mia.audit.policy import load_policy

        pol = load_policy(policy)  # a bad policy fails before any work is done
    o.check_ci(sarif, junit, inputs=(policy,))
    if out is not None:
        from llm_mia.core.io import check_output_dir

        check_output_dir(out)

    from llm_mia.data.chat import SCORE_SPANS

    if score_spans not in SCORE_SPANS:
        raise LlmMiaError(f"--score-spans must be one of {', '.join(SCORE_SPANS)}, got '{score_spans}'")
    cfg = AuditConfig(num_samples=num_samples, n_candidates=candidates, exact_limit=exact_limit, seed=seed,
                      show_secrets=show_secrets, strategies=tuple(x.strip() for x in strategy.split(",") if x.strip()),
                      prompt_source=prompts, membership_docs=membership_docs, max_new_tokens=length,
                      discoverable_samples=discoverable, discoverable_prefix=discoverable_prefix,
                      score_spans=score_spans, pii_regions=regions, max_queries=max_queries)
    return cfg, pol


def _report_and_gate(run, out: Path, *, sarif: Path | None, junit: Path | None) -> None:
    """Run an audit (``run()`` returns its report), print its warnings and files, write the CI files and
    exit with the verdict's code."""
    import warnings

    from llm_mia.core.errors import LlmMiaWarning

    try:
        with warnings.catch_warnings():  # printed below as one line each
            warnings.simplefilter("ignore", LlmMiaWarning)
            report = run()
    except LlmMiaError as e:  # a limit the report cannot answer: the report exists, so do the CI files
        if getattr(e, "report", None) is not None:
            o.write_ci(e.report, e.report["verdict"], out, sarif=sarif, junit=junit)
        raise
    for w in _audit_warnings(report):
        typer.echo(f"warning: {w}", err=True)
    o.write_ci(report, report["verdict"], out, sarif=sarif, junit=junit)
    typer.echo(f"report: {out / 'report.html'} (and {out / 'report.md'}, {out / 'report.json'}, "
               f"{out / 'modelcard.md'})")
    o.verdict_exit(report["verdict"])


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


def _hidden(default, flag: str):
    return typer.Option(default, flag, hidden=True)


def _moved(*, demo: bool, compare: list[str] | None, compare_defenses: bool, quick: bool, preset: str | None,
           max_steps: int | None, api_modes: str | None) -> None:
    """An old `audit` mode switch on the command line: one error naming the command that replaced it."""
    if compare_defenses:
        raise LlmMiaError(f"`audit {'--demo ' if demo else ''}--compare-defenses` is now `llm-mia defenses`")
    if compare:
        raise LlmMiaError("`audit --compare MODELS` is now `llm-mia compare MODELS`")
    if demo:
        raise LlmMiaError("`audit --demo` is now `llm-mia demo`")
    for flag, given, command in (("--quick", quick, "defenses"), ("--preset", preset is not None, "demo"),
                                 ("--max-steps", max_steps is not None, "demo"),
                                 ("--api-modes", api_modes is not None, "compare")):
        if given:
            raise LlmMiaError(f"{flag} is an option of `llm-mia {command}`, not of `llm-mia audit`")


def audit(
    model: str | None = typer.Option(None, "--model", rich_help_panel=MODEL, help="Model folder, PEFT adapter "
                                        "folder, HF id, or openai:URL (an OpenAI-compatible endpoint; key from "
                                        "LLM_MIA_API_KEY) to audit."),
    model_args: str | None = o.model_args(MODEL),
    reference: str | None = o.audit_reference(),
    engine: str = o.engine(MODEL),
    max_queries: int | None = typer.Option(None, "--max-queries", min=1, rich_help_panel=MODEL,
                                              help="With --model openai:URL: stop with an error before the API call "
                                                   "that would pass this many (samples written so far are resumed)."),
    corpus: Path | None = o.audit_corpus(),
    members: str | None = o.members(),
    nonmembers: str | None = o.nonmembers(),
    secrets: Path | None = o.secrets(),
    text_column: str = o.text_column(),
    score_spans: str = o.score_spans(),
    num_samples: int = o.num_samples(),
    strategy: str = o.strategy(),
    prompts: str | None = o.prompts(),
    length: int | None = o.length(),
    discoverable: int = o.discoverable(),
    discoverable_prefix: int = o.discoverable_prefix(),
    near_similarity: float = o.near_similarity(),
    near_window: int = o.near_window(),
    near_samples: int = o.near_samples(),
    pii_regions: str | None = o.pii_regions(),
    candidates: int = o.candidates(),
    exact_limit: int = o.exact_limit(),
    canaries: Path | None = o.canaries(),
    inclusion: Path | None = o.inclusion(),
    membership_docs: int = o.membership_docs(),
    shadow: Path | None = o.shadow(),
    policy: Path | None = o.policy(),
    positive_control: str | None = o.positive_control(),
    no_positive_control: bool = o.no_positive_control(),
    sarif: Path | None = o.sarif(),
    junit: Path | None = o.junit(),
    out: Path | None = typer.Option(None, "--out", rich_help_panel=OUTPUT, help="Report folder."),
    show_secrets: bool = o.show_secrets(),
    seed: int = o.seed(),
    demo: bool = _hidden(False, "--demo"),
    compare: list[str] | None = _hidden(None, "--compare"),
    compare_defenses: bool = _hidden(False, "--compare-defenses"),
    quick: bool = _hidden(False, "--quick"),
    preset: str | None = _hidden(None, "--preset"),
    max_steps: int | None = _hidden(None, "--max-steps"),
    api_modes: str | None = _hidden(None, "--api-modes"),
):
    """Audit one model: extraction, secret exposure, membership scoring, PII detection; with --policy, a release gate.

    Writes report.html, report.md, report.json and modelcard.md. Exit 0 = pass (or no policy), 1 = a limit
    exceeded, 2 = error, 3 = inconclusive (the audit could not have detected a leak; 0 when the policy sets
    allow_inconclusive)."""
    _moved(demo=demo, compare=compare, compare_defenses=compare_defenses, quick=quick, preset=preset,
           max_steps=max_steps, api_modes=api_modes)
    cfg, pol = _prepare(out=out, policy=policy, sarif=sarif, junit=junit, pii_regions=pii_regions,
                        score_spans=score_spans, strategy=strategy, num_samples=num_samples, candidates=candidates,
                        exact_limit=exact_limit, seed=seed, show_secrets=show_secrets, prompts=prompts,
                        membership_docs=membership_docs, length=length, discoverable=discoverable,
                        discoverable_prefix=discoverable_prefix, max_queries=max_queries)
    no_data = corpus is None and (members is None or nonmembers is None)
    if (model is None and model_args is None) or out is None or no_data:
        raise LlmMiaError("audit needs --model, --out and --members/--nonmembers files or a --corpus folder "
                          "(or see `llm-mia demo`)")
    if (canaries is None) != (inclusion is None):
        raise LlmMiaError("--canaries and --inclusion go together")
    _check_positive_control(positive_control, no_positive_control)
    cfg.positive_control, cfg.positive_control_model = not no_positive_control, positive_control
    cfg = replace(cfg, near_similarity=near_similarity, near_window=near_window, near_samples=near_samples)
    from llm_mia.audit.pipeline import run_audit

    _report_and_gate(lambda: run_audit(corpus, model, out, members=members, nonmembers=nonmembers,
                                       secrets_path=secrets, text_column=text_column, reference_path=reference,
                                       cfg=cfg, policy=pol, model_args=model_args,
                                       canaries=(canaries, inclusion) if canaries else None, shadow_dir=shadow,
                                       engine=engine),
                     out, sarif=sarif, junit=junit)


def demo(
    preset: str = typer.Option("small", "--preset", rich_help_panel=MODEL, help="Model preset (tiny | small)."),
    max_steps: int | None = typer.Option(None, "--max-steps", rich_help_panel=MODEL,
                                            help="Training steps (default: the preset's)."),
    defended: bool = typer.Option(False, "--defended", rich_help_panel=MODEL,
                                  help="Also fine-tune the same base with the dedup defence and write both "
                                       "models' figures side by side, with held-out perplexity (compare.md)."),
    num_samples: int | None = typer.Option(None, "--num-samples", min=1, rich_help_panel=o.EXTRACTION,
                                              help="Extraction samples per strategy (default: the demo's 200)."),
    strategy: str = o.strategy(),
    prompts: str | None = o.prompts(),
    length: int | None = o.length(),
    discoverable: int | None = typer.Option(None, "--discoverable", min=0, rich_help_panel=o.EXTRACTION,
                                               help="Training examples sampled for discoverable memorization "
                                                    "(0 = off; default: the demo's 100)."),
    discoverable_prefix: int = o.discoverable_prefix(),
    pii_regions: str | None = o.pii_regions(),
    candidates: int | None = typer.Option(None, "--candidates", min=1, rich_help_panel=o.EXPOSURE,
                                             help="Random candidates per secret for rank exposure (default: the "
                                                  "demo's 1000)."),
    exact_limit: int = o.exact_limit(),
    membership_docs: int = o.membership_docs(),
    policy: Path | None = o.policy(),
    sarif: Path | None = o.sarif(),
    junit: Path | None = o.junit(),
    out: Path | None = typer.Option(None, "--out", rich_help_panel=OUTPUT,
                                       help="Report folder (default ./audit-demo)."),
    show_secrets: bool = o.show_secrets(),
    seed: int = o.seed(),
):
    """The fine-tuning case on the embedded python-docs text, audited end to end.

    Pre-trains a base (or reuses the cached one), fully fine-tunes it on the private part with planted
    secrets and audits the fine-tuned model with the base as reference (the reports of `llm-mia audit`; the same exit codes), then
    prints the verdict of `llm-mia gate audit-demo/report.json --policy examples/policy.toml` and that command."""
    from llm_mia.audit.demo import DEMO_AUDIT, run_demo
    from llm_mia.training.config import PRESETS

    if preset not in PRESETS:  # before the corpus or the base is made (break-it pass)
        raise LlmMiaError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    if max_steps is not None and max_steps < 1:
        raise LlmMiaError(f"--max-steps must be >= 1, got {max_steps}")

    # Only what the user set reaches the demo (None: the demo's size, filled by run_demo); the demo's
    # sizes here only let _prepare check the rest of the options.
    sizes = {"num_samples": num_samples, "n_candidates": candidates, "discoverable_samples": discoverable}
    given = {k: DEMO_AUDIT[k] if v is None else v for k, v in sizes.items()}
    cfg, pol = _prepare(out=out, policy=policy, sarif=sarif, junit=junit, pii_regions=pii_regions, strategy=strategy,
                        num_samples=given["num_samples"], candidates=given["n_candidates"], exact_limit=exact_limit,
                        seed=seed, show_secrets=show_secrets, prompts=prompts, membership_docs=membership_docs,
                        length=length, discoverable=given["discoverable_samples"],
                        discoverable_prefix=discoverable_prefix)
    out = out or Path("audit-demo")
    _report_and_gate(lambda: run_demo(out, preset=preset, cfg=cfg, max_steps=max_steps, policy=pol, sizes=sizes,
                                      defended=defended),
                     out, sarif=sarif, junit=junit)


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


def _echo_compare(res: dict, out: Path, policy) -> None:
    """The comparison's files; with a policy, each model's verdict and the worst one's exit code (a failure
    before an inconclusive)."""
    typer.echo(f"compared {len(res['rows'])} models: {out / 'compare.md'} (and {out / 'compare.json'})")
    if policy is not None:
        for r in res["rows"]:
            typer.echo(f"{r['name']}: {r['verdict']['line']}")
        codes = [r["verdict"]["exit_code"] for r in res["rows"]]
        code = 1 if 1 in codes else max(codes)
        if code:
            raise typer.Exit(code=code)


def compare(
    models: list[str] = typer.Argument(..., metavar="MODEL", show_default=False,
                                       help="NAME=FOLDER or FOLDER, several or comma-separated; "
                                            "NAME=FOLDER@memguard:EPS serves the model through MemGuard."),
    reference: str | None = o.audit_reference(),
    corpus: Path = o.audit_corpus(required=True),
    num_samples: int = o.num_samples(),
    strategy: str = o.strategy(),
    prompts: str | None = o.prompts(),
    length: int | None = o.length(),
    discoverable: int = o.discoverable(),
    discoverable_prefix: int = o.discoverable_prefix(),
    pii_regions: str | None = o.pii_regions(),
    candidates: int = o.candidates(),
    exact_limit: int = o.exact_limit(),
    canaries: Path | None = o.canaries(),
    inclusion: Path | None = o.inclusion(),
    membership_docs: int = o.membership_docs(),
    shadow: Path | None = o.shadow(),
    api_modes: str = typer.Option("full,topk:5,rounded:2,label-only", "--api-modes", rich_help_panel=MEMBERSHIP,
                                  help="API output limits to run the membership signals through "
                                       "(full, topk:K, rounded:D, memguard:EPS, label-only)."),
    policy: Path | None = typer.Option(None, "--policy", rich_help_panel=o.GATE,
                                          help="Gate every model on this policy TOML; the worst verdict decides the "
                                               "exit code (a failure before an inconclusive)."),
    out: Path = typer.Option(..., "--out", rich_help_panel=OUTPUT,
                             help="Output folder: compare.json, compare.md and one report folder per model."),
    show_secrets: bool = o.show_secrets(),
    seed: int = o.seed(),
):
    """Audit several models on one corpus and compare them (membership through API output limits too).

    For a model's SARIF / JUnit files, run `llm-mia gate OUT/NAME/report.json --policy ... --sarif ...`."""
    from llm_mia.audit.compare import compare_models
    from llm_mia.models.output_modes import parse_mode

    cfg, pol = _prepare(out=out, policy=policy, pii_regions=pii_regions, strategy=strategy, num_samples=num_samples,
                        candidates=candidates, exact_limit=exact_limit, seed=seed, show_secrets=show_secrets,
                        prompts=prompts, membership_docs=membership_docs, length=length, discoverable=discoverable,
                        discoverable_prefix=discoverable_prefix)
    modes = [x.strip() for x in api_modes.split(",") if x.strip()]
    for m in modes:
        parse_mode(m)  # unknown modes fail before any work
    if (canaries is None) != (inclusion is None):
        raise LlmMiaError("--canaries and --inclusion go together")
    res = compare_models(corpus, _parse_compare(models), out, reference_path=reference, cfg=cfg, api_modes=modes,
                         policy=pol, canaries=(canaries, inclusion) if canaries else None, shadow_dir=shadow)
    _echo_compare(res, out, pol)


def defenses(
    quick: bool = typer.Option(False, "--quick", help="The tiny, fast version (tests)."),
    out: Path | None = typer.Option(None, "--out", rich_help_panel=OUTPUT,
                                       help="Output folder (default ./compare-demo): compare.json, compare.md."),
    seed: int = o.seed(),
):
    """Train a baseline and defended models on the embedded python-docs text and compare their leakage."""
    from llm_mia.audit.defenses import run_compare_defenses

    if out is not None:
        from llm_mia.core.io import check_output_dir

        check_output_dir(out)
    out = out or Path("compare-demo")
    res = run_compare_defenses(out, quick=quick, seed=seed)
    _echo_compare(res, out, None)


def _check_positive_control(folder: str | None, skip: bool) -> None:
    """``--positive-control``: a local model or PEFT adapter folder whose weights and tokenizer are there
    (:func:`llm_mia.models.loading.resolve_model_spec`, nothing loaded), not with ``--no-positive-control``;
    else a one-line error now."""
    if folder is None:
        return
    if skip:
        raise LlmMiaError("--positive-control and --no-positive-control exclude each other")
    from llm_mia.models.loading import resolve_model_spec  # torch: deferred until an audit runs

    if not Path(folder).is_dir():
        raise LlmMiaError(f"--positive-control: not a model folder: {folder}")
    try:
        resolve_model_spec(str(folder), {})
    except LlmMiaError as e:
        raise LlmMiaError(f"--positive-control: not a model folder: {folder} ({e})") from None
