"""The canary audit: score designed canaries, turn included versus excluded into epsilon lower bounds.

Inputs come from :mod:`llm_mia.data.canaries` (the canaries file and the inclusion record written by
:func:`~llm_mia.data.canaries.plant_canaries`); the bounds are :mod:`llm_mia.privacy.bounds`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from llm_mia.core import io, parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.canaries import MIN_PER_CLASS, load_canaries, training_text
from llm_mia.membership import signals as S
from llm_mia.membership.metrics import roc_metrics
from llm_mia.membership.scoring import score
from llm_mia.models.loading import load_model
from llm_mia.privacy.bounds import one_run_bound, one_run_max_epsilon, threshold_bound


@dataclass
class CanaryAuditInputs:
    """Validated inputs of a canary audit (no model touched yet)."""

    canaries: list[dict]
    included: list[bool]
    record: dict
    delta: float
    beta: float
    signal: str
    train_checked: str | None
    trained_dp: dict | None
    strategy: str = "split"


def _check_planted_file(rec: dict, inclusion_path, train_path) -> str | None:
    """The training file checked against the record (``train_path``, else its planted file when it lies
    beside it), None when there is none; a planted_file naming a path outside the record's folder, or
    a file whose sha256 is not the record's, raises LlmMiaError."""
    folder = Path(inclusion_path).parent
    name = rec.get("planted_file")
    if name is not None and (not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..")):
        raise LlmMiaError(f"{inclusion_path}: planted_file {name!r} must be a file name in {folder}")
    if not train_path and not (name and (folder / name).is_file()):
        return None
    train = Path(train_path) if train_path else folder / name
    sha = io.sha256_file(train)
    if sha is None:
        raise LlmMiaError(f"training file not found: {train}")
    if sha != rec.get("planted_sha256"):
        raise LlmMiaError(f"{train} is not the planted training file of {inclusion_path} (sha256 differs)")
    return str(train)


def _check_flags(canaries: list[dict], flags: dict, train: str, inclusion_path) -> None:
    """Every included canary occurs in the planted file ``train`` and no excluded one does (one pass)."""
    text = training_text(train)
    wrong = [c["id"] for c in canaries if (c["text"] in text) != flags[c["id"]]]
    if wrong:
        raise LlmMiaError(f"{inclusion_path}: the included flags of {len(wrong)} canaries do not match {train} "
                          f"(e.g. {wrong[0]!r} is {'not ' if flags[wrong[0]] else ''}in it, yet marked "
                          f"{'included' if flags[wrong[0]] else 'excluded'})")


def prepare_canary_audit(canaries_path: str | Path, inclusion_path: str | Path, *, model_path=None,
                         has_reference: bool = False, delta: float | None = None, beta: float = 0.05,
                         signal: str | None = None, train_path: str | Path | None = None,
                         strategy: str = "split") -> CanaryAuditInputs:
    """Check every input of :func:`run_canary_audit` before any model work.

    ``delta`` defaults to the model's trained delta (``recipe.json["dp"]["delta"]``), else 1e-5. The
    training file checked against the record is ``train_path``, else the planted file beside
    ``inclusion.json`` when it is there. ``strategy`` picks the threshold of the Gaussian-DP and
    Clopper-Pearson bounds (:func:`llm_mia.privacy.bounds.threshold_bound`: "split" or "bonferroni").

    Raises:
        LlmMiaError: duplicate canaries; an inclusion record whose hashes or ids do not match the
            canaries or the training file; fewer than :data:`MIN_PER_CLASS` included or excluded
            canaries; delta or beta outside (0, 1); an unknown signal or one needing a missing reference.
    """

    if strategy not in ("split", "bonferroni"):
        raise LlmMiaError(f"unknown threshold strategy '{strategy}' (split, bonferroni)")
    canaries = load_canaries(canaries_path)
    rec = io.read_json(inclusion_path)
    if not isinstance(rec, dict) or rec.get("kind") != "llm-mia canary inclusion":
        raise LlmMiaError(f"{inclusion_path} is not an inclusion record of `llm-mia canaries plant`")
    if rec.get("canaries_sha256") != io.sha256_file(canaries_path):
        raise LlmMiaError(f"{inclusion_path} was written for another canaries file than {canaries_path} (sha256 differs)")
    flags = {x.get("id"): x.get("included") for x in rec.get("canaries", []) if isinstance(x, dict)}
    if set(flags) != {c["id"] for c in canaries} or not all(isinstance(v, bool) for v in flags.values()):
        raise LlmMiaError(f"{inclusion_path}: the canary ids or included flags do not match {canaries_path}")
    checked = _check_planted_file(rec, inclusion_path, train_path)
    included = [flags[c["id"]] for c in canaries]
    if checked is not None:
        _check_flags(canaries, flags, checked, inclusion_path)
    n_in = sum(included)
    if n_in < MIN_PER_CLASS or len(included) - n_in < MIN_PER_CLASS:
        raise LlmMiaError(f"the epsilon bounds need >= {MIN_PER_CLASS} included and {MIN_PER_CLASS} excluded "
                          f"canaries, got {n_in} and {len(included) - n_in}")
    dp = None
    recipe = Path(model_path) / "recipe.json" if model_path else None
    if recipe is not None and recipe.is_file():
        r = io.read_json(recipe)
        dp = (r.get("dp") or None) if isinstance(r, dict) else None
    if delta is None:
        delta = float(dp["delta"]) if dp and dp.get("delta") else 1e-5
    for name, v in (("delta", delta), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise LlmMiaError(f"--{name} must be in (0, 1), got {v!r}")
    signal = signal or ("reference_diff" if has_reference else "loss")
    sig = S.get_signals([signal])[0]
    if "reference" in sig.needs and not has_reference:
        raise LlmMiaError(f"signal '{signal}' needs a reference model (--reference)")
    if sig.needs - {"reference", "text", "lowercase", "moments"}:
        raise LlmMiaError(f"signal '{signal}' needs inputs the canary audit does not give")
    return CanaryAuditInputs(canaries=canaries, included=included, record=rec, delta=float(delta), beta=float(beta),
                             signal=signal, train_checked=checked, trained_dp=dp, strategy=strategy)


def run_canary_audit(target, inp: CanaryAuditInputs, *, reference=None, seed: int = 0) -> dict:
    """Score the canaries under ``target`` (a LoadedModel) and compute the audit (the canary-audit.json dict).

    Returns: ``signal``, ``n_canaries``, ``n_included``, ``kinds`` {kind: count}, ``kind`` (the one kind
    or "mixed"), ``auc``, ``tpr_at_fpr`` {"0.001"/"0.01"/"0.05": {tpr, realized_fpr, tp, fp,
    below_resolution}}, ``bounds`` {one_run, gaussian_dp, clopper_pearson} (each with its parameters),
    ``audited_epsilon`` (the one-run bound), ``dp`` (trained vs audited epsilon) and ``canaries``
    (id, kind, included, score).

    DP check: a canary planted R times is a group of R training records, protected at R epsilon
    (group privacy, with a larger delta), so the audited epsilon is held against R x the trained one;
    above it, the DP implementation (or its accounting) failed. Where a record is a fixed-length block
    of the concatenated stream (``llm-mia train``), a copy cut by a block boundary touches two records,
    so there the guarantee per canary is up to 2R epsilon and a value between R and 2R times the
    trained epsilon is a reason to look, not yet proof.
    """

    texts = [c["text"] for c in inp.canaries]
    res = score(target, texts, reference=reference, signals=[inp.signal], prepend_bos=True)
    s = [r["scores"][inp.signal] for r in res.rows]
    y = [int(v) for v in inp.included]
    roc = roc_metrics(y, s)
    n_in, n_out = roc["n_members"], roc["n_nonmembers"]
    tprs = {k: {**v, "tp": round(v["tpr"] * n_in), "fp": round(v["realized_fpr"] * n_out)}
            for k, v in roc["tpr_at_fpr"].items()}
    bounds = {"one_run": {"source": "Steinke, Nasr, Jagielski 2023, Theorem 3.1",
                          **one_run_bound(s, inp.included, delta=inp.delta, beta=inp.beta)}}
    for kind, src in (("gaussian_dp", "Dong, Roth, Su 2022 Cor. 2.13; Nasr et al. 2023 sec. 4 (assumes a Gaussian "
                                      "trade-off curve)"),
                      ("clopper_pearson", "Jagielski, Ullman, Oprea 2020 sec. 3")):
        bounds[kind] = {"source": src, **threshold_bound(s, inp.included, kind=kind, delta=inp.delta, alpha=inp.beta,
                                                         strategy=inp.strategy, seed=seed)}
    audited = bounds["one_run"]["epsilon"]
    kinds = Counter(c["kind"] for c in inp.canaries)
    out = {"signal": inp.signal, "n_canaries": len(texts), "n_included": sum(inp.included),
           "n_scored": n_in + n_out, "kinds": dict(kinds), "kind": next(iter(kinds)) if len(kinds) == 1 else "mixed",
           "repeats": inp.record.get("repeats"), "delta": inp.delta, "beta": inp.beta, "auc": roc["auc"],
           "tpr_at_fpr": tprs, "bounds": bounds, "audited_epsilon": audited,
           "audited_by": "one_run", "train_file_checked": inp.train_checked, "dp": None}
    if inp.trained_dp and inp.trained_dp.get("epsilon") is not None:
        eps = float(inp.trained_dp["epsilon"])
        group = int(inp.record.get("repeats") or 1)
        claim = eps * group  # group privacy: a canary planted R times is R records
        failed = audited > claim
        what = f"trained {eps:g}" + (f" x {group} copies = {claim:g}" if group > 1 else "")
        out["dp"] = {"trained_epsilon": eps, "trained_delta": inp.trained_dp.get("delta"), "audited_epsilon": audited,
                     "group_size": group, "claimed_epsilon_per_canary": claim, "failed_dp_implementation": failed,
                     "verdict": (f"FAILED DP IMPLEMENTATION: audited epsilon {audited:.3f} > {what}" if failed
                                 else f"audited epsilon {audited:.3f} <= {what} (consistent with the claim)")}
    out["tightness"] = audit_tightness(len(texts), int(sum(not math.isnan(float(v)) for v in s)), audited,
                                       delta=inp.delta, beta=inp.beta,
                                       claim=(out["dp"] or {}).get("claimed_epsilon_per_canary"))
    out["canaries"] = [{"id": c["id"], "kind": c["kind"], "included": inc, "score": v}
                       for c, inc, v in zip(inp.canaries, inp.included, s)]
    return out


#: Why a one-run audit need not reach the true epsilon, however many canaries (report.json canaries.tightness.note).
LOOSE_NOTE = ("a one-run audit is a lower bound that need not be tight: interference between the canaries of one "
              "training run caps what it can show, and for Gaussian mechanisms such as DP-SGD the gap stays "
              "however many canaries are planted (Keinan, Shenfeld, Ligett 2025, arXiv 2503.07199)")


def audit_tightness(m: int, n_scored: int, audited: float, *, delta: float, beta: float,
                    claim: float | None = None) -> dict:
    """How far the canary audit could go: the largest epsilon ``m`` canaries could ever show
    (:func:`llm_mia.privacy.bounds.one_run_max_epsilon`, every guess correct), the audited share of it,
    and notes: the one-run bound's looseness (:data:`LOOSE_NOTE`), and when ``claim`` (the trained
    epsilon per canary) is above the maximum, that no result of this audit could contradict it.

    Returns:
        {"max_epsilon", "k_plus", "k_minus", "at_max": audited >= 0.95 max, "source", "notes": [str]}.
    """
    mx = one_run_max_epsilon(m, delta=delta, beta=beta, n_scored=n_scored)
    notes = [LOOSE_NOTE]
    if mx["epsilon"] > 0 and audited >= 0.95 * mx["epsilon"]:
        notes.append(f"the audited epsilon {audited:.3f} is at the most {m} canaries can show "
                     f"({mx['epsilon']:.3f}): more canaries could show more")
    if claim is not None and claim > mx["epsilon"]:
        notes.append(f"{m} canaries can show at most epsilon {mx['epsilon']:.3f}, below the claimed {claim:g}: "
                     "this audit cannot detect a violation of the claim")
    return {"max_epsilon": mx["epsilon"], "k_plus": mx["k_plus"], "k_minus": mx["k_minus"],
            "at_max": bool(mx["epsilon"] > 0 and audited >= 0.95 * mx["epsilon"]),
            "source": "Steinke, Nasr, Jagielski 2023, Theorem 3.1 with every guess correct", "notes": notes}


def audit_canaries(model: str, canaries_path, inclusion_path, out_dir, *, reference: str | None = None,
                   delta: float | None = None, beta: float = 0.05, signal: str | None = None,
                   train_path=None, seed: int = 0, device: str | None = None, strategy: str = "split") -> dict:
    """Audit one training run with designed canaries: epsilon lower bounds from one membership signal.

    ``llm-mia canaries audit``. The canaries (:func:`llm_mia.data.canaries.make_canaries`) were planted by
    :func:`llm_mia.data.canaries.plant_canaries`, each included with probability 1/2; the model trained
    on the planted file. Every canary is scored with ``signal`` (higher = member); included versus
    excluded canaries give the one-run bound (Steinke, Nasr, Jagielski 2023, Theorem 3.1) and the
    threshold bounds of :mod:`llm_mia.privacy.bounds`. Inputs are validated before a model is loaded.

    Args:
        model: the audited model (folder, hub id or adapter, as :func:`llm_mia.models.loading.load_model`).
        canaries_path: the canaries JSONL file; inclusion_path: its ``inclusion.json`` (hashes checked).
        out_dir: where ``canary-audit.json`` is written.
        reference: a reference model for the reference signals (optional).
        delta: the delta of the (epsilon, delta) bounds (default: the model's trained delta from its
            ``recipe.json``, else 1e-5).
        beta: one minus the confidence of every bound (0.05: 95%).
        signal: the membership signal (default: see :func:`prepare_canary_audit`).
        train_path: the planted training file, to check against the inclusion record.
        strategy: the threshold of the Gaussian-DP and Clopper-Pearson bounds: ``split`` (chosen on one
            half, tested on the other) or ``bonferroni`` (every threshold, corrected for their number).

    Returns:
        The record written to ``canary-audit.json``: inputs, AUC and TPR at 1% FPR, and each bound's
        epsilon (a lower bound, at confidence ``1 - beta``).

    Raises:
        LlmMiaError: mismatched hashes, too few included or excluded canaries, an unknown signal, or a
            model that cannot be loaded.
    """

    inp = prepare_canary_audit(canaries_path, inclusion_path, model_path=model if Path(model).is_dir() else None,
                               has_reference=reference is not None, delta=delta, beta=beta, signal=signal,
                               train_path=train_path, strategy=strategy)
    device = parallel.process_device(device)  # under `accelerate launch`: scored data-parallel, process 0 writes
    target = load_model(model, device=device)
    ref = load_model(reference, device=device) if reference else None
    res = {"model": str(model), "reference": str(reference) if reference else None,
           "canaries_file": str(canaries_path), "inclusion_file": str(inclusion_path),
           **run_canary_audit(target, inp, reference=ref, seed=seed), "num_processes": parallel.world_size()}
    if parallel.is_main():
        io.write_json(Path(out_dir) / "canary-audit.json", res)
    return res


def _max_note(res: dict) -> str:
    """`` (at most X with m canaries)`` from ``res["tightness"]``, or nothing."""
    t = res.get("tightness")
    return f" (at most {t['max_epsilon']:.3f} with {res['n_canaries']} canaries)" if t else ""


def summary_line(res: dict) -> str:
    """One line: kind and count, TPR at 1% FPR, the three bounds, the DP comparison."""
    b = res["bounds"]
    t = res["tpr_at_fpr"]["0.01"]
    line = (f"{res['n_canaries']} {res['kind']} canaries ({res['n_included']} included), signal {res['signal']}: "
            f"TPR {t['tpr']:.3f} at 1% FPR; epsilon lower bounds at delta {res['delta']:g}: one-run "
            f"{b['one_run']['epsilon']:.3f}{_max_note(res)}, Gaussian DP {b['gaussian_dp']['epsilon']:.3f}, Clopper-Pearson "
            f"{b['clopper_pearson']['epsilon']:.3f}")
    if res.get("dp"):
        line += f"; {res['dp']['verdict']}"
    return line
