"""Score texts (or token-id sequences) for membership with every requested signal.

The pipeline: tokenize each needed view (the text, its lowercase, the reference model's view) once,
compute :class:`~llm_mia.models.stats.TokenStats` once per (model, view), then call each signal,
a pure function of those statistics. Results come back in input order.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm_mia.core import io, parallel
from llm_mia.core.errors import LlmMiaError, LlmMiaWarning
from llm_mia.core.progress import bar
from llm_mia.data.texts import TextSet, read_texts
from llm_mia.membership import signals as S
from llm_mia.membership.metrics import (
    bootstrap_auc_ci,
    calibrate_threshold,
    roc_metrics,
)
from llm_mia.membership.shadow import (
    check_tokenizer,
    load_shadows,
    recipe_mismatch,
    shadow_inputs,
    shadow_summary,
)
from llm_mia.membership.signals import token_frequencies
from llm_mia.membership.signals.text_overlap import TEXT_SIGNALS
from llm_mia.membership.text_scoring import text_signal_scores
from llm_mia.models.hf import LoadedModel, reference_is_target
from llm_mia.models.loading import load_model
from llm_mia.models.stats import TokenStats, combine_stats
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
        inputs: every input the signals read (:class:`~llm_mia.membership.signals.SignalInputs`), views included.
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


#: What each signal input is, for the "signal input missing" error.
_INPUT_WHAT = {"recall": "a non-member prefix (--recall-prefix)",
               "moments": "mu and sigma over the whole vocabulary (an API endpoint returns the top k only)",
               "token_freq": "a token-frequency corpus (--dc-pdd-corpus)",
               "population": "a population of non-member texts (population=)",
               "shadow": "shadow models (--shadow DIR from `llm-mia shadow train`)",
               "aligned_reference": "a reference with the target's tokenizer (ez_mia and wbc compare token by token)"}


@dataclass(frozen=True)
class _ViewRunner:
    """Computes the TokenStats of one view, with the options shared by every view of a :func:`score` call.

    Attributes:
        batch_size: forward-pass batch size; None: a per-device token budget.
        stride: sliding-context step; None: the default of :func:`~llm_mia.models.stats.compute_token_stats`.
        progress: called with the number of inputs finished after each batch, or None.
        score_mask: one bool per id of each target sequence (only flagged ids are scored in the views
            computed with ``masked=True``), or None: every id past the context is scored.
    """

    batch_size: int | None
    stride: int | None
    progress: Callable[[int], None] | None
    score_mask: Sequence[Sequence[bool]] | None

    def __call__(self, model: LoadedModel, seqs, c, moments: bool = False, masked: bool = False) -> TokenStats:
        st = model.token_stats(seqs, context_lens=c, batch_size=self.batch_size, stride=self.stride, moments=moments,
                               progress=self.progress)
        return _restrict(st, c, self.score_mask) if masked and self.score_mask is not None else st


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
    avail = _available_inputs(target, reference, aligned=aligned, recall_prefix=recall_prefix, token_freq=token_freq,
                              population=population, shadow=shadow)
    chosen = S.get_signals(list(signals) if signals is not None else None, available=avail)
    needs = set().union(*(s.needs for s in chosen)) if chosen else set()
    _check_needs(needs, avail, reference)
    notes = [w for w in [reference_warning(target, reference) if "reference" in needs else None] if w]
    if warn:
        for w in notes:
            warnings.warn(w, LlmMiaWarning, stacklevel=2)
    ids, ctx = _target_ids(target, texts, ids, context_lens, prepend_bos=prepend_bos, score_mask=score_mask)
    run = _ViewRunner(batch_size=batch_size, stride=stride, progress=progress, score_mask=score_mask)
    # mu and sigma over the vocabulary are read only from the target view (Min-K%++); other views
    # need log p(token) alone
    tstats = run(target, ids, ctx, moments="moments" in needs, masked=True)
    inp = S.SignalInputs(target=tstats, texts=texts)
    if "lowercase" in needs:
        inp.lowercase = _lowercase_view(target, texts, ids, prompts, prepend_bos=prepend_bos, run=run,
                                        same=(ids, ctx, tstats) if score_mask is None else None)
    if "reference" in needs:
        _reference_views(inp, target, reference, ids, ctx, aligned=aligned, prepend_bos=prepend_bos, run=run)
    if "recall" in needs:
        inp.recall = _recall_view(target, ids, recall_prefix, prepend_bos=prepend_bos, run=run)
    inp.token_freq = token_freq
    if "population" in needs:  # the same views of the population, under both models
        inp.population = score(target, [p for p in population if p], reference=reference, signals=["reference_diff"],
                               batch_size=batch_size, prepend_bos=prepend_bos, stride=stride, warn=False).inputs
    if "shadow" in needs:  # every shadow model over the texts and its population; the target over the population
        restrict = (lambda st: _restrict(st, ctx, score_mask)) if score_mask is not None else None
        inp.shadow = shadow_inputs(shadow, target, texts, ids, ctx, batch_size=batch_size, stride=stride,
                                   restrict=restrict, prepend_bos=prepend_bos or _starts_with_bos(target, ids))
    values = {s.name: s.fn(inp) for s in chosen}
    return ScoreResult(rows=_rows(texts, tstats, values, S.row_flags(inp)), target=tstats, inputs=inp, warnings=notes)


def _available_inputs(target: LoadedModel, reference: LoadedModel | None, *, aligned: bool, recall_prefix: str | None,
                      token_freq: torch.Tensor | None, population: Sequence[str] | None, shadow) -> set[str]:
    """The signal inputs (``Signal.needs`` names) that this :func:`score` call can provide."""
    # an endpoint returns no distribution over the vocabulary: no mu / sigma (Min-K%++)
    moments = {"moments"} if getattr(target, "returns_moments", True) else set()
    return {"text", "lowercase"} | moments | ({"reference"} if reference is not None else set()) \
        | ({"recall"} if recall_prefix else set()) | ({"token_freq"} if token_freq is not None else set()) \
        | ({"aligned_reference"} if aligned else set()) | ({"population"} if population is not None else set()) \
        | ({"shadow"} if shadow is not None else set())


def _check_needs(needs: set[str], avail: set[str], reference: LoadedModel | None) -> None:
    """Raise LlmMiaError naming what is missing when the chosen signals need an input not in ``avail``."""
    if "reference" in needs and reference is None:
        raise LlmMiaError("the reference signals need a reference model (--reference)")
    missing = needs - avail
    if missing:
        raise LlmMiaError("signal input missing: " + ", ".join(_INPUT_WHAT.get(m, m) for m in sorted(missing)))


def _target_ids(target: LoadedModel, texts: list[str], ids: Sequence[Sequence[int]] | None,
                context_lens: Sequence[int] | int | None, *, prepend_bos: bool,
                score_mask: Sequence[Sequence[bool]] | None) -> tuple[list[list[int]], Sequence[int] | int]:
    """The target view's token ids and context lengths: ``ids`` as given (context 1 by default) or ``texts`` encoded.

    Raises:
        LlmMiaError: a ``score_mask`` without ``ids``, or not one flag per id of every sequence.
    """
    if ids is None:
        if score_mask is not None:
            raise LlmMiaError("score_mask needs the token ids it flags (ids=)")
        ids, ctx = target.encode(texts, prepend_bos=prepend_bos)
    else:
        ids = [list(x) for x in ids]
        ctx = 1 if context_lens is None else context_lens
    if score_mask is not None and (len(score_mask) != len(ids) or any(len(m) != len(x) for m, x in zip(score_mask, ids))):
        raise LlmMiaError("score_mask needs one flag per token id of every sequence")
    return ids, ctx


def _lowercase_view(target: LoadedModel, texts: list[str], ids: list[list[int]], prompts: Sequence[str] | None, *,
                    prepend_bos: bool, run: _ViewRunner, same: tuple | None = None) -> TokenStats:
    """The texts lowercased under the target; with ``prompts``, conditioned on [BOS] + the lowercase prompt.

    Without prompts the view starts with a BOS id when the target view does (``prepend_bos``, or ``ids``
    that start with BOS). ``same``: ``(ids, context_lens, stats)`` of the target view; a row whose
    lowercase ids and context equal the target's (lowercasing changed no token) reuses its stats
    instead of running the model again.
    """
    if prompts is not None:
        pl, _ = target.encode([p.lower() for p in prompts], prepend_bos=True)
        pl = [x or [target.bos_id] for x in pl]
        tl = [text_ids(target.tokenizer, t.lower()) for t in texts]
        lids, lctx = [a + b for a, b in zip(pl, tl)], [len(a) for a in pl]
    else:
        lids, lctx = target.encode([t.lower() for t in texts], prepend_bos=prepend_bos or _starts_with_bos(target, ids))
    if same is None:
        return run(target, lids, lctx)
    tids, tctx, tstats = same
    n = len(lids)
    lc = [lctx] * n if isinstance(lctx, int) else list(lctx)
    tc = [tctx] * n if isinstance(tctx, int) else list(tctx)
    keep = [i for i in range(n) if lc[i] == tc[i] and list(lids[i]) == list(tids[i])]
    if not keep:
        return run(target, lids, lctx)
    todo = sorted(set(range(n)) - set(keep))
    rest = run(target, [lids[i] for i in todo], [lc[i] for i in todo])
    return combine_stats(n, [(keep, tstats.select(keep)), (todo, rest)])


def _reference_views(inp: S.SignalInputs, target: LoadedModel, reference: LoadedModel, ids: list[list[int]],
                     ctx: Sequence[int] | int, *, aligned: bool, prepend_bos: bool, run: _ViewRunner) -> None:
    """Set ``inp.reference`` (and, per byte, ``reference_per_byte`` and ``target_all_bytes``).

    With the target's tokenizer (``aligned``) the reference scores the target's ids; otherwise it encodes
    the texts itself and the signals compare NLL per UTF-8 byte. ``prepend_bos``: as given to :func:`score`.
    """
    if aligned:
        inp.reference = run(reference, ids, ctx, masked=True)
        return
    rids, rctx = reference.encode(inp.texts, prepend_bos=True)
    inp.reference = run(reference, rids, rctx)
    inp.reference_per_byte = True
    # Per byte, the target's NLL must cover every byte as the reference's does: when the plain
    # view leaves the first token unscored (GPT-2 convention), score a BOS-conditioned view too.
    if not (tokenizer_adds_bos(target.tokenizer) or prepend_bos or _starts_with_bos(target, ids)):
        bids, bctx = target.encode(inp.texts, prepend_bos=True)
        inp.target_all_bytes = run(target, bids, bctx)


def _recall_view(target: LoadedModel, ids: list[list[int]], recall_prefix: str, *, prepend_bos: bool,
                 run: _ViewRunner) -> TokenStats:
    """Each text's own ids conditioned on [BOS] + the non-member ``recall_prefix`` (ReCaLL); only its ids scored.

    ``prepend_bos``: as given to :func:`score`; a BOS id the target view starts with is dropped here.
    """
    p_ids, _ = target.encode([recall_prefix], prepend_bos=True)
    # the text's own ids, without the BOS the plain view starts with (the prefix brings its own)
    has_bos = tokenizer_adds_bos(target.tokenizer) or prepend_bos or _starts_with_bos(target, ids)
    own = [list(x[1:]) if has_bos and len(x) else list(x) for x in ids]
    return run(target, [p_ids[0] + x for x in own], [len(p_ids[0])] * len(own))


def _rows(texts: list[str], tstats: TokenStats, values: dict[str, torch.Tensor], flags: list[list[str]]) -> list[dict]:
    """One result row per text (see :class:`ScoreResult`); ``values`` maps each signal to its (N,) scores."""
    nll = S.mean_nll(tstats)
    ppl = S.perplexity(nll)
    rows = []
    for i, t in enumerate(texts):
        rows.append({"id": i, "n_scored_tokens": int(tstats.n_scored[i]), "nll": float(nll[i]),
                     "perplexity": float(ppl[i]), "zlib_bytes": S.zlib_bytes(t),
                     "scores": {k: float(v[i]) for k, v in values.items()}, "flags": flags[i]})
    return rows


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
    """Score texts for membership with every signal (the Python API of ``llm-mia score``).

    Per-token statistics are computed once per batch for each view the signals need (the target, its
    lowercased text, the reference model, a ReCaLL prefix), then every signal is a pure function of them:
    LOSS (Yeom et al. 2018), zlib, lowercase and reference (Carlini et al. 2021 sec. 5.2), Min-K% (Shi et
    al. 2024), Min-K%++ (Zhang et al. 2025), ReCaLL, DC-PDD and the fine-tune attacks.

    Args:
        model: the target, a model folder, a hub id or a :class:`~llm_mia.models.hf.LoadedModel`.
        texts: N texts.
        reference: a reference model (same forms), for the reference signals; None leaves them out.
        signals: signal names (:data:`llm_mia.membership.signals.REGISTRY`); None: every computable one.
        batch_size: texts per forward pass; None: the per-device token budget.
        prepend_bos: score the first token too, conditioned on the model's start token.
        recall_prefix: the non-member prefix of ReCaLL (Xie et al. 2024).
        token_freq: token frequencies of shape (V,) for DC-PDD.

    Returns:
        A pandas DataFrame with one row per text, in input order: ``id``, ``n_scored_tokens``, ``nll``
        (nats per token), ``perplexity``, ``zlib_bytes``, one column per signal (higher = member, NaN
        where undefined) and ``flags`` (why a score is NaN or approximate).

    Raises:
        LlmMiaError: an unknown signal ("did you mean"), a signal whose input is missing, or a model that
            cannot be loaded.
    """
    import pandas as pd

    tgt = model if isinstance(model, LoadedModel) else load_model(str(model))
    ref = reference if (reference is None or isinstance(reference, LoadedModel)) else load_model(str(reference))
    res = score(tgt, list(texts), reference=ref, signals=signals, batch_size=batch_size, prepend_bos=prepend_bos,
                recall_prefix=recall_prefix, token_freq=token_freq)
    return pd.DataFrame([{"id": r["id"], "n_scored_tokens": r["n_scored_tokens"], "nll": r["nll"],
                          "perplexity": r["perplexity"], "zlib_bytes": r["zlib_bytes"], **r["scores"],
                          "flags": r["flags"]} for r in res.rows])


@dataclass
class _ScoreFileInputs:
    """Everything ``llm-mia score`` reads before a model is loaded, validated.

    Attributes:
        data: the texts to score (``ids``, ``texts`` and, when every row has one, 0/1 ``labels``).
        prefix: the ReCaLL non-member prefix (stripped, non-empty), or None.
        calib: known non-member texts to calibrate one threshold per signal on, or None.
        freq_texts: the texts of the DC-PDD token-frequency corpus, or None.
    """

    data: TextSet
    prefix: str | None
    calib: TextSet | None
    freq_texts: list[str] | None


def score_file(model: str, input_path, output_path, *, reference: str | None = None, text_field: str = "text",
               label_field: str | None = "label", signals: Sequence[str] | None = None, batch_size: int | None = None,
               prepend_bos: bool = False, recall_prefix=None, dc_pdd_corpus=None, metrics_path=None, roc_path=None,
               calibrate_on=None, target_fpr: float = 0.01, device: str | None = None, progress: bool = True,
               model_args: str | None = None, shadow_dir=None, engine: str = "hf", max_queries: int | None = None) -> dict:
    """``llm-mia score``: read texts, score them, write JSONL (and metrics / ROC / decisions).

    Every input is read and validated before the model is loaded, and every output is written
    atomically, so bad input leaves nothing behind.

    Args:
        model / reference: the target and an optional reference model (folder, hub id or ``openai:URL``).
        input_path / output_path: the texts (see :func:`~llm_mia.data.texts.read_texts`) and the JSONL
            written, one row per text (:class:`ScoreResult` rows, ``id`` from the file, ``label``, ``member``).
        text_field / label_field: the fields holding the text and its 0/1 label (member = 1).
        signals, batch_size, prepend_bos: as in :func:`score`.
        recall_prefix / dc_pdd_corpus: files with the ReCaLL prefix and the DC-PDD frequency corpus.
        metrics_path / roc_path: where to write the metrics JSON and the ROC plot (need labels).
        calibrate_on / target_fpr: known non-members; each signal's threshold is set at this FPR in [0, 1).
        device, model_args, engine: as in :func:`~llm_mia.models.loading.load_model`.
        progress: show a progress bar.
        shadow_dir: shadow models from ``llm-mia shadow train``.
        max_queries: the query budget of an ``openai:`` endpoint (``--max-queries``; ignored for a local model).

    Returns:
        A summary: ``n``, ``n_flagged``, ``warnings``, ``engine``, ``num_processes`` (of an ``accelerate
        launch``, whose process 0 alone writes) and, when asked, ``shadow``, ``thresholds`` and ``metrics``.

    Raises:
        LlmMiaError: one line, for a bad option, input or output (all checked before the model is loaded),
            a model that cannot be loaded or a signal whose input is missing.
    """
    if isinstance(target_fpr, bool) or not isinstance(target_fpr, (int, float)) or not math.isfinite(target_fpr) \
            or not 0 <= target_fpr < 1:
        raise LlmMiaError(f"--target-fpr must be in [0, 1), got {target_fpr!r}")
    if signals and set(signals) & set(TEXT_SIGNALS) and calibrate_on is not None:
        raise LlmMiaError(f"--calibrate-on does not apply to {', '.join(TEXT_SIGNALS)} yet: score them without it")
    _check_outputs([input_path, recall_prefix, dc_pdd_corpus, calibrate_on],
                   [(output_path, "--output"), (metrics_path, "--metrics"), (roc_path, "--roc")])
    got = _read_score_inputs(input_path, text_field=text_field, label_field=label_field, recall_prefix=recall_prefix,
                             calibrate_on=calibrate_on, dc_pdd_corpus=dc_pdd_corpus,
                             need_labels=bool(metrics_path or roc_path))
    data = got.data

    shadow = load_shadows(shadow_dir) if shadow_dir is not None else None
    device = parallel.process_device(device)  # each process of a launch on its own accelerator
    tgt = load_model(model, device=device, model_args=model_args, engine=engine, crosscheck_texts=data.texts[:16])
    if max_queries is not None and hasattr(tgt, "usage"):
        tgt.max_queries = tgt.usage.queries + int(max_queries)
    if shadow is not None:
        check_tokenizer(shadow, tgt.tokenizer)
        if (why := recipe_mismatch(shadow, getattr(tgt, "folder", None))) is not None:
            print(why, file=sys.stderr)
    ref = load_model(reference, device=device) if reference else None
    freq = token_frequencies(tgt.tokenizer, got.freq_texts, len(tgt.tokenizer)) if got.freq_texts is not None else None
    kw = dict(reference=ref, signals=signals, batch_size=batch_size, prepend_bos=prepend_bos,
              recall_prefix=got.prefix, token_freq=freq, shadow=shadow)
    res = _score_with_text_signals(tgt, data.texts, kw, progress and parallel.is_main())
    rows = [dict(r, id=i) for r, i in zip(res.rows, data.ids)]
    out = {"n": len(rows), "n_flagged": sum(bool(r["flags"]) for r in rows), "warnings": res.warnings,
           "engine": getattr(tgt, "engine_info", None), "num_processes": parallel.world_size()}
    if shadow is not None:
        out["shadow"] = shadow_summary(shadow, res.inputs.shadow)
    if got.calib is not None:
        out["thresholds"] = _calibrate(rows, score(tgt, got.calib.texts, warn=False, **kw), target_fpr)
    if data.labels is not None:
        for r, y in zip(rows, data.labels):
            r["label"] = y
    if not parallel.is_main():  # under `accelerate launch` process 0 writes (and alone runs the bootstrap)
        return out
    io.write_jsonl(output_path, rows)
    if metrics_path or roc_path:
        about = {"model": model, "engine": out["engine"], "reference": reference, "input": str(input_path),
                 "num_processes": out["num_processes"]}
        calibration = None if got.calib is None else {"nonmembers": str(calibrate_on), "target_fpr": target_fpr,
                                                      "thresholds": out["thresholds"]}
        out["metrics"] = _write_metrics(rows, data.labels, res.warnings, about=about, calibration=calibration,
                                        shadow={"shadow": out["shadow"]} if shadow is not None else {},
                                        metrics_path=metrics_path, roc_path=roc_path)
    return out


def _score_with_text_signals(tgt, texts: list[str], kw: dict, progress: bool) -> ScoreResult:
    """:func:`score` for the TokenStats signals asked for, plus the text-only ones (SaMIA, n-gram
    coverage: :mod:`llm_mia.membership.text_scoring`) merged into each row's ``scores`` and ``flags``.
    With only text-only signals no log-prob is read (any endpoint API works); rows then hold
    ``id``, ``scores`` and ``flags`` and the per-token fields as None."""
    asked = kw.get("signals")
    text_sigs = [x for x in (asked or []) if x in TEXT_SIGNALS]
    if not text_sigs:
        with bar("scoring", None, enabled=progress) as adv:
            return score(tgt, texts, progress=adv, warn=False, **kw)
    others = [x for x in asked if x not in TEXT_SIGNALS]
    vals, flags = text_signal_scores(tgt, texts, text_sigs, seed=0)
    if others:
        with bar("scoring", None, enabled=progress) as adv:
            res = score(tgt, texts, progress=adv, warn=False, **dict(kw, signals=others))
    else:
        res = ScoreResult(rows=[{"n_scored_tokens": None, "nll": None, "perplexity": None, "zlib_bytes": None,
                                 "scores": {}, "flags": []} for _ in texts], target=None, inputs=None)
    for i, r in enumerate(res.rows):
        r["scores"].update({k: v[i] for k, v in vals.items()})
        r["flags"] = list(r["flags"]) + [f for f in flags[i] if f not in r["flags"]]
    return res


def _check_outputs(inputs: list, outputs: list[tuple]) -> None:
    """Check each ``(path, option)`` output (None: not asked) is writable, no input, and no other output.

    Raises:
        LlmMiaError: from :func:`llm_mia.core.io.check_output_file`, or two options naming one file.
    """
    for path, what in outputs:
        if path is not None:
            io.check_output_file(path, inputs=inputs, what=what)
    named = [(str(Path(p).resolve()), w) for p, w in outputs if p is not None]
    if len({p for p, _ in named}) < len(named):
        raise LlmMiaError(f"{' and '.join(w for _, w in named)} must be different files")


def _read_score_inputs(input_path, *, text_field: str, label_field: str | None, recall_prefix, calibrate_on,
                       dc_pdd_corpus, need_labels: bool) -> _ScoreFileInputs:
    """Read and check the texts, the ReCaLL prefix, the calibration texts and the DC-PDD corpus of ``score_file``.

    Raises:
        LlmMiaError: no texts, labels missing when ``need_labels`` (--metrics/--roc), an empty prefix,
            or any error of :func:`~llm_mia.data.texts.read_texts`.
    """
    data = read_texts(input_path, text_field=text_field, label_field=label_field)
    if not data.texts:
        raise LlmMiaError(f"{input_path}: no texts to score")
    if need_labels and data.labels is None:
        raise LlmMiaError(f"--metrics/--roc need a 0/1 '{label_field}' field on every row of {input_path}")
    prefix = io.read_text(recall_prefix).strip() if recall_prefix else None
    if recall_prefix and not prefix:
        raise LlmMiaError(f"{recall_prefix}: the ReCaLL prefix is empty")
    calib = read_texts(calibrate_on, text_field=text_field, label_field=None) if calibrate_on else None
    freq_texts = None
    if dc_pdd_corpus:
        freq_texts = read_texts(dc_pdd_corpus, text_field=text_field, label_field=None).texts
    return _ScoreFileInputs(data=data, prefix=prefix, calib=calib, freq_texts=freq_texts)


def _calibrate(rows: list[dict], cres: ScoreResult, target_fpr: float) -> dict[str, float]:
    """One threshold per signal at ``target_fpr`` on the non-member scores ``cres``; sets each row's ``member``.

    ``member`` maps each signal to score > threshold (None where the score is NaN).
    """
    thresholds = {}
    for sig in rows[0]["scores"]:
        thresholds[sig] = calibrate_threshold([r["scores"][sig] for r in cres.rows], target_fpr)
    for r in rows:
        r["member"] = {sig: (None if r["scores"][sig] != r["scores"][sig] else bool(r["scores"][sig] > t))
                       for sig, t in thresholds.items()}
    return thresholds


def _signal_metrics(rows: list[dict], labels: list[int], notes: list[str]) -> dict[str, dict]:
    """ROC metrics and a bootstrap AUC interval per signal; reference signals are excluded when ``notes`` warn.

    An error computing one signal's metrics (e.g. one class only) is its ``{"error": message}``.
    """
    per = {}
    for sig in rows[0]["scores"]:
        vals = [r["scores"][sig] for r in rows]
        if notes and "reference" in S.REGISTRY[sig].needs:  # constant: no ROC to rank
            per[sig] = {"excluded": notes[0]}
            continue
        try:
            m = roc_metrics(labels, vals)
            lo, hi = bootstrap_auc_ci(labels, vals)
            m["auc_ci"] = [lo, hi]
        except LlmMiaError as e:
            m = {"error": str(e)}
        per[sig] = m
    return per


def _write_metrics(rows: list[dict], labels: list[int], notes: list[str], *, about: dict, calibration: dict | None,
                   shadow: dict, metrics_path, roc_path) -> dict[str, dict]:
    """Compute :func:`_signal_metrics`, write them as JSON to ``metrics_path`` and the ROC plot to ``roc_path``.

    Args:
        rows: the scored rows (``scores`` per signal), in file order.
        labels: their 0/1 labels (member = 1).
        notes: the score warnings (a reference that is the target excludes the reference signals).
        about: ``model``, ``engine``, ``reference`` and ``input``, the first keys of the JSON.
        calibration: the ``calibration`` entry (non-member file, target FPR, thresholds), or None.
        shadow: ``{"shadow": summary}`` with shadow models, else ``{}``.
        metrics_path / roc_path: where to write (None: not asked).

    Returns:
        The metrics of each signal (``signals`` of the JSON).
    """
    per = _signal_metrics(rows, labels, notes)
    meta = {**about, "signals": per, "sign_convention": "higher score = more likely member; label member = 1",
            "warnings": notes, **shadow}
    if calibration is not None:
        meta["calibration"] = calibration
    if metrics_path:
        io.write_json(metrics_path, meta)
    if roc_path:
        roc_plot(roc_path, labels, {sig: [r["scores"][sig] for r in rows] for sig in rows[0]["scores"]})
    return per
