"""Score texts (or token-id sequences) for membership with every requested signal.

The pipeline: tokenize each needed view (the text, its lowercase, the reference model's view) once,
compute :class:`~llm_mia.models.stats.TokenStats` once per (model, view), then call each signal,
a pure function of those statistics. Results come back in input order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError, LlmMiaWarning
from llm_mia.core.progress import bar
from llm_mia.data.texts import read_texts
from llm_mia.membership import signals as S
from llm_mia.membership.metrics import (
    bootstrap_auc_ci,
    calibrate_threshold,
    roc_metrics,
)
from llm_mia.membership.shadow import (
    check_tokenizer,
    load_shadows,
    shadow_inputs,
    shadow_summary,
)
from llm_mia.membership.signals import token_frequencies
from llm_mia.models.hf import LoadedModel, reference_is_target
from llm_mia.models.loading import load_model
from llm_mia.models.stats import TokenStats
from llm_mia.models.tokenizer import same_tokenizer, text_ids, tokenizer_adds_bos
from llm_mia.report.plots import roc_plot


@dataclass
class ScoreResult:
    """Scores of N texts.

    Attributes:
        rows: one dict per text, in input order: ``id``, ``n_scored_tokens``, ``nll`` (mean,
            nats/token), ``perplexity``, ``zlib_bytes``, ``scores`` (signal -> value, higher =
            member, NaN where undefined), ``flags`` (list of str).
        target: the target model's TokenStats (for further signals without another forward pass).
        warnings: one line each (e.g. the reference model is the target: reference signals constant).
    """

    rows: list[dict]
    target: TokenStats
    inputs: S.SignalInputs = field(repr=False)
    warnings: list[str] = field(default_factory=list)


def reference_warning(target: LoadedModel, reference: LoadedModel | None) -> str | None:
    """The one-line warning when ``reference`` is the target (BUG-21 a), else None."""

    why = reference_is_target(target, reference)
    return None if why is None else (f"the reference model is the target ({why}): every reference signal is "
                                     f"constant and says nothing about membership; use another model as reference")


def score(target: LoadedModel, texts: Sequence[str], *, ids: Sequence[Sequence[int]] | None = None,
          context_lens: Sequence[int] | int | None = None, reference: LoadedModel | None = None,
          signals: Sequence[str] | None = None, batch_size: int | None = None, prepend_bos: bool = False,
          stride: int | None = None, recall_prefix: str | None = None, token_freq: torch.Tensor | None = None,
          prompts: Sequence[str] | None = None, population: Sequence[str] | None = None,
          score_mask: Sequence[Sequence[bool]] | None = None, shadow=None,
          progress: Callable[[int], None] | None = None, warn: bool = True) -> ScoreResult:
    """Score ``texts`` under ``target`` (and ``reference``) with the requested signals.

    Args:
        texts: N strings (the text the zlib and lowercase signals read).
        ids / context_lens: token ids already in hand (e.g. generated samples, scored directly with no
            decode/re-encode round trip) and how many leading ids are context; default: encode ``texts``.
        reference: a reference model; its tokenizer may differ (then compared per UTF-8 byte).
        signals: names from :data:`llm_mia.membership.signals.REGISTRY`; default: every signal whose inputs exist.
        batch_size: forward-pass batch size (default: a per-device token budget, see
            :func:`~llm_mia.models.stats.compute_token_stats`); results do not depend on it.
        recall_prefix: non-member text put before each text for the ReCaLL signal.
        token_freq: Laplace-smoothed token frequencies of a reference corpus, shape (V,), for DC-PDD
            (see :func:`llm_mia.membership.signals.token_frequencies`).
        prompts: with ``ids``: the text each sample was conditioned on (its prompt ids are the
            context). The lowercase view is then [BOS] + lowercase prompt (context) + lowercase text,
            so both NLLs of the lowercase ratio are conditioned on the prompt.
        population: non-member texts (e.g. held-out data from the training distribution) that RMIA
            compares each text with; scored once per call under the target and the reference.
        score_mask: with ``ids``: one bool per id of each sequence; only ids flagged True (and past
            the context) are scored, in the target view and in a reference view with the same
            tokenizer (e.g. the assistant turns of a chat, :mod:`llm_mia.data.chat`). Views re-encoded
            from ``texts`` (lowercase, ReCaLL, a reference with another tokenizer) read ``texts`` as
            given, so pass the scored text there.
        shadow: a :class:`llm_mia.membership.shadow.ShadowSet` (``load_shadows``) with the target's tokenizer:
            adds LiRA, RMIA with K references and the Shokri attack (:mod:`llm_mia.membership.signals.shadow`).
        warn: also issue ``warnings.warn`` for each line of ``ScoreResult.warnings`` (the reference
            model is the target: its signals are then constant; they are still computed).

    Raises:
        LlmMiaError: unknown signal name, a signal whose input is missing (a reference, a population,
            a reference with the target's tokenizer for ez_mia / wbc), an empty population, or a
            ``score_mask`` without ``ids`` or of the wrong length.
    """
    texts = list(texts)
    if population is not None and not [p for p in population if p]:
        raise LlmMiaError("the population (non-member texts for rmia) is empty")
    aligned = reference is not None and same_tokenizer(reference.tokenizer, target.tokenizer)
    # an endpoint returns no distribution over the vocabulary: no mu / sigma (Min-K%++)
    moments = {"moments"} if getattr(target, "returns_moments", True) else set()
    avail = {"text", "lowercase"} | moments | ({"reference"} if reference is not None else set()) \
        | ({"recall"} if recall_prefix else set()) | ({"token_freq"} if token_freq is not None else set()) \
        | ({"aligned_reference"} if aligned else set()) | ({"population"} if population is not None else set()) \
        | ({"shadow"} if shadow is not None else set())
    chosen = S.get_signals(list(signals) if signals is not None else None, available=avail)
    needs = set().union(*(s.needs for s in chosen)) if chosen else set()
    if "reference" in needs and reference is None:
        raise LlmMiaError("the reference signals need a reference model (--reference)")
    missing = needs - avail
    if missing:
        what = {"recall": "a non-member prefix (--recall-prefix)",
                "moments": "mu and sigma over the whole vocabulary (an API endpoint returns the top k only)", "token_freq": "a token-frequency corpus (--dc-pdd-corpus)",
                "population": "a population of non-member texts (population=)",
                "shadow": "shadow models (--shadow DIR from `llm-mia shadow train`)",
                "aligned_reference": "a reference with the target's tokenizer (ez_mia and wbc compare token by token)"}
        raise LlmMiaError("signal input missing: " + ", ".join(what.get(m, m) for m in sorted(missing)))
    notes = [w for w in [reference_warning(target, reference) if "reference" in needs else None] if w]
    if warn:
        for w in notes:
            warnings.warn(w, LlmMiaWarning, stacklevel=2)
    if ids is None:
        if score_mask is not None:
            raise LlmMiaError("score_mask needs the token ids it flags (ids=)")
        ids, ctx = target.encode(texts, prepend_bos=prepend_bos)
    else:
        ids = [list(x) for x in ids]
        ctx = 1 if context_lens is None else context_lens
    if score_mask is not None and (len(score_mask) != len(ids) or any(len(m) != len(x) for m, x in zip(score_mask, ids))):
        raise LlmMiaError("score_mask needs one flag per token id of every sequence")

    def run(model: LoadedModel, seqs, c, moments: bool = False, masked: bool = False) -> TokenStats:
        st = model.token_stats(seqs, context_lens=c, batch_size=batch_size, stride=stride, moments=moments,
                               progress=progress)
        return _restrict(st, c, score_mask) if masked and score_mask is not None else st

    # mu and sigma over the vocabulary are read only from the target view (Min-K%++); other views
    # need log p(token) alone
    tstats = run(target, ids, ctx, moments="moments" in needs, masked=True)
    inp = S.SignalInputs(target=tstats, texts=texts)
    if "lowercase" in needs and prompts is not None:
        pl, _ = target.encode([p.lower() for p in prompts], prepend_bos=True)
        pl = [x or [target.bos_id] for x in pl]
        tl = [text_ids(target.tokenizer, t.lower()) for t in texts]
        inp.lowercase = run(target, [a + b for a, b in zip(pl, tl)], [len(a) for a in pl])
    elif "lowercase" in needs:
        lids, lctx = target.encode([t.lower() for t in texts], prepend_bos=prepend_bos or _starts_with_bos(target, ids))
        inp.lowercase = run(target, lids, lctx)
    if "reference" in needs:
        if aligned:
            inp.reference = run(reference, ids, ctx, masked=True)
        else:
            rids, rctx = reference.encode(texts, prepend_bos=True)
            inp.reference = run(reference, rids, rctx)
            inp.reference_per_byte = True
            # Per byte, the target's NLL must cover every byte as the reference's does: when the plain
            # view leaves the first token unscored (GPT-2 convention), score a BOS-conditioned view too.
            if not (tokenizer_adds_bos(target.tokenizer) or prepend_bos or _starts_with_bos(target, ids)):
                bids, bctx = target.encode(texts, prepend_bos=True)
                inp.target_all_bytes = run(target, bids, bctx)
    if "recall" in needs:
        p_ids, _ = target.encode([recall_prefix], prepend_bos=True)
        # the text's own ids, without the BOS the plain view starts with (the prefix brings its own)
        has_bos = tokenizer_adds_bos(target.tokenizer) or prepend_bos or _starts_with_bos(target, ids)
        own = [list(x[1:]) if has_bos and len(x) else list(x) for x in ids]
        inp.recall = run(target, [p_ids[0] + x for x in own], [len(p_ids[0])] * len(own))
    inp.token_freq = token_freq
    if "population" in needs:  # the same views of the population, under both models
        inp.population = score(target, [p for p in population if p], reference=reference, signals=["reference_diff"],
                               batch_size=batch_size, prepend_bos=prepend_bos, stride=stride, warn=False).inputs
    if "shadow" in needs:  # every shadow model over the texts and its population; the target over the population

        inp.shadow = shadow_inputs(shadow, target, texts, ids, ctx, batch_size=batch_size, stride=stride,
                                   restrict=(lambda st: _restrict(st, ctx, score_mask)) if score_mask is not None else None,
                                   prepend_bos=prepend_bos or _starts_with_bos(target, ids))
    values = {s.name: s.fn(inp) for s in chosen}
    flags = S.row_flags(inp)
    nll = S.mean_nll(tstats)
    ppl = S.perplexity(nll)
    rows = []
    for i, t in enumerate(texts):
        rows.append({"id": i, "n_scored_tokens": int(tstats.n_scored[i]), "nll": float(nll[i]),
                     "perplexity": float(ppl[i]), "zlib_bytes": S.zlib_bytes(t),
                     "scores": {k: float(v[i]) for k, v in values.items()}, "flags": flags[i]})
    return ScoreResult(rows=rows, target=tstats, inputs=inp, warnings=notes)


def _restrict(stats: TokenStats, context_lens: Sequence[int] | int, keep: Sequence[Sequence[bool]]) -> TokenStats:
    """``stats`` with only the scored tokens whose id is flagged in ``keep`` (re-left-aligned).

    Column j of row i is the id at position ``max(1, context_lens[i]) + j`` (each token is scored
    once, sliding context or not), so ``keep[i][max(1, c_i) + j]`` decides it.
    """
    n = len(stats)
    ctx = [context_lens] * n if isinstance(context_lens, int) else list(context_lens)
    cols = [[j for j in range(int(stats.n_scored[i])) if keep[i][max(1, ctx[i]) + j]] for i in range(n)]
    width = max((len(c) for c in cols), default=0)
    out = [torch.zeros(n, width, dtype=torch.float32) for _ in range(3)]
    tid = torch.full((n, width), -1, dtype=torch.long)
    top1 = torch.zeros((n, width), dtype=torch.bool) if stats.token_is_top1 is not None else None
    for i, c in enumerate(cols):
        idx = torch.as_tensor(c, dtype=torch.long)
        for o, src in zip(out, (stats.token_logprob, stats.mean_logprob, stats.std_logprob)):
            o[i, :len(c)] = src[i, idx]
        if stats.token_id is not None:
            tid[i, :len(c)] = stats.token_id[i, idx]
        if top1 is not None:
            top1[i, :len(c)] = stats.token_is_top1[i, idx]
    n_scored = torch.tensor([len(c) for c in cols], dtype=torch.long)
    mask = torch.arange(width)[None, :] < n_scored[:, None]
    return TokenStats(token_logprob=out[0], mean_logprob=out[1], std_logprob=out[2], mask=mask, n_scored=n_scored,
                      truncated=stats.truncated.clone(), token_id=tid if stats.token_id is not None else None,
                      token_is_top1=top1)


def _starts_with_bos(target: LoadedModel, ids: Sequence[Sequence[int]]) -> bool:
    """Whether the given id lists start with the BOS id (so the lowercase view should too)."""
    if tokenizer_adds_bos(target.tokenizer):
        return False
    return bool(ids) and all(len(x) > 0 and x[0] == target.bos_id for x in ids)


def score_texts(model, texts: Sequence[str], *, reference=None, signals: Sequence[str] | None = None,
                batch_size: int | None = None, prepend_bos: bool = False, recall_prefix: str | None = None,
                token_freq: torch.Tensor | None = None):
    """Python API of ``llm-mia score``: a pandas DataFrame, one row per text in input order.

    ``model`` / ``reference`` are a model folder, a hub id or a :class:`LoadedModel`. Columns:
    ``n_scored_tokens``, ``nll`` (nats/token), ``perplexity``, ``zlib_bytes``, one column per signal
    (higher = member, NaN where undefined) and ``flags``.
    """
    import pandas as pd

    tgt = model if isinstance(model, LoadedModel) else load_model(str(model))
    ref = reference if (reference is None or isinstance(reference, LoadedModel)) else load_model(str(reference))
    res = score(tgt, list(texts), reference=ref, signals=signals, batch_size=batch_size, prepend_bos=prepend_bos,
                recall_prefix=recall_prefix, token_freq=token_freq)
    return pd.DataFrame([{"id": r["id"], "n_scored_tokens": r["n_scored_tokens"], "nll": r["nll"],
                          "perplexity": r["perplexity"], "zlib_bytes": r["zlib_bytes"], **r["scores"],
                          "flags": r["flags"]} for r in res.rows])


def score_file(model: str, input_path, output_path, *, reference: str | None = None, text_field: str = "text",
               label_field: str | None = "label", signals: Sequence[str] | None = None, batch_size: int | None = None,
               prepend_bos: bool = False, recall_prefix=None, dc_pdd_corpus=None, metrics_path=None, roc_path=None,
               calibrate_on=None, target_fpr: float = 0.01, device: str | None = None, progress: bool = True,
               model_args: str | None = None, shadow_dir=None, engine: str = "hf") -> dict:
    """``llm-mia score``: read texts, score them, write JSONL (and metrics / ROC / decisions).

    Every input is read and validated before the model is loaded, and every output is written
    atomically, so bad input leaves nothing behind. Raises LlmMiaError with a one-line message.
    """

    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not math.isfinite(target_fpr) \
            or not 0 <= target_fpr < 1:
        raise LlmMiaError(f"--target-fpr must be in [0, 1), got {target_fpr!r}")
    inputs = [input_path, recall_prefix, dc_pdd_corpus, calibrate_on]
    outputs = [(output_path, "--output"), (metrics_path, "--metrics"), (roc_path, "--roc")]
    for path, what in outputs:
        if path is not None:
            io.check_output_file(path, inputs=inputs, what=what)
    named = [(str(Path(p).resolve()), w) for p, w in outputs if p is not None]
    if len({p for p, _ in named}) < len(named):
        raise LlmMiaError(f"{' and '.join(w for _, w in named)} must be different files")
    data = read_texts(input_path, text_field=text_field, label_field=label_field)
    if not data.texts:
        raise LlmMiaError(f"{input_path}: no texts to score")
    if (metrics_path or roc_path) and data.labels is None:
        raise LlmMiaError(f"--metrics/--roc need a 0/1 '{label_field}' field on every row of {input_path}")
    prefix = io.read_text(recall_prefix).strip() if recall_prefix else None
    if recall_prefix and not prefix:
        raise LlmMiaError(f"{recall_prefix}: the ReCaLL prefix is empty")
    calib = read_texts(calibrate_on, text_field=text_field, label_field=None) if calibrate_on else None
    freq_texts = None
    if dc_pdd_corpus:
        freq_texts = read_texts(dc_pdd_corpus, text_field=text_field, label_field=None).texts

    shadow = load_shadows(shadow_dir) if shadow_dir is not None else None
    tgt = load_model(model, device=device, model_args=model_args, engine=engine,
                     crosscheck_texts=data.texts[:16])
    if shadow is not None:
        check_tokenizer(shadow, tgt.tokenizer)
    ref = load_model(reference, device=device) if reference else None
    freq = token_frequencies(tgt.tokenizer, freq_texts, len(tgt.tokenizer)) if freq_texts is not None else None
    kw = dict(reference=ref, signals=signals, batch_size=batch_size, prepend_bos=prepend_bos,
              recall_prefix=prefix, token_freq=freq, shadow=shadow)
    with bar("scoring", None, enabled=progress) as adv:
        res = score(tgt, data.texts, progress=adv, warn=False, **kw)
    rows = []
    for r, i in zip(res.rows, data.ids):
        r = dict(r, id=i)
        rows.append(r)
    out = {"n": len(rows), "n_flagged": sum(bool(r["flags"]) for r in rows), "warnings": res.warnings,
           "engine": getattr(tgt, "engine_info", None)}
    if shadow is not None:
        out["shadow"] = shadow_summary(shadow, res.inputs.shadow)
    if calib is not None:
        cres = score(tgt, calib.texts, warn=False, **kw)
        thresholds = {}
        for sig in rows[0]["scores"]:
            thresholds[sig] = calibrate_threshold([r["scores"][sig] for r in cres.rows], target_fpr)
        for r in rows:
            r["member"] = {sig: (None if r["scores"][sig] != r["scores"][sig] else bool(r["scores"][sig] > t))
                           for sig, t in thresholds.items()}
        out["thresholds"] = thresholds
    if data.labels is not None:
        for r, y in zip(rows, data.labels):
            r["label"] = y
    io.write_jsonl(output_path, rows)
    if metrics_path or roc_path:
        per = {}
        for sig in rows[0]["scores"]:
            vals = [r["scores"][sig] for r in rows]
            if res.warnings and "reference" in S.REGISTRY[sig].needs:  # constant: no ROC to rank
                per[sig] = {"excluded": res.warnings[0]}
                continue
            try:
                m = roc_metrics(data.labels, vals)
                lo, hi = bootstrap_auc_ci(data.labels, vals)
                m["auc_ci"] = [lo, hi]
            except LlmMiaError as e:
                m = {"error": str(e)}
            per[sig] = m
        meta = {"model": model, "engine": out["engine"], "reference": reference, "input": str(input_path), "signals": per,
                "sign_convention": "higher score = more likely member; label member = 1", "warnings": res.warnings,
                **({"shadow": out["shadow"]} if shadow is not None else {})}
        if calib is not None:
            meta["calibration"] = {"nonmembers": str(calibrate_on), "target_fpr": target_fpr, "thresholds": out["thresholds"]}
        if metrics_path:
            io.write_json(metrics_path, meta)
        if roc_path:
            roc_plot(roc_path, data.labels, {sig: [r["scores"][sig] for r in rows] for sig in rows[0]["scores"]})
        out["metrics"] = per
    return out
