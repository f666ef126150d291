"""The demo: the fine-tuning case on the embedded python-docs text, end to end.

A base GPT-2 is pre-trained on a public part of python-docs (or reused from the user's cache), fully
fine-tuned on the private part with planted secrets, and the fine-tuned model is audited with the base
as reference model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from llm_mia.audit.compare import compare_models
from llm_mia.audit.pipeline import AuditConfig, run_audit, write_reports
from llm_mia.audit.policy import gate_report
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.core.version import __version__
from llm_mia.data.corpus import build_corpus, load_source
from llm_mia.data.secrets import load_secrets
from llm_mia.training.config import PRESETS
from llm_mia.training.train import train_model

#: The demo's private corpus: the first 400 k characters of python-docs, half of the documents members
#: (102 vs 102 with the default secrets).
DEMO_MAX_CHARS = 400_000


#: The demo's public text, on which the base model is pre-trained: the next 300 k characters of python-docs.
DEMO_PUBLIC_CHARS = 300_000


#: Optimizer steps of the base pre-training (``preset``, 16 x 128 tokens each) and of the full fine-tune
#: (:data:`DEMO_FINETUNE_PRESET`, 8 x 128 tokens each).
DEMO_BASE_STEPS = 300


DEMO_FINETUNE_STEPS = 1000


#: The fine-tune's preset when the demo's preset is "small" (any other preset fine-tunes with itself).
DEMO_FINETUNE_PRESET = "demo"


#: The audit's sizes when ``run_demo`` gets no ``cfg``, and those the command line leaves unset (passed
#: as None in ``sizes``): 148 s on an idle core.
DEMO_AUDIT = {"num_samples": 200, "n_candidates": 1000, "discoverable_samples": 100}


#: Seconds per unit measured on one idle core (small preset): a base step, a fine-tune step, and the
#: audit with :data:`DEMO_AUDIT` (scaled by its sample counts). Only for the printed estimates.
_SECONDS = {"base_step": 104 / 300, "finetune_step": 173 / 1000, "audit": 148.0}


#: Set to 0 / "off" / "no" to pre-train the demo's base every time instead of reusing the cached one.
CACHE_ENV = "LLM_MIA_DEMO_CACHE"


def _public_corpus(folder: Path, max_chars: int | None) -> None:
    """train.jsonl / heldout.jsonl of the python-docs documents that follow the private corpus's
    (disjoint from it: the same ordered list, the documents after the first ``max_chars``)."""

    private = len(load_source("python-docs", max_chars=max_chars or DEMO_MAX_CHARS))
    public = load_source("python-docs", max_chars=(max_chars or DEMO_MAX_CHARS) + DEMO_PUBLIC_CHARS)[private:]
    if len(public) < 2:
        raise LlmMiaError("the embedded python-docs text has no public part left for the demo's base model")
    folder.mkdir(parents=True, exist_ok=True)
    k = max(1, len(public) // 20)
    io.write_jsonl(folder / "train.jsonl", [{"text": t} for t in public[:-k]])
    io.write_jsonl(folder / "heldout.jsonl", [{"text": t} for t in public[-k:]])


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/llm_mia`` or ``~/.cache/llm_mia``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llm_mia"


def base_key(public: Path, preset: str, steps: int, seed: int) -> str:
    """The cache key of a demo base: a hash of the public text, the preset (name and values), the
    steps, the seed and the llm_mia version."""
    h = hashlib.sha256()
    for name in ("train.jsonl", "heldout.jsonl"):
        h.update((public / name).read_bytes())
    h.update(json.dumps([preset, repr(PRESETS.get(preset)), steps, seed, __version__]).encode())
    return h.hexdigest()[:16]


def _weights_sha256(folder: Path) -> str | None:
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _cached_base_ok(entry: Path, key: str) -> bool:
    """Whether the cache entry is complete and untouched: its demo-cache.json names ``key`` and the
    hash of its weights, which still match; and it has a recipe.json."""
    try:
        stamp = json.loads((entry / "demo-cache.json").read_text())
        json.loads((entry / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("key") == key and stamp.get("weights_sha256") == _weights_sha256(entry)


def _store_base(base: Path, entry: Path, key: str) -> None:
    """Copy the trained ``base`` into the cache as ``entry`` (written aside, then renamed)."""
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    (tmp / "demo-cache.json").write_text(json.dumps({"key": key, "weights_sha256": _weights_sha256(tmp),
                                                     "llm_mia": __version__}, indent=1))
    shutil.rmtree(entry, ignore_errors=True)
    tmp.rename(entry)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def _base(out: Path, *, preset: str, steps: int, seed: int, cache: bool, progress: bool) -> str:
    """Train ``out/base`` on ``out/public``, or copy it from the cache; returns "reused" or "trained"."""
    key = base_key(out / "public", preset, steps, seed)
    entry = cache_root() / f"demo-base-{key}"
    if cache and entry.exists():
        if _cached_base_ok(entry, key):
            shutil.rmtree(out / "base", ignore_errors=True)
            shutil.copytree(entry, out / "base", ignore=shutil.ignore_patterns("demo-cache.json"))
            saves = _SECONDS["base_step"] * steps if preset == "small" else None
            _say(progress, f"base: reused from {entry}" + (f" (saves ~{saves:.0f} s)" if saves else ""))
            return "reused"
        _say(progress, f"base: the cache entry {entry} is incomplete or modified; pre-training it again")
        shutil.rmtree(entry, ignore_errors=True)
    eta = f", expected ~{_SECONDS['base_step'] * steps:.0f} s on an idle core" if preset == "small" else ""
    _say(progress, f"base: pre-training {steps} steps of '{preset}' on public/{eta}")
    train_model(out / "public", out / "base", preset=preset, max_steps=steps, seed=seed, progress=progress)
    if cache:
        try:
            _store_base(out / "base", entry, key)
            _say(progress, f"base: cached in {entry} (delete it or set {CACHE_ENV}=0 to pre-train again)")
        except OSError as e:
            _say(progress, f"base: not cached ({e})")
    return "trained"


def demo_audit_config(cfg: AuditConfig | None, sizes: dict[str, int | None] | None = None) -> AuditConfig:
    """The demo's audit settings: ``cfg`` (None: ``AuditConfig(**DEMO_AUDIT)``) with the sizes named in
    ``sizes`` (keys of :data:`DEMO_AUDIT`, as ``llm-mia demo`` passes them) set: a value of None takes the
    demo's value, an int is the user's and kept as is. Sizes not named keep ``cfg``'s.

    Raises:
        LlmMiaError: a key of ``sizes`` that is not one of :data:`DEMO_AUDIT`.
    """
    bad = sorted(set(sizes or {}) - set(DEMO_AUDIT))
    if bad:
        raise LlmMiaError(f"demo sizes: unknown setting(s) {', '.join(bad)}; expected {', '.join(DEMO_AUDIT)}")
    cfg = AuditConfig(**DEMO_AUDIT) if cfg is None else cfg
    return dataclasses.replace(cfg, **{k: DEMO_AUDIT[k] if v is None else v for k, v in (sizes or {}).items()})


#: The policy the demo gates its report with, and the command it prints to reproduce the verdict.
DEMO_POLICY = Path("examples/policy.toml")


def demo_gate(out: Path, policy_path: str | Path | None = DEMO_POLICY) -> tuple[str, int | None, str]:
    """Run ``llm-mia gate OUT/report.json --policy POLICY`` in-process (:func:`gate_report`).

    Returns ``(line, exit_code, command)``: the verdict line and the exit code the command would give
    (0 pass, 1 fail, 2 error, 3 inconclusive), or a line saying why it was not run and None when
    ``policy_path`` is None or not a file. A limit the report cannot answer gives its error line and 2;
    nothing is raised, so the demo's own exit code does not depend on the verdict.
    """
    command = f"llm-mia gate {out / 'report.json'} --policy {policy_path}"
    if policy_path is None or not Path(policy_path).is_file():
        return f"no policy file {policy_path} here (run from the repository root)", None, command
    try:
        verdict = gate_report(out / "report.json", policy_path)
    except LlmMiaError as e:
        v = getattr(e, "verdict", None)
        return (v.line if v is not None else f"ERROR: {e}"), (v.exit_code if v is not None else 2), command
    return verdict.line, verdict.exit_code, command


#: The defended twin's defence (``llm-mia demo --defended``): ``train_model`` keyword arguments. Dedup
#: (Kandpal et al. 2022, "Deduplicating Training Data Mitigates Privacy Risks", sec. 5) drops every
#: repeat of a span of ``dedup_min_chars`` characters, so a secret inserted 32 times is trained on once,
#: at no training cost; DP-SGD on this CPU costs several times the fine-tune's time.
DEMO_DEFENSE = ("dedup", {"defense": "dedup"})


def _defended_twin(out: Path, *, cfg: AuditConfig, preset: str, steps: int, policy, progress: bool) -> dict:
    """Fine-tune ``base/`` on ``corpus/`` again, the same way but with :data:`DEMO_DEFENSE`, into
    ``model-<defence>/``; audit both models with the base as reference (:func:`compare_models`, no API
    output-limit runs) into ``compare/<name>/``; write ``compare.md`` (also copied to ``out``) and
    return compare.json's dict (rows ``undefended`` and the defence, each with ``heldout_perplexity``)."""
    name, kw = DEMO_DEFENSE
    _say(progress, f"defended: fine-tuning base/ with the {name} defence, {steps} steps of '{preset}', then "
         "auditing both models")
    train_model(out / "corpus", out / f"model-{name}", base=str(out / "base"), preset=preset, max_steps=steps,
                seed=cfg.seed, progress=progress, **kw)
    result = compare_models(out / "corpus", [("undefended", out / "model"), (name, out / f"model-{name}")],
                            out / "compare", reference_path=out / "base", cfg=cfg, policy=policy, api_modes=(),
                            progress=progress)
    shutil.copyfile(out / "compare" / "compare.md", out / "compare.md")
    def num(v, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    for r in result["rows"]:
        _say(progress, f"defended: {r['name']}: held-out perplexity {num(r['heldout_perplexity'], '.2f')}, secrets "
             f"extracted {r['secrets_extracted']}/{r['secrets_inserted']}, memorized samples "
             f"{r['memorized_samples']}, best TPR at 1% FPR {num(r['best_tpr_at_1pct_fpr'], '.3f')} "
             f"(AUC {num(r['best_signal_auc'], '.3f')})")
    _say(progress, f"defended: side by side in {out / 'compare.md'}")
    return result


def _audit_eta(cfg: AuditConfig) -> float:
    """The audit's expected seconds on an idle core: the measured 148 s scaled by the sample counts."""
    scale = sum(getattr(cfg, k) / v for k, v in DEMO_AUDIT.items()) / len(DEMO_AUDIT)
    return _SECONDS["audit"] * scale


def stage_etas(*, preset: str, base_steps: int, ft_steps: int, cfg: AuditConfig, base_cached: bool,
               defended: bool) -> dict[str, float] | None:
    """Expected seconds of each demo stage on one idle core (:data:`_SECONDS`), in run order: ``base``
    (0 when ``base_cached``), ``fine-tune``, ``audit`` (:func:`_audit_eta`) and, when ``defended``,
    ``defended`` (a fine-tune and two audits). None for a preset other than "small" (not measured)."""
    if preset != "small":
        return None
    etas = {"base": 0.0 if base_cached else _SECONDS["base_step"] * base_steps,
            "fine-tune": _SECONDS["finetune_step"] * ft_steps, "audit": _audit_eta(cfg)}
    if defended:
        etas["defended"] = _SECONDS["finetune_step"] * ft_steps + 2 * _audit_eta(cfg)
    return etas


def _eta_text(etas: dict[str, float] | None, stage: str) -> str:
    """``, expected ~S s, ~L s left in all (idle core)``: the stage's estimate and the work left from it on."""
    if not etas:
        return ""
    keys = list(etas)
    left = sum(etas[k] for k in keys[keys.index(stage):])
    return f", expected ~{etas[stage]:.0f} s, ~{left:.0f} s left in all (idle core)"


def _use_cache(cache: bool | None) -> bool:
    if cache is not None:
        return cache
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "off", "no", "false")


