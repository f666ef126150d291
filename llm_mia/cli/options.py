"""Options and small helpers shared by several commands: each option factory returns a fresh ``typer.Option``
(with its ``--help`` panel), so a command's signature is one line per option.

Only typer and the error class are imported here; every library import is deferred into a function, so
``llm-mia --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.core.errors import LlmMiaError

# The --help panels of the audit commands.
MODEL, DATA, EXTRACTION, EXPOSURE = "Model", "Data", "Extraction", "Exposure"
MEMBERSHIP, GATE, OUTPUT = "Membership", "Release gate", "Output"


def parse_ints(text: str, what: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``: positive integers, comma-separated."""
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LlmMiaError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not vals or any(v < 1 for v in vals):
        raise LlmMiaError(f"{what} must be positive integers, got '{text}'")
    return vals


# --- the model ----------------------------------------------------------------------------------------

def _check_model_args(value: str | None) -> str | None:
    """Parse --model-args as soon as it is read, so a bad key fails before any other input."""
    if value is not None:
        from llm_mia.models.hub import parse_model_args

        parse_model_args(value)
    return value


def model_args(panel: str | None = None):
    return typer.Option(None, "--model-args", callback=_check_model_args, rich_help_panel=panel,
                        help="lm-evaluation-harness model arguments: pretrained=BASE,peft=ADAPTER,revision=...,"
                             "dtype=...,trust_remote_code=true,allow_pickle=true (applied to --model); for openai:URL "
                             "name=,api=completions|chat|text,tokenizer=,top_logprobs=,batch=,concurrency=,"
                             "max_retries=,timeout=.")


def _check_engine(value: str) -> str:
    """--engine, checked as soon as it is read (vLLM installed included), before any other work."""
    from llm_mia.models.loading import ENGINES

    if value not in ENGINES:
        raise LlmMiaError(f"--engine must be {' or '.join(ENGINES)}, got '{value}'")
    if value == "vllm":
        from llm_mia.models.vllm_engine import require_vllm

        require_vllm()
    return value


def engine(panel: str | None = None):
    return typer.Option("hf", "--engine", callback=_check_engine, rich_help_panel=panel,
                        help="hf (transformers, the reference) or vllm: vLLM runs the model once its per-token "
                             "log-probs match the HF engine's on 16 texts (the cross-check); needs llm_mia\\[vllm] (pip install -e .\\[vllm]).")


def echo_engine(model_or_info) -> None:
    """One stderr line with the vLLM cross-check's figures (nothing for the HF engine)."""
    info = getattr(model_or_info, "engine_info", model_or_info) or {}
    c = info.get("crosscheck")
    if c:
        typer.echo(f"engine vllm {info.get('vllm_version')}: cross-check passed on {c['n_texts']} texts "
                   f"({c['n_tokens']} tokens, {c['dtype']}): max |log p difference| {c['max_abs_diff']:.2g} nats "
                   f"(tolerance {c['tolerance']:g})", err=True)


def audit_reference():
    return typer.Option(None, "--reference", rich_help_panel=MODEL,
                        help="Reference model folder, 'base' (a PEFT adapter's base; the default for an adapter) "
                             "or 'none'.")


# --- the audit's knobs (`audit`, `compare`, `demo`) -----------------------------------------------------

def audit_corpus(required: bool = False):
    return typer.Option(... if required else None, "--corpus", rich_help_panel=DATA,
                        help="Corpus folder: shorthand for --members DIR/train.jsonl --nonmembers DIR/heldout.jsonl "
                             "--secrets DIR/secrets.json.")


def members():
    return typer.Option(None, "--members", rich_help_panel=DATA, help="Training examples: .txt/.jsonl/.csv/.parquet or "
                        "hf:NAME[:CONFIG]:SPLIT (plain text or chat 'messages').")


def nonmembers():
    return typer.Option(None, "--nonmembers", rich_help_panel=DATA, help="Held-out examples (same formats), for membership.")


def secrets():
    return typer.Option(None, "--secrets", rich_help_panel=DATA,
                        help="Planted canaries (secrets.json); without it exposure is not measured.")


def text_column():
    return typer.Option("text", "--text-column", rich_help_panel=DATA, help="Column / field holding the text.")


def score_spans():
    return typer.Option("assistant", "--score-spans", rich_help_panel=DATA,
                        help="Chat rows: score the assistant turns only (assistant) or every token (all).")


def num_samples():
    return typer.Option(500, "--num-samples", min=1, rich_help_panel=EXTRACTION,
                        help="Extraction samples per strategy.")


def strategy():
    return typer.Option("top-k,temperature-decay,internet", "--strategy", rich_help_panel=EXTRACTION,
                        help="Extraction strategies, comma-separated: top-k, temperature-decay, internet, chat, "
                             "divergence (chat and divergence: chat models only).")


def prompts():
    return typer.Option(None, "--prompts", rich_help_panel=EXTRACTION,
                        help="Prompt corpus of the internet strategy (default: the corpus's heldout.jsonl).")


def length():
    return typer.Option(None, "--length", rich_help_panel=EXTRACTION,
                        help="New tokens per extraction sample (default: min(256, context - 1)).")


