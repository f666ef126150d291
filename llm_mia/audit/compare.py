"""Compare models (a baseline and its defended versions) in one report, with the audited epsilon.

``compare_models`` audits each model with :func:`llm_mia.audit.pipeline.run_audit` (one sub-folder each),
adds the held-out perplexity, the canary audit (when canaries were planted: TPR at 1% FPR and the
epsilon lower bounds of :mod:`llm_mia.data.canaries` / :mod:`llm_mia.privacy.bounds`, the one empirical
epsilon of the product) and the signals that still work under each API output limit
(:mod:`llm_mia.serving.output_limits`), and writes ``compare.json`` and ``compare.md`` with one row per model.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llm_mia.audit.pipeline import run_audit
from llm_mia.audit.stages import (
    AuditConfig,
    membership_sample,
    reference_saw_nonmembers,
    strip_planted,
)
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.secrets import load_secrets
from llm_mia.models.heldout import (
    MAX_EVAL_TOKENS,
    block_len,
    encode_texts,
    heldout_perplexity,
    token_stream,
)
from llm_mia.models.loading import load_model
from llm_mia.models.output_modes import parse_mode
from llm_mia.privacy.canary_audit import prepare_canary_audit
from llm_mia.serving.memguard import (
    classifier_from_shadows,
    defense_training_set,
    fit_classifier,
)
from llm_mia.serving.output_limits import ApiView, membership_under_limits, query_limits

__all__ = ["heldout_perplexity", "served_perplexity", "compare_models", "render_compare_markdown"]


def served_perplexity(view, texts: Sequence[str]) -> float | None:
    """:func:`~llm_mia.models.heldout.heldout_perplexity`'s measure (the same EOS-joined stream, blocks and
    predicted tokens) from what ``view`` returns (its ``token_stats``: e.g. MemGuard's noised log-probs,
    :class:`llm_mia.serving.output_limits.ApiView`); equal to it for a plain model. None for no text."""

    tok = view.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else view.bos_id
    docs = encode_texts(tok, list(texts))
    if not docs:
        return None
    stream = token_stream(docs, range(len(docs)), eos)[:MAX_EVAL_TOKENS]
    T = block_len(len(stream), view.max_context or 128)
    blocks = [stream[i:i + T].tolist() for i in range(0, len(stream), T)]
    blocks = [b for b in blocks if len(b) >= 2]
    if not blocks:
        return None
    st = view.token_stats(blocks, context_lens=1, moments=False)
    return math.exp(-float(st.token_logprob[st.mask].double().mean()))


def _served_limits(report: dict, mode: str) -> dict:
    """A served row's membership metrics in :func:`llm_mia.serving.output_limits.membership_under_limits`'s shape."""
    sigs = (report.get("membership") or {}).get("signals") or {}
    return {"modes": {mode: {"signals": {k: {"tpr_at_1pct_fpr": v["tpr_at_fpr"]["0.01"]["tpr"], "auc": v["auc"]}
                                         for k, v in sigs.items() if "auc" in v}}}}


def _model_row(name: str, path: Path, report: dict, heldout_ppl, limits: dict | None, serving: str | None = None,
               api_modes: Sequence[str] = ()) -> dict:

    recipe = report["provenance"].get("recipe") or {}
    mem = report.get("membership", {}).get("signals", {})
    tprs = {k: v["tpr_at_fpr"]["0.01"]["tpr"] for k, v in mem.items() if "tpr_at_fpr" in v}
    aucs = {k: v["auc"] for k, v in mem.items() if "auc" in v}
    best = max(tprs, key=lambda k: (tprs[k], aucs.get(k, 0)), default=None)
    inserted = [s for s in report["secrets"] if s["count"] > 0]
    controls = [s for s in report["secrets"] if s["count"] == 0]
    by_count = {}
    for g in report["exposure_by_count"]:
        d = by_count.setdefault(str(g["count"]), {"n": 0, "rank_sum": 0.0})
        d["n"] += g["n"]
        d["rank_sum"] += g["mean_exposure_rank"] * g["n"]
    dp = recipe.get("dp") or {}
    defense = recipe.get("defense", "none")
    if serving:
        defense = f"{serving} (serving)" if defense == "none" else f"{defense} + {serving} (serving)"
    ql = (query_limits(report["secrets"], _served_limits(report, serving), [serving]) if serving
          else query_limits(report["secrets"], limits, list(api_modes) or ["full"]))
    return {
        "name": name, "model": str(path), "defense": defense, "serving": serving, "query_limits": ql,
        "settings": {k: recipe.get(k) for k in ("weight_decay", "dropout", "steps", "planned_steps")},
        "early_stopping_best_step": (recipe.get("early_stopping") or {}).get("best_step"),
        "dedup": recipe.get("dedup"),
        "heldout_perplexity": heldout_ppl,
        "exposure_by_count": {c: d["rank_sum"] / d["n"] for c, d in sorted(by_count.items(), key=lambda kv: int(kv[0]))},
        "secrets_extracted": sum(bool(s["greedy_extracted"]) for s in inserted), "secrets_inserted": len(inserted),
        "controls_extracted": sum(bool(s["greedy_extracted"]) for s in controls),
        "memorized_samples": report["extraction"].get("memorized_total"),
        "best_signal": best, "best_tpr_at_1pct_fpr": tprs.get(best), "best_signal_auc": aucs.get(best),
        "attacks": {k: {"auc": v["auc"], "tpr_at_0.1pct_fpr": v["tpr_at_fpr"].get("0.001", {}).get("tpr"),
                        "tpr_at_1pct_fpr": v["tpr_at_fpr"]["0.01"]["tpr"]} for k, v in mem.items() if "auc" in v},
        "trained_epsilon": dp.get("epsilon"), "trained_delta": dp.get("delta"),
        "canary_audit": ({k: v for k, v in report["canaries"].items() if k != "canaries"}
                         if report.get("canaries") else None),
        "output_limits": limits,
    }


@dataclass
class CompareRun:
    """What every model's audit in a comparison shares, read and checked before the first audit (:func:`_prepare`).

    Attributes:
        corpus: the corpus folder (train.jsonl, heldout.jsonl, secrets.json).
        out: the comparison folder (created): one sub-folder per model, compare.json, compare.md.
        cfg: the audit settings of every model.
        train: the corpus's training documents (train.jsonl texts, file order).
        heldout: its held-out documents (heldout.jsonl texts, file order).
        members: the audit's membership sample of members (planted sentences removed,
            :func:`llm_mia.audit.stages.membership_sample`).
        nonmembers: as many held-out documents (the same sample).
        mia_reference: the loaded reference the output-limit runs read; None without one or when it
            was trained on the non-members (its signals would measure itself).
        serves: {model name: (serve, record)} of the rows served through MemGuard (:func:`_memguard_serve`).
        reference_path: the reference model given to every audit, or None.
        policy: the release-gate policy every audit is gated by, or None.
        canaries: (canaries.jsonl, inclusion.json) planted into every model's training file, or None.
        shadow_dir: the shadow models' folder every audit reads, or None.
        api_modes: the API output modes the output-limit runs measure (:mod:`llm_mia.serving.output_limits`).
        limit_docs: at most this many members (and as many non-members) per output-limit run.
        n_boot: bootstrap resamples of the output-limit runs' AUC intervals.
        limit_memguard: ``target -> classifier`` of the output-limit runs' ``memguard:EPS`` modes
            (``memguard_classifier``, or fitted on the shadow models before any audit), or None: fitted on
            the target's documents outside the evaluated ones (:func:`_check_limit_memguard` checks they exist).
    """

    corpus: Path
    out: Path
    cfg: AuditConfig
    train: list[str]
    heldout: list[str]
    members: list[str]
    nonmembers: list[str]
    mia_reference: object | None
    serves: dict[str, tuple]
    reference_path: str | Path | None
    policy: object | None
    canaries: tuple | None
    shadow_dir: str | Path | None
    api_modes: Sequence[str]
    limit_docs: int
    n_boot: int
    limit_memguard: object | None = None


def compare_models(corpus_dir: str | Path, models: Sequence[tuple], out_dir: str | Path, *,
                   reference_path: str | Path | None = None, cfg=None, canaries=None,
                   api_modes: Sequence[str] = ("full", "topk:5", "rounded:2", "label-only"),
                   limit_docs: int = 50, n_boot: int = 1000, progress: bool = True, policy=None,
                   memguard_classifier=None, shadow_dir: str | Path | None = None) -> dict:
    """Audit every model of ``models`` ((name, folder) or (name, folder, serving mode) tuples) and write
    one comparison.

    A serving mode (``"memguard:EPS"``, :mod:`llm_mia.serving.memguard`) audits the folder's model served
    through MemGuard: its membership signals read the returned (noised) log-probs; extraction and
    exposure read the model (MemGuard leaves generated text alone). The defender's classifier is
    ``memguard_classifier(loaded target)`` when given, else fitted on the shadow models of
    ``shadow_dir`` (:func:`llm_mia.serving.memguard.classifier_from_shadows`) when given, else on the target's
    training documents against held-out documents, both outside the membership sample.
    Every row has ``query_limits`` (:func:`llm_mia.serving.output_limits.query_limits`, per API mode; a served
    row: its serving mode). A served row's ``heldout_perplexity`` is :func:`served_perplexity` of what
    MemGuard returns (``model_heldout_perplexity``: the model's own). ``shadow_dir`` (``llm-mia shadow
    train``) adds LiRA, RMIA and the Shokri attack to every audit.

    Each model gets ``out_dir/<name>/report.json`` (the usual audit, gated by ``policy`` when one is
    given: each row then carries its ``verdict``); ``out_dir/compare.json`` and ``compare.md`` hold one
    row per model (see :func:`render_compare_markdown` for the columns). ``canaries``
    ((canaries.jsonl, inclusion.json) planted into every model's training file) adds the canary audit
    of each model, at its trained delta (1e-5 when it has none). The output-limit runs draw the
    audit's own membership documents (:func:`llm_mia.audit.pipeline.membership_sample`).

    Returns:
        compare.json's dict: ``corpus``, ``reference``, ``created``, ``rows`` (one per model, in order) and
        ``settings``.

    Raises:
        LlmMiaError: no models, a repeated or unsafe name, a missing corpus file or model folder, bad
            canary inputs (all checked before any model work), a policy limit a report cannot answer
            (after that model's report is written).
    """

    # one member per non-member: the rows compare like with like, and the documents left over fit MemGuard
    cfg = dataclasses.replace(cfg or AuditConfig(), member_ratio=1)
    models = _check_models(models, canaries, reference_path)
    run = _prepare(corpus_dir, models, out_dir, cfg, reference_path=reference_path, policy=policy,
                   canaries=canaries, api_modes=api_modes, limit_docs=limit_docs, n_boot=n_boot,
                   memguard_classifier=memguard_classifier, shadow_dir=shadow_dir)
    rows = [_audit_row(run, name, path, serving) for name, path, serving in models]
    result = {"corpus": str(run.corpus), "reference": str(reference_path) if reference_path else None,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows,
              "settings": {"membership_docs": len(run.members), "api_modes": list(api_modes), "limit_docs": limit_docs,
                           "n_candidates": cfg.n_candidates, "num_samples": cfg.num_samples,
                           "strategies": list(cfg.strategies), "seed": cfg.seed}}
    io.write_json(run.out / "compare.json", result)
    io.write_text(run.out / "compare.md", render_compare_markdown(result))
    return result


def _check_models(models: Sequence[tuple], canaries, reference_path) -> list[tuple[str, object, str | None]]:
    """``models`` as (name, folder, serving mode or None), checked (names, serving modes, model folders,
    canary inputs against each model) before any model work; raises LlmMiaError on the first problem."""
    if not models:
        raise LlmMiaError("compare needs at least one model")
    models = [(m[0], m[1], m[2] if len(m) > 2 else None) for m in models]
    names = [n for n, _, _ in models]
    if len(set(names)) != len(names):
        raise LlmMiaError(f"model names must be distinct, got {names}")
    for n, p, serving in models:
        if serving is not None and parse_mode(serving).kind != "memguard":
            raise LlmMiaError(f"model '{n}': a serving defence is memguard:EPS, got '{serving}'")
        if not n or "/" in n or n.startswith(".") or n in ("compare.json", "compare.md"):
            raise LlmMiaError(f"bad model name '{n}' (a plain folder name)")
        if not (Path(p) / "config.json").is_file():
            raise LlmMiaError(f"not a model folder: {p}")
    if canaries:
        for _, p, _ in models:
            prepare_canary_audit(*canaries, model_path=p, has_reference=reference_path is not None)
    return models


def _prepare(corpus_dir, models, out_dir, cfg: AuditConfig, *, reference_path, policy, canaries, api_modes,
             limit_docs: int, n_boot: int, memguard_classifier, shadow_dir) -> CompareRun:
    """Read the corpus, create ``out_dir``, load the reference, draw the membership sample and build the
    MemGuard views' recipes (:func:`_memguard_serve`): the :class:`CompareRun` every audit shares.

    Raises:
        LlmMiaError: a corpus folder without train.jsonl, heldout.jsonl or secrets.json; a MemGuard
            classifier with no document left to train on.
    """
    corpus = Path(corpus_dir)
    for f in ("train.jsonl", "heldout.jsonl", "secrets.json"):
        if not (corpus / f).is_file():
            raise LlmMiaError(f"corpus folder {corpus} has no {f}")
    train = [r["text"] for r in io.read_jsonl(corpus / "train.jsonl")]
    heldout = [r["text"] for r in io.read_jsonl(corpus / "heldout.jsonl")]
    secrets = load_secrets(corpus / "secrets.json")
    mem, non = membership_sample(train, heldout, secrets, cfg.membership_docs, cfg.seed)
    limit_memguard = _check_limit_memguard(api_modes, memguard_classifier, shadow_dir, models, len(mem), len(non),
                                           limit_docs, seed=cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = load_model(str(reference_path)) if reference_path else None
    # a reference trained on the non-members would make its signals measure itself (see audit)
    mia_reference = None if reference_saw_nonmembers(reference_path, corpus) else reference
    if memguard_classifier is None and shadow_dir is not None:
        memguard_classifier = limit_memguard or _shadow_classifier(shadow_dir, cfg.seed)
    serves = {name: _memguard_serve(parse_mode(serving), memguard_classifier, train, heldout, mem, non, secrets,
                                    seed=cfg.seed) for name, _, serving in models if serving}  # checked before any audit
    return CompareRun(corpus=corpus, out=out, cfg=cfg, train=train, heldout=heldout, members=mem, nonmembers=non,
                      mia_reference=mia_reference, serves=serves, reference_path=reference_path, policy=policy,
                      canaries=canaries, shadow_dir=shadow_dir, api_modes=api_modes, limit_docs=limit_docs,
                      n_boot=n_boot, limit_memguard=limit_memguard)


def _shadow_classifier(shadow_dir, seed: int):
    """``target -> classifier`` fitted once on the shadow models of ``shadow_dir``, before any audit."""
    clf = classifier_from_shadows(shadow_dir, seed=seed)
    return lambda target: clf


def _check_limit_memguard(api_modes, make_classifier, shadow_dir, models, n_members: int, n_nonmembers: int,
                          limit_docs: int, *, seed: int):
    """The output-limit runs' MemGuard classifier, settled before any audit (field case B4-15).

    Every ``api_modes`` entry is parsed first (an unknown mode is refused here, not after the audits).
    With a ``memguard:EPS`` mode the classifier is ``make_classifier`` when given, else the one fitted
    once on the shadow models of ``shadow_dir`` (built now); without either, the target-fitted
    classifier needs 2 members and 2 non-members left over after the ``min(limit_docs, n)`` evaluated
    of each, which is checked here.

    Returns:
        ``target -> classifier``, or None (no memguard mode or no unserved row, or fitted on each
        target's left-over documents by :func:`llm_mia.serving.output_limits.membership_under_limits`).

    Raises:
        LlmMiaError: an unknown mode; a memguard mode with no classifier and too few documents left over.
    """
    parsed = [parse_mode(m) for m in api_modes]
    if not any(m.kind == "memguard" for m in parsed) or not any(not serving for _, _, serving in models):
        return None
    if make_classifier is not None:
        return make_classifier
    if shadow_dir is not None:
        return _shadow_classifier(shadow_dir, seed)
    k = min(limit_docs, n_members, n_nonmembers)
    if min(n_members - k, n_nonmembers - k) < 2:
        raise LlmMiaError(f"--api-modes memguard: the defender's classifier needs >= 2 members and 2 non-members "
                          f"besides the {k} + {k} evaluated, and --membership-docs leaves {n_members - k} + "
                          f"{n_nonmembers - k}; pass --shadow (it is fitted on the shadow models) or raise "
                          "--membership-docs")
    return None


def _audit_row(run: CompareRun, name: str, path, serving: str | None) -> dict:
    """Audit one model into ``run.out/name`` (:func:`llm_mia.audit.pipeline.run_audit`) and measure what the
    audit does not (held-out perplexity, membership under API output limits): its compare.json row."""
    t0 = time.time()
    cfg, n = run.cfg, len(run.members)
    serve, record = run.serves.get(name, (None, None))
    report = run_audit(run.corpus, path, run.out / name, reference_path=run.reference_path, cfg=cfg,
                       policy=run.policy, canaries=run.canaries, serve=serve, shadow_dir=run.shadow_dir)
    target = load_model(str(path))
    limits = None
    if run.api_modes and n >= 2 and not serving:
        limits = membership_under_limits(target, run.members, run.nonmembers, modes=run.api_modes,
                                         reference=run.mia_reference, n=min(run.limit_docs, n), seed=cfg.seed,
                                         n_boot=run.n_boot,
                                         memguard=run.limit_memguard(target) if run.limit_memguard else None)
    ppl = heldout_perplexity(target, run.heldout)
    row = _model_row(name, Path(path), report, served_perplexity(record["view"], run.heldout) if serving else ppl,
                     limits, serving, run.api_modes)
    if serving:
        row["model_heldout_perplexity"] = ppl
        row["memguard"] = record["classifier"]
    if run.policy is not None:
        v = report["verdict"]
        row["verdict"] = {k: v.get(k) for k in ("status", "passed", "exit_code", "line")}
    row["seconds"] = round(time.time() - t0, 1)
    return row


def _memguard_serve(mode, make_classifier, train, heldout, mem, non, secrets, *, seed: int):
    """(serve, record) for :func:`llm_mia.audit.pipeline.run_audit`: ``serve = (name, target -> MemGuard view)``;
    ``record`` (the classifier's weights and what it was trained on) is filled when the view is built."""

    record: dict = {"classifier": {}}
    seen_non = set(non)
    rest_n = [t for t in heldout if t not in seen_non]
    seen_mem = set(mem)
    rest_m = [t for t in train if strip_planted(t, secrets) not in seen_mem]  # ``mem`` holds stripped copies
    if make_classifier is None and min(len(rest_m), len(rest_n)) < 1:
        raise LlmMiaError(f"{mode.name}: the defender's classifier needs a training and a held-out document outside "
                          f"the membership sample (got {len(rest_m)} + {len(rest_n)}): lower --membership-docs")

    def view(target):
        if make_classifier is not None:
            clf = make_classifier(target)
            record["classifier"].update(clf.to_dict(), trained_on="given (shadow models)")
        else:
            clf = fit_classifier(*defense_training_set([(target, rest_m, rest_n)]), seed=seed)
            record["classifier"].update(clf.to_dict(), trained_on=f"the target: {len(rest_m)} training vs "
                                        f"{len(rest_n)} held-out documents outside the membership sample")
        record["view"] = ApiView.of(target, mode, memguard=clf, seed=seed)
        return record["view"]

    return (mode.name, view), record


def _f(v, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, fmt)


def render_compare_markdown(result: dict) -> str:
    """The comparison as Markdown: the main table, then exposure by insertion count, then output limits."""
    rows = result["rows"]
    lines = ["# Defences compared", "",
             f"Corpus: `{result['corpus']}`; reference: `{result['reference']}`; membership: "
             f"{result['settings']['membership_docs']} members vs as many held-out documents.", "",
             "| model | defence | held-out ppl | secrets extracted (greedy) | controls extracted | memorized samples "
             "| best signal | TPR@1%FPR | AUC | trained eps | audited eps (one-run, 95%) | canary TPR@1%FPR |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = r["canary_audit"] or {}
        lines.append(f"| {r['name']} | {r['defense']} | {_f(r['heldout_perplexity'])} | "
                     f"{r['secrets_extracted']}/{r['secrets_inserted']} | {r['controls_extracted']} | "
                     f"{_f(r['memorized_samples'], 'd') if r['memorized_samples'] is not None else '-'} | "
                     f"{r['best_signal'] or '-'} | {_f(r['best_tpr_at_1pct_fpr'], '.3f')} | "
                     f"{_f(r['best_signal_auc'], '.3f')} | {_f(r['trained_epsilon'])} | "
                     f"{_f(e.get('audited_epsilon'))} | {_f(e.get('tpr_at_fpr', {}).get('0.01', {}).get('tpr'), '.3f')} |")
    attacks = list(dict.fromkeys(k for r in rows for k in r.get("attacks") or {}))
    if attacks:
        n_non = result["settings"]["membership_docs"]
        lines += ["", "## Membership attacks by defence", "",
                  "TPR at 0.1% / 1% FPR (AUC) of each attack, members against as many held-out documents"
                  + (f"; with {n_non} non-members both FPRs are below resolution: the TPR at zero false positives"
                     if n_non < 100 else "") + ".", "",
                  "| attack | " + " | ".join(r["name"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
        for a in attacks:
            cells = []
            for r in rows:
                v = (r.get("attacks") or {}).get(a)
                cells.append(f"{_f(v['tpr_at_0.1pct_fpr'])} / {_f(v['tpr_at_1pct_fpr'])} ({_f(v['auc'])})" if v else "-")
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
    counts = sorted({c for r in rows for c in r["exposure_by_count"]}, key=int)
    lines += ["", "## Mean rank exposure (bits) by insertion count", "",
              "| model | " + " | ".join(f"r={c}" for c in counts) + " |", "|---|" + "---|" * len(counts)]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_f(r["exposure_by_count"].get(c)) for c in counts) + " |")
    if any(r["output_limits"] for r in rows):
        lines += ["", "## Membership signals under API output limits", "",
                  "A signal works when the lower end of its 95% bootstrap AUC interval is above 0.5.", "",
                  "| model | API mode | computable | working signals (AUC) | not computable |", "|---|---|---|---|---|"]
        for r in rows:
            for mode, m in (r["output_limits"] or {}).get("modes", {}).items():
                work = ", ".join(f"{s} ({m['signals'][s]['auc']:.2f})" for s in m["working"]) or "none"
                lines.append(f"| {r['name']} | {mode} | {len(m['computable'])} | {work} | "
                             f"{', '.join(sorted(m['not_computable'])) or '-'} |")
    if any(r.get("query_limits") for r in rows):
        lines += ["", "## Query limits", "",
                  "Queries an attacker needs: to extract the easiest secret inserted >= once (greedy generation from "
                  "the audit's contexts, one query each, or top-k 40 samples for a 1/2 chance; label-only: greedy "
                  "only), and per member found at the best signal's 1% FPR threshold (one query per text, half "
                  "the texts members: 1 / (0.5 x TPR)). A rate limit below the first column would have stopped "
                  "every extraction measured.", "",
                  "| model | API mode | queries to extract (secret) | extractable secrets | best signal | TPR@1%FPR "
                  "| queries per member found |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            for mode, q in (r.get("query_limits") or {}).items():
                lines.append(f"| {r['name']} | {mode} | {_f(q['fewest'], '.0f')}"
                             + (f" ({q['secret']})" if q["secret"] else "")
                             + f" | {q['extractable']}/{q['gated']} | {q['best_signal'] or '-'} | "
                             f"{_f(q['tpr_at_1pct_fpr'], '.3f')} | {_f(q['queries_per_member_found'], '.1f')} |")
    served = [r for r in rows if r.get("serving")]
    if served:
        lines += ["", "Served rows (" + ", ".join(r["name"] for r in served) + "): membership reads the log-probs the "
                  "serving defence returns, and so does the held-out perplexity (utility); extraction and exposure are the "
                  "model's own "
                  "(MemGuard changes returned log-probs, never generated text)."]
    cans = [r for r in rows if r["canary_audit"]]
    if cans:
        c = cans[0]["canary_audit"]
        lines += ["", f"Audited epsilon: one-run lower bound (Steinke, Nasr, Jagielski 2023) from {c['n_canaries']} "
                  f"{c['kind']} canaries planted with probability 1/2 ({c['repeats']}x each), signal {c['signal']}, "
                  "at each model's delta; Gaussian-DP and Clopper-Pearson bounds are in each model's report.json."]
        bad = [r["name"] for r in cans if (r["canary_audit"].get("dp") or {}).get("failed_dp_implementation")]
        if bad:
            lines += ["", f"FAILED DP IMPLEMENTATION: audited epsilon above the trained epsilon for {', '.join(bad)}."]
    else:
        lines += ["", "Audited epsilon: no canaries were planted (`llm-mia canaries plant`, then --canaries / --inclusion)."]
    lines += [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The demo: train the baseline and the defended models on the python-docs corpus, compare them

#: (name, trained model it serves, serving mode) of the demo's serving-time defences: rows after the trained ones.
SERVED_DEFENSES: list[tuple[str, str, str]] = [("memguard", "baseline", "memguard:0.5")]


