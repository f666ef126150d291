"""Adaptive attacks on each defence (Aerni, Zhang, Tramèr 2024, arXiv 2404.17399, its evaluation protocol): the
attacker knows the defence and trains its shadow models with it.

For each training-time defence of the comparison that changes the training objective (SELENA,
adversarial regularisation, Goldfish), a set of shadow models is trained on the same population
with that defence (:func:`llm_mia.membership.shadow.train_shadows` ``train_options``) and the
defended model is audited again with those shadows; its row gets ``adaptive_attacks``: the
shadow-model attacks (LiRA online/offline, RMIA online/offline, Shokri), each ``auc``,
``tpr_at_0.1pct_fpr``, ``tpr_at_1pct_fpr``, beside the population figures of ``attacks`` (shadows
trained without the defence). MemGuard (a serving defence) perturbs the returned probabilities but
never their argmax: its adaptive attack is the label-only view, the ``label-only`` output-limit run
of the model it serves, which reads only the argmax (what it cannot perturb).

The most vulnerable records: each row's ``canary_audit`` (random canaries planted in the training
data, audited as the most exposed records) is copied beside it as ``vulnerable``: the canaries'
TPR at 1% FPR against the best population attack's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llm_mia.audit.compare import compare_models
from llm_mia.membership.shadow import train_shadows

__all__ = ["ADAPTIVE_DEFENSES", "SHADOW_ATTACKS", "adaptive_rows", "label_only", "vulnerable_summary"]

#: The defences (recipe.json ``defense``) whose shadows are trained with the defence.
ADAPTIVE_DEFENSES = ("selena", "adv-reg", "goldfish")
SHADOW_ATTACKS = ("lira_online", "lira_offline", "rmia_online", "rmia_offline", "shokri")


def _shadow_options(kw: dict, *, steps: int, shadow_steps: int) -> dict:
    """The defence's train_model keywords for a shadow: SELENA's sub-model steps scaled by shadow/target steps."""
    opts = dict(kw)
    if opts.get("selena_sub_steps"):
        opts["selena_sub_steps"] = max(1, round(opts["selena_sub_steps"] * shadow_steps / steps))
    return opts


def adaptive_rows(out: Path, *, corpus: Path, models: list[tuple[str, Path, dict]], population: Path, reference: Path,
                  tokenizer_from: str, preset: str, n_shadows: int, shadow_steps: int, steps: int, cfg,
                  limit_docs: int, n_boot: int, seed: int, progress: bool, canaries=None) -> dict[str, dict]:
    """Train defence-aware shadows for each (name, folder, train_model keywords) of ``models`` whose
    ``defense`` is in :data:`ADAPTIVE_DEFENSES` and audit it with them (``out/adaptive/<name>``).
    ``canaries``: (canaries.jsonl, inclusion.json) planted in the models' training file, as in the
    main comparison (the audit then accepts the planted file as the training record).

    Returns:
        name -> {"shadows": the shadow folder, "attacks": the shadow attacks' figures}.
    """
    res = {}
    for name, folder, kw in models:
        if kw.get("defense") not in ADAPTIVE_DEFENSES:
            continue
        d = out / "adaptive" / name
        if d.exists():
            shutil.rmtree(d)
        train_shadows(population, d / "shadow", n_models=n_shadows, preset=preset, tokenizer_from=tokenizer_from,
                      max_steps=shadow_steps, seed=seed, progress=progress,
                      train_options=_shadow_options(kw, steps=steps, shadow_steps=shadow_steps))
        r = compare_models(corpus, [(name, folder)], d / "audit", reference_path=reference, cfg=cfg,
                           api_modes=("full",), limit_docs=limit_docs, n_boot=n_boot, progress=progress,
                           shadow_dir=d / "shadow", canaries=canaries)
        attacks = r["rows"][0]["attacks"]
        res[name] = {"shadows": str(d / "shadow"), "trained_with": kw["defense"],
                     "attacks": {k: attacks[k] for k in SHADOW_ATTACKS if k in attacks}}
    return res


def vulnerable_summary(row: dict) -> dict | None:
    """The canaries' (most vulnerable records') TPR at 1% FPR beside the population's best attack, or None
    without a canary audit."""
    can = row.get("canary_audit")
    if not can:
        return None
    tpr = can.get("tpr_at_fpr") or {}
    return {"canary_auc": can.get("auc"), "canary_tpr_at_1pct_fpr": (tpr.get("0.01") or {}).get("tpr"),
            "canary_audited_epsilon": can.get("audited_epsilon"),
            "population_best_signal": row.get("best_signal"),
            "population_tpr_at_1pct_fpr": row.get("best_tpr_at_1pct_fpr")}


def label_only(row: dict) -> dict | None:
    """MemGuard's adaptive attack: the figures of its row's label-only output-limit run (argmax only)."""
    modes = (row.get("output_limits") or {}).get("modes") or {}
    return modes.get("label-only")
