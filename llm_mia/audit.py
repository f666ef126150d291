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
from llm_mia.extract import ExtractConfig, extract
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
    extract: ExtractConfig = field(default=None)  # filled from the fields above


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"llm_mia": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _membership(target, reference, members: list[str], heldout: list[str], cfg: AuditConfig) -> dict:
    """ROC metrics of every signal, members (1) against held-out non-members (0)."""
    from llm_mia.metrics import roc_metrics
    from llm_mia.scoring import score

    rng = random.Random(cfg.seed)
    n = min(cfg.membership_docs, len(members), len(heldout))
    if n < 2:
        return {"skipped": "fewer than 2 held-out documents"}
    mem = rng.sample(members, n)
    non = rng.sample(heldout, n)
    res = score(target, mem + non, reference=reference, prepend_bos=True)
    y = [1] * n + [0] * n
    out = {}
    for sig in res.rows[0]["scores"]:
        try:
            out[sig] = roc_metrics(y, [r["scores"][sig] for r in res.rows])
        except LlmMiaError as e:
            out[sig] = {"error": str(e)}
    return {"n_members": n, "n_nonmembers": n, "signals": out}


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
    mem = report.get("membership", {}).get("signals", {})
    if mem:
        aucs = {k: v["auc"] for k, v in mem.items() if "auc" in v}
        if aucs:
            k = max(aucs, key=aucs.get)
            obs.append(f"membership: best signal '{k}' with AUC {aucs[k]:.3f} (members vs held-out documents).")
            weak = [k for k, a in aucs.items() if a < 0.5]
            if weak:
                obs.append(f"signals ranking members below non-members (AUC < 0.5): {', '.join(weak)}.")
    return obs


def run_audit(corpus_dir: str | Path, model_path: str | Path, out_dir: str | Path, *,
              reference_path: str | Path | None = None, cfg: AuditConfig | None = None) -> dict:
    """Audit ``model_path`` against the corpus in ``corpus_dir``; write report.json / report.md.

    Raises:
        LlmMiaError: missing corpus files, corrupt secrets.json, a folder that is not a model.
    """
    from llm_mia.secrets import load_secrets
    from llm_mia.exposure import exposure_by_count, secret_exposure
    from llm_mia.report.plots import exposure_plot
    from llm_mia.report.markdown import render_markdown

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
    target = load_model(str(model_path))
    reference = load_model(str(reference_path)) if reference_path else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    t = time.time()
    ecfg = ExtractConfig(num_samples=cfg.num_samples, strategies=tuple(cfg.strategies), seed=cfg.seed,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, score_batch_size=None,
                         top_n=cfg.top_n, memorized_min_tokens=cfg.memorized_min_tokens, progress=cfg.progress,
                         prompt_source=cfg.prompt_source or str(corpus / "heldout.jsonl"), resume=True)
    ext = extract(target, out / "extract", reference=reference, train_texts=train, secrets=secrets, cfg=ecfg)
    timings["extract_s"] = round(time.time() - t, 1)

    t = time.time()
    from llm_mia.progress import bar

    total = sum(cfg.n_candidates + 1 + (s.space_size if s.space_size <= cfg.exact_limit else 0) for s in secrets)
    with bar("exposure", total, enabled=cfg.progress) as adv:
        exp = secret_exposure(target, secrets, n_references=cfg.n_candidates, exact_limit=cfg.exact_limit,
                              seed=cfg.seed, beams=cfg.beams, batch_size=cfg.batch_size, progress=adv)
    timings["exposure_s"] = round(time.time() - t, 1)
    surfaced = set(ext["secrets_surfaced"])
    for r in exp.rows:
        r["surfaced_in_samples"] = int(r["id"] in surfaced)

    t = time.time()
    membership = _membership(target, reference, train, heldout, cfg)
    timings["membership_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)

    recipe = Path(model_path) / "recipe.json"
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "provenance": {
            "model": str(model_path), "model_weights_sha256": sha256_file(Path(model_path) / "model.safetensors"),
            "reference": str(reference_path) if reference_path else None,
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
    }
    report["observations"] = _observations(report)
    exposure_plot(out / "exposure.png", exp.rows, n_references=cfg.n_candidates)
    io.write_json(out / "report.json", report)
    top = io.read_jsonl(out / "extract" / "top.jsonl")
    io.write_text(out / "report.md", render_markdown(report, top, secrets, show_secrets=cfg.show_secrets))
    return report


#: The demo's corpus: the first 300 k characters of python-docs (~75 k tokens). Measured here: on
#: the full 1.2 MB, 600-1,500 steps of the small preset memorized only secrets inserted 32 times.
DEMO_MAX_CHARS = 300_000


def run_demo(out_dir: str | Path = "audit-demo", *, preset: str = "small", cfg: AuditConfig | None = None,
             max_steps: int | None = None, max_chars: int | None = DEMO_MAX_CHARS, progress: bool = True) -> dict:
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
    report = run_audit(out / "corpus", out / "model", out, reference_path=out / "reference", cfg=cfg)
    report["provenance"]["timings"].update(timings)
    report["provenance"]["timings"]["demo_total_s"] = round(time.time() - t0, 1)
    io.write_json(out / "report.json", report)
    top = io.read_jsonl(out / "extract" / "top.jsonl")
    from llm_mia.report.markdown import render_markdown
    from llm_mia.secrets import load_secrets

    io.write_text(out / "report.md", render_markdown(report, top, load_secrets(out / "corpus" / "secrets.json"),
                                                      show_secrets=(cfg.show_secrets if cfg else False)))
    return report
