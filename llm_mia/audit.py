"""The release audit: extraction, secret exposure and membership scoring of one model, one report.

``run_audit`` works on an existing corpus folder and model; ``run_demo`` first builds the embedded
python-docs corpus with planted secrets and trains the target and reference GPT-2s on it.
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from llm_mia import __version__, io
from llm_mia.io import sha256_file
from llm_mia.errors import LlmMiaError
from llm_mia.extract import ExtractConfig, extract, read_clear
from llm_mia.models.loading import load_model

SCHEMA_VERSION = 1


@dataclass
class AuditConfig:
    """Every knob of an audit run and its default."""

    num_samples: int = 500  # per extraction strategy
    strategies: tuple[str, ...] = ("top-k", "temperature-decay", "internet")
    prompt_source: str | None = None  # internet prompts; None: the corpus's heldout.jsonl (never trained on)
    # Random candidates per secret for rank exposure. Measured: `llm-mia exposure --references 4000` on the
    # demo's model and 28 secrets took 262 s on the shared 2-core CPU (112 k sentences, ~430/s), so the
    # audit uses 2,000 (~2 min; the old whole-sentence path took 159 s for 1,000). 10,000 would take ~11 min.
    n_candidates: int = 2000
    # Spaces up to this size are enumerated whole for the exact exposure. A space of 10**6 (the {d6}
    # canaries) costs ~13 min per secret on that CPU, so the audit stops at 10**5; `llm-mia exposure
    # --exact-limit` goes higher.
    exact_limit: int = 100_000
    beams: int = 5
    membership_docs: int = 200  # members and as many held-out documents scored for the ROC
    top_n: int = 100
    seed: int = 0
    batch_size: int = 64
    max_new_tokens: int | None = None
    memorized_min_tokens: int = 50
    show_secrets: bool = False
    progress: bool = True
    pii_regions: tuple[str, ...] | None = None  # phone regions; None: the corpus's locales + llm_mia.pii.DEFAULT_REGIONS
    extract: ExtractConfig = field(default=None)  # filled from the fields above

    def __post_init__(self) -> None:
        """Check the extraction options now, before any folder or model (one-line LlmMiaError)."""
        self.extract = ExtractConfig(num_samples=self.num_samples, strategies=tuple(self.strategies), seed=self.seed,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, top_n=self.top_n,
                                     memorized_min_tokens=self.memorized_min_tokens, show_secrets=self.show_secrets)


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"llm_mia": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def strip_planted(text: str, secrets) -> str:
    """``text`` without the sentences of inserted secrets (and the separator each insertion added).

    The membership audit scores member documents as they were before planting: otherwise the
    planted sentences (random digits, Faker records) alone tell members from held-out documents,
    and the model-free baseline would rightly flag every demo corpus.
    """
    for sec in sorted((x for x in secrets if x.count > 0), key=lambda x: -len(x.text)):
        t = sec.text
        if t in text:
            text = text.replace(t + "\n\n", "").replace(t + " ", "").replace("\n\n" + t, "").replace(t, "")
    return text


def membership_sample(members: list[str], heldout: list[str], secrets, n: int, seed: int) -> tuple[list[str], list[str]]:
    """The membership evaluation's documents: ``min(n, len(members), len(heldout))`` members (planted
    sentences removed, :func:`strip_planted`) and as many held-out documents, sampled with
    ``random.Random(seed)``. The audit and the comparison of defences score exactly these."""
    rng = random.Random(seed)
    k = min(n, len(members), len(heldout))
    if k < 2:
        return [], []
    return [strip_planted(t, secrets) for t in rng.sample(members, k)], rng.sample(heldout, k)


def _membership(target, reference, members: list[str], heldout: list[str], cfg: AuditConfig,
                secrets=()) -> dict:
    """ROC metrics of every signal, members (1) against held-out non-members (0), and the
    model-free baseline. Planted secret sentences are removed from the members first
    (:func:`strip_planted`)."""
    from llm_mia.metrics import roc_metrics
    from llm_mia.scoring import score

    mem, non = membership_sample(members, heldout, secrets, cfg.membership_docs, cfg.seed)
    n = len(mem)
    if n < 2:
        return {"skipped": "fewer than 2 held-out documents"}
    res = score(target, mem + non, reference=reference, prepend_bos=True)
    y = [1] * n + [0] * n
    out = {}
    for sig in res.rows[0]["scores"]:
        try:
            out[sig] = roc_metrics(y, [r["scores"][sig] for r in res.rows])
        except LlmMiaError as e:
            out[sig] = {"error": str(e)}
    per_doc = {"labels": y, "scores": {sig: [r["scores"][sig] for r in res.rows] for sig in out}}
    return {"n_members": n, "n_nonmembers": n, "planted_sentences_removed": bool(secrets), "signals": out,
            "baseline": _baseline(mem, non, cfg.seed), "per_doc": per_doc}


def reference_saw_nonmembers(reference_path: str | Path | None, corpus_dir: str | Path) -> bool:
    """True when the reference model was trained on this corpus's ``heldout.jsonl``, the file the
    membership evaluation draws its non-members from (its ``recipe.json`` ``train_sha256`` equals
    the file's SHA-256; ``llm-mia train --reference`` and the demo train it there). Its signals
    (``reference``, ``reference_diff``) would then separate members from non-members by the
    reference's own memorization of the non-members, whatever the target leaks, so the membership
    evaluation leaves them out. False without a reference or a recipe."""
    if reference_path is None:
        return False
    recipe = Path(reference_path) / "recipe.json"
    if not recipe.is_file():
        return False
    try:
        sha = io.read_json(recipe).get("train_sha256")
    except (LlmMiaError, AttributeError):
        return False
    return sha is not None and sha == sha256_file(Path(corpus_dir) / "heldout.jsonl")


#: Why the reference signals are missing from a membership evaluation (see reference_saw_nonmembers).
REFERENCE_EXCLUDED = ("the reference model was trained on the held-out documents used as non-members: "
                      "its signals would measure its own memorization of them, not the target's leakage")


def _baseline(members: list[str], nonmembers: list[str], seed: int) -> dict:
    """The model-free baseline (:func:`llm_mia.baseline.model_free_baseline`), or why it was skipped."""
    from llm_mia.baseline import model_free_baseline

    try:
        return model_free_baseline(members, nonmembers, seed=seed)
    except LlmMiaError as e:
        return {"skipped": str(e), "auc": None, "warning": None}


def _observations(report: dict) -> list[str]:
    """Plain statements of what happened, including what went worse than expected."""
    obs = []
    secrets = report["secrets"]
    hi = [s for s in secrets if s["count"] >= 16]
    if hi:
        g = sum(s["greedy_extracted"] for s in hi)
        obs.append(f"{g} of {len(hi)} secrets inserted >= 16 times were reproduced by greedy completion of their prefix"
                   + ("." if g == len(hi) else " (expected all: the model memorized less than the demo's design assumes)."))
    ctrl = [s for s in secrets if s["count"] == 0]
    if ctrl:
        m = float(np.mean([s["exposure_rank"] for s in ctrl]))
        c = report.get("exposure_controls") or {}
        exp = c.get("expected_bits", 1 / np.log(2))
        se = c.get("stderr_bits", (1 / np.log(2)) / np.sqrt(len(ctrl)))
        obs.append(f"never-inserted controls: mean rank exposure {m:.2f} bits (chance: {exp:.2f} bits, about 1/ln 2; "
                   f"off by {m - exp:+.2f} bits = {(m - exp) / se:+.1f} standard errors of {se:.2f}), "
                   f"{sum(s['greedy_extracted'] for s in ctrl)} of {len(ctrl)} greedily 'extracted'.")
    ext = report["extraction"]
    for name, row in ext["rankings"].items():
        if row["memorized"] == 0:
            obs.append(f"ranking '{name}' found no memorized sample among its top {row['top_n']}.")
    best = max(ext["rankings"].items(), key=lambda kv: kv[1]["memorized"], default=None)
    if best and best[1]["memorized"]:
        obs.append(f"best ranking: '{best[0]}' with {best[1]['memorized']} memorized samples in its top {best[1]['top_n']}.")
    if report.get("provenance", {}).get("reference_excluded"):
        obs.append("reference: " + report["provenance"]["reference_excluded"] + " (its ranking and membership signals "
                   "are left out).")
    if report.get("membership", {}).get("reference_excluded"):
        obs.append("membership: the reference signals are left out: " + report["membership"]["reference_excluded"] + ".")
    mem = report.get("membership", {}).get("signals", {})
    if mem:
        aucs = {k: v["auc"] for k, v in mem.items() if "auc" in v}
        if aucs:
            k = max(aucs, key=aucs.get)
            obs.append(f"membership: best signal '{k}' with AUC {aucs[k]:.3f} (members vs held-out documents).")
            weak = [k for k, a in aucs.items() if a < 0.5]
            if weak:
                obs.append(f"signals ranking members below non-members (AUC < 0.5): {', '.join(weak)}.")
    base = report.get("membership", {}).get("baseline") or {}
    if base.get("auc") is not None:
        obs.append(f"model-free baseline (text features only): AUC {base['auc']:.3f}"
                   + (f" -- WARNING: {base['warning']}." if base.get("warning") else ", members and held-out "
                      "documents are not told apart without the model."))
    if report.get("canaries"):
        from llm_mia.canaries import summary_line

        obs.append("canary audit: " + summary_line(report["canaries"]) + ".")
    pii = report.get("pii")
    if pii:
        pl = pii["planted"]
        obs.append(f"PII: {pii['n_values']} distinct values in the samples, {pii['extracted_training_values']} of them "
                   f"training data; {pl['n_planted_extracted']} of {pl['n_planted']} planted PII values emitted.")
    return obs


def headline(report: dict) -> str:
    """One line summing up the leakage when no policy is given (the verdict slot of the report)."""
    parts = []
    ins = [s for s in report.get("secrets", []) if s.get("count", 0) >= 1]
    if ins:
        got = sum(bool(s.get("greedy_extracted") or s.get("surfaced_in_samples")) for s in ins)
        parts.append(f"{got} of {len(ins)} inserted secrets extracted")
    parts.append(f"{report['extraction'].get('memorized_total', 0)} memorized samples")
    if report.get("pii"):
        parts.append(f"{report['pii']['extracted_training_values']} training PII values emitted")
    sigs = report.get("membership", {}).get("signals", {})
    tprs = {k: v["tpr_at_fpr"]["0.01"]["tpr"] for k, v in sigs.items() if "tpr_at_fpr" in v}
    if tprs:
        k = max(tprs, key=tprs.get)
        parts.append(f"best membership TPR at 1% FPR {tprs[k]:.3f} ({k})")
    return "NO POLICY: " + "; ".join(parts)


def write_reports(out_dir: str | Path, report: dict, secrets, *, show_secrets: bool = False) -> dict:
    """Write report.json, report.md, report.html and modelcard.md into ``out_dir`` (atomic writes).

    Secrets and PII are redacted everywhere unless ``show_secrets``; the (possibly redacted) report
    that went into report.json is returned. Reads the clear ``extract/private/top.jsonl`` and
    ``extract/private/samples.jsonl`` beside it for the sample listings and the scatter (redacted here).
    """
    from llm_mia.report.html import redact_report, render_html
    from llm_mia.report.markdown import render_markdown

    out = Path(out_dir)
    if not show_secrets:
        report = redact_report(report, secrets)
    io.write_json(out / "report.json", report)
    top, samples = read_clear(out / "extract", "top.jsonl"), read_clear(out / "extract", "samples.jsonl")
    io.write_text(out / "report.md", render_markdown(report, top, secrets, show_secrets=show_secrets))
    io.write_text(out / "report.html", render_html(report, top, samples, secrets, show_secrets=show_secrets))
    from llm_mia.report.modelcard import render_modelcard

    io.write_text(out / "modelcard.md", render_modelcard(report))
    return report


def apply_policy(report: dict, policy) -> dict:
    """Put the verdict into ``report["verdict"]``: the policy's (:func:`llm_mia.policy.evaluate`) or,
    without one, :func:`headline`. Returns the verdict dict."""
    if policy is None:
        report["verdict"] = {"policy": None, "status": None, "passed": None, "line": headline(report), "checks": []}
    else:
        from llm_mia.policy import UnanswerableLimit, evaluate

        try:
            report["verdict"] = {"policy": policy.source, **evaluate(report, policy).to_dict()}
        except UnanswerableLimit as e:  # ERROR: the verdict goes into the report all the same
            report["verdict"] = {"policy": policy.source, **e.verdict.to_dict()}
            raise
    return report["verdict"]


def run_audit(corpus_dir: str | Path, model_path: str | Path, out_dir: str | Path, *,
              reference_path: str | Path | None = None, cfg: AuditConfig | None = None, policy=None,
              model_args: str | None = None, canaries: tuple[str | Path, str | Path] | None = None) -> dict:
    """Audit ``model_path`` against the corpus in ``corpus_dir``; write report.json / .md / .html.

    ``policy`` (:class:`llm_mia.policy.Policy`) puts the release gate's verdict at the top of the
    report (``report["verdict"]``); without one the verdict slot holds :func:`headline`.
    ``canaries`` ((canaries.jsonl, inclusion.json) of ``llm-mia canaries plant``) adds the canary
    audit (:func:`llm_mia.canaries.run_canary_audit`) as ``report["canaries"]``.

    Raises:
        LlmMiaError: missing corpus files, corrupt secrets.json, a folder that is not a model, a
            report that lacks what a policy limit needs.
    """
    from llm_mia.secrets import load_secrets
    from llm_mia.exposure import exposure_by_count, exposure_work, secret_exposure
    from llm_mia.report.plots import exposure_plot

    cfg = cfg or AuditConfig()
    t0 = time.time()
    corpus = Path(corpus_dir)
    for name in ("train.jsonl", "heldout.jsonl", "secrets.json"):
        if not (corpus / name).exists():
            raise LlmMiaError(f"corpus folder {corpus} has no {name} (build one with `llm-mia corpus build`)")
    train = [r["text"] for r in io.read_jsonl(corpus / "train.jsonl")]
    heldout = [r["text"] for r in io.read_jsonl(corpus / "heldout.jsonl")]
    secrets = load_secrets(corpus / "secrets.json")
    if not train:
        raise LlmMiaError(f"{corpus / 'train.jsonl'} holds no documents")
    from llm_mia.pii_findings import resolve_regions

    regions = resolve_regions(cfg.pii_regions, corpus)  # (a bad region fails before any model work)
    from llm_mia.canaries import prepare_canary_audit, run_canary_audit

    can = prepare_canary_audit(*canaries, model_path=model_path, has_reference=bool(reference_path)) if canaries else None
    target = load_model(str(model_path) if model_path is not None else None, model_args=model_args)
    reference = load_model(str(reference_path)) if reference_path else None
    from llm_mia.scoring import reference_warning

    ref_is_target = reference_warning(target, reference)
    ref_sha = reference.weights_sha256 if reference is not None else None
    if ref_is_target:  # its signals would be constant: left out of the rankings and the membership
        import warnings

        from llm_mia.errors import LlmMiaWarning

        warnings.warn(ref_is_target, LlmMiaWarning, stacklevel=2)
        reference = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t = time.time()
    ecfg = ExtractConfig(num_samples=cfg.num_samples, strategies=tuple(cfg.strategies), seed=cfg.seed,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, score_batch_size=None,
                         top_n=cfg.top_n, memorized_min_tokens=cfg.memorized_min_tokens, progress=cfg.progress,
                         prompt_source=cfg.prompt_source or str(corpus / "heldout.jsonl"), resume=True,
                         show_secrets=cfg.show_secrets, pii_regions=regions)
    ext = extract(target, out / "extract", reference=reference, train_texts=train, secrets=secrets, cfg=ecfg)
    timings["extract_s"] = round(time.time() - t, 1)

    t = time.time()
    from llm_mia.progress import bar

    with bar("exposure", exposure_work(secrets, cfg.n_candidates, cfg.exact_limit), enabled=cfg.progress) as adv:
        exp = secret_exposure(target, secrets, n_references=cfg.n_candidates, exact_limit=cfg.exact_limit,
                              seed=cfg.seed, beams=cfg.beams, batch_size=cfg.batch_size, progress=adv,
                              train_texts=train)
    timings["exposure_s"] = round(time.time() - t, 1)
    surfaced = set(ext["secrets_surfaced"])
    for r in exp.rows:
        r["surfaced_in_samples"] = int(r["id"] in surfaced)

    t = time.time()
    excluded = reference_saw_nonmembers(reference_path, corpus)
    membership = _membership(target, None if excluded else reference, train, heldout, cfg, secrets)
    if excluded and "signals" in membership:
        membership["reference_excluded"] = REFERENCE_EXCLUDED
    timings["membership_s"] = round(time.time() - t, 1)
    t = time.time()
    from llm_mia.pii_findings import pii_findings, tokenizer_normalizer

    # the hits extract wrote into samples.jsonl (its clear copy): one PII pass, one detector set
    pii = pii_findings(read_clear(out / "extract", "samples.jsonl"), secrets, train, regions=regions,
                       normalizer=tokenizer_normalizer(target.tokenizer), presidio=ecfg.pii_presidio)
    timings["pii_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)

    recipe = (target.folder or Path(".")) / "recipe.json"
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provenance": {
            "model": target.source, "model_args": model_args, "model_weights_sha256": target.weights_sha256,
            "model_base": target.base,
            "reference": str(reference_path) if reference_path else None,
            "reference_weights_sha256": ref_sha,
            "reference_excluded": ref_is_target,
            "corpus": str(corpus), "train_sha256": sha256_file(corpus / "train.jsonl"),
            "secrets_sha256": sha256_file(corpus / "secrets.json"),
            "recipe": io.read_json(recipe) if recipe.exists() else None,
            "seed": cfg.seed, "versions": _versions(), "timings": timings,
            "settings": {k: v for k, v in asdict(cfg).items() if k != "extract"},
        },
        "extraction": ext,
        "secrets": exp.rows,
        "exposure_by_count": exposure_by_count(exp.rows),
        "exposure_controls": exp.controls,
        "exposure_plot": "exposure.png",
        "membership": membership,
        "pii": pii,
    }
    if can is not None:
        report["canaries"] = run_canary_audit(target, can, reference=reference, seed=cfg.seed)
    report["observations"] = _observations(report)
    exposure_plot(out / "exposure.png", exp.rows, n_references=cfg.n_candidates)
    try:
        apply_policy(report, policy)
    except LlmMiaError as e:  # the policy asks what this report cannot answer: keep the report, then fail
        e.report = write_reports(out, report, secrets, show_secrets=cfg.show_secrets)
        raise
    return write_reports(out, report, secrets, show_secrets=cfg.show_secrets)


#: The demo's corpus: the first 300 k characters of python-docs (~75 k tokens). Measured here: on
#: the full 1.2 MB, 600-1,500 steps of the small preset memorized only secrets inserted 32 times.
DEMO_MAX_CHARS = 300_000


def run_demo(out_dir: str | Path = "audit-demo", *, preset: str = "small", cfg: AuditConfig | None = None,
             max_steps: int | None = None, max_chars: int | None = DEMO_MAX_CHARS, progress: bool = True,
             policy=None) -> dict:
    """The whole path on the embedded python-docs corpus: corpus -> target + reference -> audit.

    The reference model is trained with the target's recipe and tokenizer on the held-out split for
    the same number of epochs (its step count is scaled by the held-out / train token ratio).
    """
    from llm_mia.corpus import build_corpus
    from llm_mia.train import PRESETS, train_model

    out = Path(out_dir)
    t0 = time.time()
    timings = {}
    build_corpus("python-docs", out / "corpus", seed=(cfg.seed if cfg else 0), max_chars=max_chars)
    timings["corpus_s"] = round(time.time() - t0, 1)
    t = time.time()
    train_model(out / "corpus", out / "model", preset=preset, max_steps=max_steps, progress=progress)
    timings["train_target_s"] = round(time.time() - t, 1)
    t = time.time()
    ratio = (out / "corpus" / "heldout.jsonl").stat().st_size / max(1, (out / "corpus" / "train.jsonl").stat().st_size)
    ref_steps = max(10, round((max_steps or PRESETS[preset].steps) * ratio))
    train_model(out / "corpus", out / "reference", preset=preset, reference=True, tokenizer_from=str(out / "model"),
                max_steps=ref_steps, progress=progress)
    timings["train_reference_s"] = round(time.time() - t, 1)
    report = run_audit(out / "corpus", out / "model", out, reference_path=out / "reference", cfg=cfg, policy=policy)
    report["provenance"]["timings"].update(timings)
    report["provenance"]["timings"]["demo_total_s"] = round(time.time() - t0, 1)
    from llm_mia.secrets import load_secrets

    return write_reports(out, report, load_secrets(out / "corpus" / "secrets.json"),
                         show_secrets=(cfg.show_secrets if cfg else False))
