"""Defences measured side by side: ``llm-mia defenses`` (train each defence, audit each, one table).

Each defended model is trained on the same corpus with the same canaries, audited by
:func:`llm_mia.audit.compare.compare_models` with shadow-model attacks and MemGuard serving.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_mia.audit.adaptive import adaptive_rows, label_only, vulnerable_summary
from llm_mia.audit.compare import (
    SERVED_DEFENSES,
    compare_models,
    render_compare_markdown,
)
from llm_mia.audit.dp_matched import heldout_ppl_of, match_dp_utility
from llm_mia.audit.stages import AuditConfig, strip_planted
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.canaries import make_canaries, plant_canaries
from llm_mia.data.corpus import build_corpus
from llm_mia.data.secrets import load_secrets
from llm_mia.membership.shadow import train_shadows
from llm_mia.serving.memguard import classifier_from_shadows
from llm_mia.training.train import train_model

#: (name, train_model keyword arguments) of the demo's models; the baseline first. adv-reg's reference
#: set and SELENA's sub-model steps are filled in by :func:`run_compare_defenses`.
DEMO_DEFENSES: list[tuple[str, dict]] = [
    ("baseline", {}),
    ("dp-eps1", {"defense": "dp", "epsilon": 1.0, "delta": 1e-5}),
    ("dedup", {"defense": "dedup"}),
    ("regularised", {"weight_decay": 0.1, "dropout": 0.1}),
    ("early-stop", {"early_stopping": 3}),
    ("selena", {"defense": "selena", "selena_k": 4, "selena_l": 2}),
    ("adv-reg", {"defense": "adv-reg", "adv_lambda": 1.0}),
    ("goldfish", {"defense": "goldfish", "goldfish_k": 4, "goldfish_h": 13}),
]


#: (number, insertions each) of the random canaries planted with probability 1/2 for the audited epsilon.
DEMO_CANARIES, QUICK_CANARIES = (1000, 4), (40, 2)


#: The ``--quick`` subset (tests): the new defences and one of each older kind (weight decay and early
#: stopping are plain training options, tested with the trainer).
QUICK_DEFENSES: list[tuple[str, dict]] = [(n, kw) for n, kw in DEMO_DEFENSES if n not in ("regularised", "early-stop")]


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of ``llm-mia defenses``: preset, training steps (plain, DP, each SELENA sub-model,
    each shadow model), shadow models, corpus, held-out documents reserved for the defenders, audit."""

    preset: str
    steps: int
    dp_steps: int
    selena_sub_steps: int
    n_shadows: int
    shadow_steps: int
    max_chars: int
    repeats: tuple[int, ...]
    heldout_fraction: float
    defender_docs: int
    limit_docs: int
    n_boot: int
    adaptive_shadows: int = 4  # shadow models per defence for the adaptive attacks (llm_mia.audit.adaptive)
    dp_match_clips: tuple[float, ...] = (1.0, 0.1)  # clipping norms the dp-matched search tries
    dp_match_runs: int = 5  # trainings of the dp-matched search (:func:`llm_mia.audit.dp_matched.match_dp_utility`)


#: Full mode, sized for about 40 minutes on one thread of the shared 2-core CPU from measured costs
#: (docs/defenses.md: the run took 46 minutes at a load of 2-3): the ``mini`` preset (a step of 16 x 128 tokens ~0.21 s; ``small``
#: costs ~1 s there, and about 15 model-trainings are needed); plain models see the ~85 k training
#: tokens ~12 times (500 steps; measured on the baseline: 400 steps extract 2 of the 8 secrets
#: inserted >= 16 times, 700 steps 8 of 8); each shadow model trains on half the population for half
#: the steps (as many passes over its data); a DP step costs ~2.5 plain ones; SELENA's 4 sub-models
#: each train on half the documents, and its distillation runs them too.
DEMO_PLAN = DemoPlan(preset="mini", steps=500, dp_steps=180, selena_sub_steps=250, n_shadows=8, shadow_steps=250,
                     max_chars=300_000, repeats=(1, 2, 4, 8, 16, 32), heldout_fraction=0.3, defender_docs=16,
                     limit_docs=25, n_boot=1000)