def run_demo(out_dir: str | Path = "audit-demo", *, preset: str = "small", cfg: AuditConfig | None = None,
             max_steps: int | None = None, max_chars: int | None = DEMO_MAX_CHARS, progress: bool = True,
             policy=None, cache: bool | None = None, sizes: dict[str, int | None] | None = None,
             gate_policy: str | Path | None = DEMO_POLICY, defended: bool = False) -> dict:
    """The fine-tuning case on the embedded python-docs text: a base model pre-trained on a public
    part, fully fine-tuned on the private part (with the planted secrets), the fine-tuned model
    audited with the base as its reference model.

    Steps: ``corpus/`` (the first ``max_chars`` characters, half of the documents members, the planted
    secrets: :func:`llm_mia.data.corpus.build_corpus`); ``public/`` (the next :data:`DEMO_PUBLIC_CHARS`
    characters); ``base/`` (trained from scratch on ``public/``, :data:`DEMO_BASE_STEPS` steps of
    ``preset``, or copied from the cache, see below); ``model/`` (every weight of ``base/`` fine-tuned
    on ``corpus/train.jsonl``, :data:`DEMO_FINETUNE_STEPS` steps of :data:`DEMO_FINETUNE_PRESET`, "small"
    with 8 blocks a step); then :func:`run_audit` of ``model/`` with ``base/`` as reference, with
    :data:`DEMO_AUDIT` (``sizes``: :func:`demo_audit_config`, None values take the demo's).
    ``max_steps`` sets the fine-tune's steps (the base gets half). Last, the report is gated with
    ``gate_policy`` (:func:`demo_gate`, default ``examples/policy.toml``) and the verdict line, its exit
    code and the ``llm-mia gate`` command are printed; the verdict never raises. ``defended``: then the
    defended twin (:func:`_defended_twin`): the same fine-tune with :data:`DEMO_DEFENSE`, both models
    audited side by side into ``compare/`` and ``compare.md``.

    Why a full fine-tune and not LoRA (measured on one idle core, 150 steps, batch 16, train /
    held-out loss): LoRA r16 at lr 3e-3 (262 k trainable) 5.80 / 5.88; r16 at 1e-2 5.70 / 5.86; r16
    at 3e-2 stalls at 6.20; r64 at 1e-2 5.85 / 5.96; r16 plus the output head at 1e-2 4.73 / 5.66;
    full at 3e-3 4.26 / 5.46. LoRA on ``c_attn``, ``c_proj``, ``c_fc`` cannot touch GPT-2's tied
    embedding / output head (1.05 M of 4.24 M parameters) nor the LayerNorms, and a full fine-tune
    costs no more per token here (5.9 k vs 5.3 k tokens/s). At equal wall time (300 steps) LoRA
    extracted 0 of 8 secrets with best membership AUC 0.689; the full fine-tune reached AUC 1.000.
    The old LoRA demo took 27-49 minutes and found nothing.

    The base is cached in ``$XDG_CACHE_HOME/llm_mia/demo-base-<hash>`` (``~/.cache`` without it; the
    hash covers the public text, the preset, the steps, the seed and the llm_mia version) and reused
    by the next run after checking its recipe.json and weights hash (a bad entry is pre-trained again).
    ``cache=False``, or the environment variable ``LLM_MIA_DEMO_CACHE=0``, turns the cache off.
    """
    out, t0 = Path(out_dir), time.time()
    cfg = demo_audit_config(cfg, sizes)
    seed, use_cache = cfg.seed, _use_cache(cache)
    ft_steps = max_steps or DEMO_FINETUNE_STEPS
    base_steps = max(10, max_steps // 2) if max_steps else DEMO_BASE_STEPS
    ft_preset = DEMO_FINETUNE_PRESET if preset == "small" else preset
    build_corpus("python-docs", out / "corpus", seed=seed, max_chars=max_chars, heldout_fraction=0.5)
    _public_corpus(out / "public", max_chars)
    timings = {"corpus_s": round(time.time() - t0, 1)}
    cached = use_cache and (cache_root() / f"demo-base-{base_key(out / 'public', preset, base_steps, seed)}").is_dir()
    etas = stage_etas(preset=preset, base_steps=base_steps, ft_steps=ft_steps, cfg=cfg, base_cached=cached,
                      defended=defended)
    _say(progress and etas is not None, "demo: expected ~{:.0f} s in all on an idle core ({})".format(
        sum((etas or {}).values()), ", ".join(f"{k} ~{v:.0f} s" for k, v in (etas or {}).items())))
    t = time.time()
    base_from = _base(out, preset=preset, steps=base_steps, seed=seed, cache=use_cache, progress=progress)
    timings["train_base_s"] = round(time.time() - t, 1)
    _say(progress, f"model: fully fine-tuning base/ for {ft_steps} steps of '{ft_preset}'"
         + _eta_text(etas, "fine-tune"))
    t = time.time()
    train_model(out / "corpus", out / "model", base=str(out / "base"), preset=ft_preset, max_steps=ft_steps,
                seed=seed, progress=progress)
    timings["train_model_s"] = round(time.time() - t, 1)
    _say(progress, "audit: model/ with base/ as reference" + _eta_text(etas, "audit"))
    t = time.time()
    report = run_audit(out / "corpus", out / "model", out, reference_path=str(out / "base"), cfg=cfg, policy=policy)
    timings["audit_s"] = round(time.time() - t, 1)
    report["provenance"]["timings"].update(timings)
    report["provenance"]["timings"]["demo_total_s"] = round(time.time() - t0, 1)
    report["provenance"]["demo_base"] = base_from
    _say(progress, "demo: done in {demo_total_s:.0f} s (corpus {corpus_s:.0f} s, base {train_base_s:.0f} s, "
         "fine-tune {train_model_s:.0f} s, audit {audit_s:.0f} s)".format(**report["provenance"]["timings"]))
    report = write_reports(out, report, load_secrets(out / "corpus" / "secrets.json"), show_secrets=cfg.show_secrets)
    line, code, command = demo_gate(out, gate_policy)
    _say(progress, f"gate: {line}" + ("" if code is None else f" (exit {code})"))
    _say(progress, f"gate: reproduce with `{command}`")
    if defended:
        _say(progress, "defended: the twin with the dedup defence" + _eta_text(etas, "defended"))
        _defended_twin(out, cfg=cfg, preset=ft_preset, steps=ft_steps, policy=policy, progress=progress)
    return report