def discoverable():
    return typer.Option(200, "--discoverable", min=0, rich_help_panel=EXTRACTION,
                        help="Training examples sampled for discoverable memorization (0 = off).")


def discoverable_prefix():
    return typer.Option(50, "--discoverable-prefix", min=1, rich_help_panel=EXTRACTION,
                        help="Prompt tokens of discoverable memorization (the suffix is 50 tokens).")


def near_similarity():
    return typer.Option(0.9, "--near-similarity", rich_help_panel=EXTRACTION,
                        help="Near-verbatim: token edit similarity of a near-memorized sample or greedy suffix "
                             "(Ippolito et al. 2023), in (0, 1].")


def near_window():
    return typer.Option(50, "--near-window", rich_help_panel=EXTRACTION, help="Window (tokens) of the near-verbatim match.")


def near_samples():
    return typer.Option(0, "--near-samples", min=0, rich_help_panel=EXTRACTION,
                        help="Sampled continuations per discoverable prefix for the near-verbatim risk (0 = off).")


def pii_regions(panel: str | None = EXTRACTION):
    return typer.Option(None, "--pii-regions", rich_help_panel=panel,
                        help="Phone regions of the PII detection, ISO 3166 codes, comma-separated, "
                             "first = preferred (default US,GB,DE,FR,IN,BR, after the corpus's locales).")


def candidates():
    return typer.Option(2000, "--candidates", min=1, rich_help_panel=EXPOSURE,
                        help="Random candidates per secret for rank exposure.")


def exact_limit():
    return typer.Option(100_000, "--exact-limit", min=0, rich_help_panel=EXPOSURE,
                        help="Enumerate secret spaces of at most this many members for the exact exposure.")


def canaries():
    return typer.Option(None, "--canaries", rich_help_panel=EXPOSURE,
                        help="Canaries JSONL planted with `llm-mia canaries plant`.")


def inclusion():
    return typer.Option(None, "--inclusion", rich_help_panel=EXPOSURE, help="With --canaries: its inclusion.json.")


def membership_docs():
    return typer.Option(200, "--membership-docs", min=2, rich_help_panel=MEMBERSHIP,
                        help="Held-out documents scored, at most; members: up to 4x as many in an audit "
                             "(they tighten the TPR bound), as many in compare.")


def shadow(what: str = "to membership"):
    return typer.Option(None, "--shadow", rich_help_panel=MEMBERSHIP,
                        help=f"Shadow folder (`llm-mia shadow train`): adds LiRA, RMIA with K references and the "
                             f"Shokri attack {what}.")


def policy():
    return typer.Option(None, "--policy", rich_help_panel=GATE,
                        help="Release gate: a policy TOML (see examples/policy.toml). Exit 0 = pass, 1 = a limit "
                             "exceeded, 2 = error, 3 = inconclusive; the verdict is printed.")


def positive_control():
    return typer.Option(None, "--positive-control", rich_help_panel=GATE,
                        help="A model known to have memorized the planted secrets, run through the same extraction "
                             "(default: a twin fine-tuned from the target on the secrets' documents; needed for "
                             "an endpoint or vLLM target).")


def no_positive_control():
    return typer.Option(False, "--no-positive-control", rich_help_panel=GATE,
                        help="Skip the positive control: the gate's extraction limits are then INCONCLUSIVE "
                             "unless the policy sets detection_power = \"sentinels\".")


def sarif():
    return typer.Option(None, "--sarif", rich_help_panel=GATE,
                        help="With --policy: write the verdict as SARIF 2.1.0 (GitHub code scanning) to this file.")


def junit():
    return typer.Option(None, "--junit", rich_help_panel=GATE,
                        help="With --policy: write JUnit XML, one test case per limit.")


def show_secrets():
    return typer.Option(False, "--show-secrets", rich_help_panel=OUTPUT,
                        help="Print secrets and PII in the report unredacted.")


def seed():
    return typer.Option(0, "--seed")


# --- release-gate files (`audit`, `demo`, `gate`) ----------------------------------------------------------

def check_ci(sarif: Path | None, junit: Path | None, inputs=()) -> None:
    """--sarif / --junit must be writable files (checked before any work)."""
    from llm_mia.core.io import check_output_file

    for flag, path in (("--sarif", sarif), ("--junit", junit)):
        if path is not None:
            check_output_file(path, inputs=inputs, what=flag)


def write_ci(report: dict, verdict: dict, report_dir: Path, *, sarif: Path | None, junit: Path | None) -> None:
    """SARIF 2.1.0 and JUnit XML of a gated verdict (see llm_mia.report.sarif / junit)."""
    if sarif is not None:
        from llm_mia.report.sarif import write_sarif

        write_sarif(sarif, report, verdict, report_dir=report_dir)
    if junit is not None:
        from llm_mia.report.junit import write_junit

        write_junit(junit, report, verdict)


def verdict_exit(verdict: dict) -> None:
    """Print the verdict line on stdout; exit with the verdict's code (0 pass or no policy, 1 fail,
    2 error, 3 inconclusive)."""
    typer.echo(verdict["line"])
    code = verdict.get("exit_code") or 0
    if code:
        raise typer.Exit(code=code)