QUICK_PLAN = DemoPlan(preset="tiny", steps=40, dp_steps=40, selena_sub_steps=20, n_shadows=4, shadow_steps=20,
                      max_chars=40_000, repeats=(1, 4, 16), heldout_fraction=0.5, defender_docs=3, limit_docs=6,
                      n_boot=200, adaptive_shadows=2, dp_match_clips=(1.0,),
                      dp_match_runs=4)


@dataclass(frozen=True)
class DemoCorpus:
    """The demo's data (:func:`_demo_corpus`).

    Attributes:
        corpus: the audited corpus folder (train.jsonl without canaries, heldout.jsonl less the
            defenders' documents, secrets.json).
        train_corpus: the folder the models train on (train.jsonl with the canaries planted).
        defender_set: the defenders' held-out documents (adversarial regularisation's reference set).
        canaries: (canaries.jsonl, inclusion.json) of the planted canaries.
    """

    corpus: Path
    train_corpus: Path
    defender_set: Path
    canaries: tuple[Path, Path]


@dataclass
class DemoModels:
    """The demo's trained models (:func:`_train_demo_models`).

    Attributes:
        models: (name, folder) of each defended model in :data:`DEMO_DEFENSES` (or :data:`QUICK_DEFENSES`)
            order, then (name, folder, serving mode) of :data:`SERVED_DEFENSES`: :func:`compare_models`'s ``models``.
        reference: the reference model's folder.
        shadow: the shadow models' folder.
        timings: seconds per training, rounded to 0.1 s: ``train_<name>_s`` per model (``train_dp-matched_s``:
            its whole search), ``train_reference_s``, ``train_shadows_s``, in that order.
        dp_matched: the ``dp-matched`` search (:class:`~llm_mia.audit.dp_matched.DpMatch` as a dict).
    """

    models: list[tuple]
    reference: Path
    shadow: Path
    timings: dict[str, float]
    dp_matched: dict | None = None


def run_compare_defenses(out_dir: str | Path = "compare-demo", *, quick: bool = False, seed: int = 0,
                         progress: bool = True, plan: DemoPlan | None = None) -> dict:
    """``llm-mia defenses``: corpus, reference, baseline and defended models, shadow
    models, comparison.

    Steps: the python-docs corpus (``plan.max_chars``); ``plan.defender_docs`` held-out documents move
    to ``out/defender/reference.jsonl`` (adversarial regularisation's reference set: never an audit
    non-member); random canaries planted into the training copy; the models of :data:`DEMO_DEFENSES`
    (the baseline's tokenizer for all), a reference model, ``plan.n_shadows`` shadow models
    (:func:`llm_mia.membership.shadow.train_shadows`, trained once for all compared models on random halves of
    the audit's members and non-members with planted sentences removed), then
    :func:`compare_models` with the shadow attacks (LiRA, RMIA, Shokri) in every audit and the
    baseline served through MemGuard (:data:`SERVED_DEFENSES`; its classifier fitted on the shadow
    models, :func:`llm_mia.serving.memguard.classifier_from_shadows`). ``quick`` (:data:`QUICK_PLAN`, tests):
    the tiny preset, a check of the machinery, not a measurement; the full mode is :data:`DEMO_PLAN`.
    ``timings`` in compare.json: seconds per part.

    Returns:
        compare.json's dict (:func:`compare_models`'s, its ``settings`` with ``quick``, ``plan`` and ``timings``).

    Raises:
        LlmMiaError: a corpus with too few held-out documents to reserve the defenders' ones; whatever
            :func:`compare_models` raises.
    """
    plan = plan or (QUICK_PLAN if quick else DEMO_PLAN)
    out = Path(out_dir)
    t0 = time.time()
    cfg = _demo_audit_config(quick, seed=seed, progress=progress)
    corpus = _demo_corpus(out, plan, quick, seed=seed)
    trained = _train_demo_models(out, corpus, plan, quick, seed=seed, progress=progress)
    timings = trained.timings
    t = time.time()
    result = compare_models(corpus.corpus, trained.models, out, reference_path=trained.reference, cfg=cfg,
                            limit_docs=plan.limit_docs, n_boot=plan.n_boot, progress=progress, canaries=corpus.canaries,
                            shadow_dir=trained.shadow,
                            memguard_classifier=lambda target: classifier_from_shadows(trained.shadow, max_texts=20,
                                                                                      seed=seed))
    timings["audits_s"] = round(time.time() - t, 1)
    t = time.time()
    _add_adaptive(result, out, corpus, trained, plan, cfg, quick, seed=seed, progress=progress)
    timings["adaptive_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)
    result["settings"].update({"quick": quick, "plan": asdict(plan), "timings": timings,
                               "dp_matched": trained.dp_matched})
    io.write_json(out / "compare.json", result)
    io.write_text(out / "compare.md", render_compare_markdown(result))
    return result


def _add_adaptive(result: dict, out: Path, corpus: DemoCorpus, trained: DemoModels, plan: DemoPlan,
                  cfg: AuditConfig, quick: bool, *, seed: int, progress: bool) -> None:
    """Each row's ``adaptive_attacks`` (defence-aware shadows, MemGuard's label-only view) and
    ``vulnerable`` (the canaries beside the population): :mod:`llm_mia.audit.adaptive`."""
    kws = dict(QUICK_DEFENSES if quick else DEMO_DEFENSES)
    models = [(n, out / "models" / n, _defense_kw(kws[n], corpus, plan)) for n, *_ in trained.models if n in kws]
    adaptive = adaptive_rows(out, corpus=corpus.corpus, models=models, population=out / "shadow-population.jsonl",
                             reference=trained.reference, tokenizer_from=str(out / "models" / "baseline"),
                             preset=plan.preset, n_shadows=plan.adaptive_shadows, shadow_steps=plan.shadow_steps,
                             steps=plan.steps, cfg=cfg, limit_docs=plan.limit_docs, n_boot=plan.n_boot, seed=seed,
                             progress=progress, canaries=corpus.canaries)
    by_name = {r["name"]: r for r in result["rows"]}
    served_base = {name: base for name, base, _ in SERVED_DEFENSES}
    for row in result["rows"]:
        row["vulnerable"] = vulnerable_summary(row)
        if row["name"] in adaptive:
            row["adaptive_attacks"] = adaptive[row["name"]]
        elif (row.get("serving") or "").startswith("memguard"):  # the argmax is its model's: that row's label-only run
            row["adaptive_attacks"] = {"trained_with": "label-only view (argmax: what MemGuard cannot perturb)",
                                       "label_only": label_only(by_name.get(served_base.get(row["name"]), {}))}
        else:
            row["adaptive_attacks"] = None


def _defense_kw(kw: dict, corpus: DemoCorpus, plan: DemoPlan) -> dict:
    """A defence's train_model keywords with the demo's reference set and SELENA sub-model steps filled in."""
    kw = dict(kw)
    if kw.get("defense") == "adv-reg":
        kw["reference_set"] = str(corpus.defender_set)
    if kw.get("defense") == "selena":
        kw["selena_sub_steps"] = plan.selena_sub_steps
    return kw


def _demo_audit_config(quick: bool, *, seed: int, progress: bool) -> AuditConfig:
    """The audit settings of every compared model: a check of the machinery (``quick``) or the measured run."""
    if quick:
        return AuditConfig(num_samples=4, strategies=("top-k",), n_candidates=20, exact_limit=0, beams=1,
                           membership_docs=10, top_n=4, max_new_tokens=16, discoverable_samples=10, seed=seed,
                           progress=False)
    return AuditConfig(num_samples=50, strategies=("top-k", "temperature-decay"), n_candidates=500,
                       exact_limit=10_000, membership_docs=200, discoverable_samples=100, seed=seed, progress=progress)


def _demo_corpus(out: Path, plan: DemoPlan, quick: bool, *, seed: int) -> DemoCorpus:
    """Build the python-docs corpus into ``out/corpus``, reserve the defenders' documents
    (:func:`_reserve_defender_set`) and plant the canaries (:func:`_plant_demo_canaries`)."""
    build_corpus("python-docs", out / "corpus", seed=seed, max_chars=plan.max_chars, repeats=plan.repeats,
                 heldout_fraction=plan.heldout_fraction)
    reference_set = _reserve_defender_set(out / "corpus", out / "defender", plan.defender_docs, seed=seed)
    train_corpus, canaries = _plant_demo_canaries(out, *(QUICK_CANARIES if quick else DEMO_CANARIES), seed=seed)
    return DemoCorpus(corpus=out / "corpus", train_corpus=train_corpus, defender_set=reference_set, canaries=canaries)


def _train_demo_models(out: Path, corpus: DemoCorpus, plan: DemoPlan, quick: bool, *, seed: int,
                       progress: bool) -> DemoModels:
    """Train the defended models (the baseline's tokenizer for all), the reference model (on the held-out
    documents, steps scaled by their size) and the shadow models (on the members, planted sentences
    removed, and the non-members) into ``out/models`` and ``out/shadow``."""
    timings = {}
    models = []
    for name, kw in (QUICK_DEFENSES if quick else DEMO_DEFENSES):
        t = time.time()
        kw = _defense_kw(kw, corpus, plan)
        n_steps = plan.dp_steps if kw.get("defense") == "dp" else plan.steps
        tok = None if name == "baseline" else str(out / "models" / "baseline")
        train_model(corpus.train_corpus, out / "models" / name, preset=plan.preset, max_steps=n_steps, seed=seed,
                    tokenizer_from=tok, progress=progress, **kw)
        timings[f"train_{name}_s"] = round(time.time() - t, 1)
        models.append((name, out / "models" / name))
    t = time.time()
    match = _train_dp_matched(out, corpus, plan, [n for n, _ in models], seed=seed, progress=progress)
    timings["train_dp-matched_s"] = round(time.time() - t, 1)
    models.append(("dp-matched", out / "models" / "dp-matched"))
    models += [(name, out / "models" / base, mode) for name, base, mode in SERVED_DEFENSES]
    t = time.time()
    ratio = (out / "corpus" / "heldout.jsonl").stat().st_size / max(1, (out / "corpus" / "train.jsonl").stat().st_size)
    train_model(corpus.train_corpus, out / "models" / "reference", preset=plan.preset, reference=True, seed=seed,
                tokenizer_from=str(out / "models" / "baseline"), max_steps=max(10, round(plan.steps * ratio)),
                progress=progress)
    timings["train_reference_s"] = round(time.time() - t, 1)
    t = time.time()
    secrets = load_secrets(out / "corpus" / "secrets.json")
    population = [{"text": strip_planted(r["text"], secrets)} for r in io.read_jsonl(out / "corpus" / "train.jsonl")]
    population += list(io.read_jsonl(out / "corpus" / "heldout.jsonl"))
    io.write_jsonl(out / "shadow-population.jsonl", population)
    train_shadows(out / "shadow-population.jsonl", out / "shadow", n_models=plan.n_shadows, preset=plan.preset,
                  tokenizer_from=str(out / "models" / "baseline"), max_steps=plan.shadow_steps, seed=seed,
                  progress=progress)
    timings["train_shadows_s"] = round(time.time() - t, 1)
    return DemoModels(models=models, reference=out / "models" / "reference", shadow=out / "shadow", timings=timings,
                      dp_matched=match)


def _train_dp_matched(out: Path, corpus: DemoCorpus, plan: DemoPlan, names: list[str], *, seed: int,
                      progress: bool) -> dict:
    """The ``dp-matched`` model: DP-SGD tuned to the held-out perplexity of the best non-DP defence
    other than the baseline (:func:`llm_mia.audit.dp_matched.match_dp_utility`); returns its
    :class:`~llm_mia.audit.dp_matched.DpMatch` as a dict."""
    recipes = {n: io.read_json(out / "models" / n / "recipe.json") for n in names if n != "baseline"}
    heuristic = {n: heldout_ppl_of(out / "models" / n) for n, r in recipes.items() if r.get("defense") != "dp"}
    if not heuristic:
        raise LlmMiaError("the defence comparison has no non-DP defence to match DP-SGD's utility to")
    target = min(heuristic, key=heuristic.get)
    m = match_dp_utility(corpus.train_corpus, out / "models" / "dp-matched", target_name=target,
                         target_perplexity=heuristic[target], max_runs=plan.dp_match_runs,
                         clips=plan.dp_match_clips, preset=plan.preset,
                         max_steps=plan.dp_steps, seed=seed, tokenizer_from=str(out / "models" / "baseline"),
                         progress=progress)
    return asdict(m)


def _reserve_defender_set(corpus: Path, out: Path, n: int, *, seed: int) -> Path:
    """Move ``n`` seeded held-out documents of ``corpus`` to ``out/reference.jsonl``: the defenders' own
    non-member texts (adversarial regularisation's reference set, Nasr et al. 2018), never among the
    audit's non-members. ``corpus/heldout.jsonl`` keeps the rest; corpus.json's held-out count,
    characters and sha256 follow. Returns the reference file."""

    rows = list(io.read_jsonl(corpus / "heldout.jsonl"))
    if len(rows) < n + 2:
        raise LlmMiaError(f"the demo corpus has {len(rows)} held-out documents: too few to reserve {n} for the defences")
    pick = set(random.Random(seed).sample(range(len(rows)), n))
    io.write_jsonl(out / "reference.jsonl", [r for i, r in enumerate(rows) if i in pick])
    keep = [r for i, r in enumerate(rows) if i not in pick]
    io.write_jsonl(corpus / "heldout.jsonl", keep)
    meta = io.read_json(corpus / "corpus.json")
    meta.update(n_heldout=len(keep), heldout_chars=sum(len(r["text"]) for r in keep),
                defender_reference={"n": n, "file": str(out / "reference.jsonl"), "seed": seed})
    meta["sha256"]["heldout.jsonl"] = io.sha256_file(corpus / "heldout.jsonl")
    io.write_json(corpus / "corpus.json", meta)
    return out / "reference.jsonl"


def _plant_demo_canaries(out: Path, n: int, repeats: int, *, seed: int) -> tuple[Path, tuple[Path, Path]]:
    """Random canaries planted (probability 1/2, ``repeats`` copies) into a copy of the corpus that the
    demo models train on, ``out/canaries/corpus`` (train.jsonl planted; heldout.jsonl, secrets.json
    as they are). The audits read the unplanted ``out/corpus``, so members drawn for the membership
    evaluation are the user's documents, never canary rows. Returns (that folder, (canaries.jsonl,
    inclusion.json))."""

    d = out / "canaries"
    if d.exists():
        shutil.rmtree(d)  # our own folder of an earlier demo run: planting refuses to overwrite
    io.write_jsonl(d / "canaries.jsonl", make_canaries("random", n, seed=seed))
    plant_canaries(out / "corpus" / "train.jsonl", d / "canaries.jsonl", d / "plant", repeats=repeats, seed=seed)
    (d / "corpus").mkdir()
    shutil.copy(d / "plant" / "train.jsonl", d / "corpus" / "train.jsonl")
    for f in ("heldout.jsonl", "secrets.json"):
        shutil.copy(out / "corpus" / f, d / "corpus" / f)
    return d / "corpus", (d / "canaries.jsonl", d / "plant" / "inclusion.json")
