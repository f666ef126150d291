"""The HF engine: a transformers causal LM and its tokenizer as :class:`LoadedModel`, the model contract's reference implementation."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import weights_sha256
from llm_mia.models.device import model_max_context
from llm_mia.models.generation import generate
from llm_mia.models.parallel import sharded_generate, sharded_stats
from llm_mia.models.stats import combine_stats, compute_token_stats, generation_key, stats_from_arrays
from llm_mia.models.tokenizer import decode, decode_continuation, encode, eos_ids


@dataclass
class LoadedModel:
    """A model ready to score: ``model`` in eval mode, its ``tokenizer`` (never mutated), and where it came from.

    ``base`` is the name or path of the base model of a PEFT adapter (None for a full model);
    ``adapter`` the adapter folder; ``folder`` the local folder the weights were read from (a hub
    id's cache snapshot included; the adapter folder for an adapter), ``base_folder`` the base's
    folder of an adapter; both None for in-memory objects.
    """

    model: torch.nn.Module
    tokenizer: object
    source: str
    max_context: int | None
    base: str | None = None
    adapter: str | None = None
    folder: Path | None = None
    base_folder: Path | None = None
    #: log-probs of generated samples, kept by :meth:`generate` until :meth:`token_stats` scores them
    _gen_cache: dict = field(default_factory=dict, repr=False)
    #: how many sequences :meth:`token_stats` read from the generation pass instead of a forward pass
    gen_reused: int = 0

    @functools.cached_property
    def weights_sha256(self) -> str | None:
        """Digest of every weight file (:func:`llm_mia.core.io.weights_sha256`); None for in-memory objects."""

        return weights_sha256(self.folder, base_folder=self.base_folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- the model contract (llm_mia.models.contract.LanguageModel)
    @property
    def bos_id(self) -> int:
        """The id a generation or a ``prepend_bos`` score starts from: BOS, else EOS."""
        tok = self.tokenizer
        for tid in (tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise LlmMiaError(f"model '{self.source}' has neither a BOS nor an EOS token")

    @property
    def vocab_size(self) -> int:
        """``len(tokenizer)``: the ids the tokenizer can decode."""
        return len(self.tokenizer)

    @property
    def eos_ids(self) -> list[int]:

        return eos_ids(self.tokenizer, self.model)

    def encode(self, texts, *, prepend_bos: bool = False) -> tuple[list[list[int]], int]:

        return encode(self.tokenizer, texts, prepend_bos=prepend_bos)

    def decode(self, ids) -> str:

        return decode(self.tokenizer, ids)

    def decode_continuation(self, prompt_ids, new_ids) -> str:

        return decode_continuation(self.tokenizer, prompt_ids, new_ids)

    def token_stats(self, sequences, *, context_lens=1, batch_size=None, stride=None, moments=True, progress=None):
        """Per-token statistics (:func:`~llm_mia.models.stats.compute_token_stats`). Without ``moments``, a
        sample this model generated with ``keep_logprobs`` is read from the generation pass (same
        context length, same ids), never run again; the others run as usual."""
        if self._gen_cache and not moments and self.logprob_transform is None:
            return self._stats_reusing(sequences, context_lens, batch_size, stride, progress)
        return self._compute(sequences, context_lens, batch_size, stride, moments, progress)

    def forget_generations(self) -> None:
        """Drop the log-probs kept by ``generate(..., keep_logprobs=True)`` that were not scored."""
        self._gen_cache.clear()

    def _stats_reusing(self, sequences, context_lens, batch_size, stride, progress):
        n = len(sequences)
        ctx = [context_lens] * n if isinstance(context_lens, int) else list(context_lens)
        if len(ctx) != n:
            raise LlmMiaError(f"context_lens has {len(ctx)} entries for {n} sequences")
        hits, todo = {}, []
        for i, s in enumerate(sequences):
            got = self._gen_cache.pop(generation_key(s, ctx[i]), None) if ctx[i] >= 1 else None
            if got is not None and len(got[0]) == len(s) - ctx[i]:
                hits[i] = got
            else:
                todo.append(i)
        self.gen_reused += len(hits)
        if progress is not None and hits:
            progress(len(hits))
        rest = self._compute([sequences[i] for i in todo], [ctx[i] for i in todo], batch_size, stride, False, progress)
        hit = sorted(hits)
        done = stats_from_arrays([sequences[i] for i in hit], [ctx[i] for i in hit], [hits[i][0] for i in hit],
                                 [hits[i][1] for i in hit])
        return combine_stats(n, [(hit, done), (todo, rest)])

    def _compute(self, sequences, context_lens, batch_size, stride, moments, progress):
        # data-parallel under `accelerate launch` (llm_mia.models.parallel); one process: the plain call
        return sharded_stats(lambda seqs, ctx, prog: compute_token_stats(
            self.model, seqs, context_lens=ctx, batch_size=batch_size, pad_id=self.bos_id, max_context=self.max_context,
            stride=stride, moments=moments, progress=prog, logprob_transform=self.logprob_transform),
            sequences, context_lens, progress)

    #: which engine runs the model (``--engine``): "hf" here, "vllm" in :class:`~llm_mia.models.vllm_engine.VllmModel`
    engine = "hf"

    @property
    def engine_info(self) -> dict:
        """What the reports record about the engine (the vLLM engine adds its cross-check figures)."""
        return {"engine": "hf"}

    #: a function of (m, V) fp32 log-probs returning what the caller may see (None: everything);
    #: :class:`llm_mia.serving.output_limits.ApiView` sets it to an API output limit
    logprob_transform = None

    @property
    def keeps_logprobs(self) -> bool:
        """Whether ``generate(..., keep_logprobs=True)`` keeps the samples' log-probs for :meth:`token_stats`."""
        return self.logprob_transform is None

    def generate(self, prompts, *, max_new_tokens: int, **kw):

        kw.setdefault("pad_id", self.bos_id)
        kw.setdefault("eos_id", self.eos_ids or None)
        kw.setdefault("vocab_limit", self.vocab_size)
        keep = kw.pop("keep_logprobs", False)
        seeds = kw.pop("seeds", None)  # one per prompt: sharded with the prompts under `accelerate launch`
        gens = sharded_generate(lambda ps, ss: generate(self.model, ps, max_new_tokens=max_new_tokens, seeds=ss, **kw),
                                prompts, seeds)
        if keep:  # scored later by token_stats from these values (extraction)
            for g in gens:
                if g.logprob is not None and g.new_ids:
                    self._gen_cache[generation_key(g.prompt + g.new_ids, len(g.prompt))] = (
                        torch.tensor(g.logprob, dtype=torch.float32), torch.tensor(g.top1, dtype=torch.bool))
        return gens


def use_fused_activations(model: torch.nn.Module) -> int:
    """Replace GPT-2's ``gelu_new`` modules by PyTorch's fused tanh GELU, in place, for inference.

    ``gelu_new`` (transformers' ``NewGELUActivation``) computes 0.5 x (1 + tanh(sqrt(2/pi)
    (x + 0.044715 x^3))) as a chain of element-wise operations; ``torch.nn.functional.gelu(x,
    approximate="tanh")`` is the same formula in one kernel (results agree to ~1e-7 relative). On a
    CPU the chain is ~10 % of a GPT-2 forward pass. Returns the number of modules replaced.
    """
    from transformers.activations import ACT2CLS, NewGELUActivation

    fused = ACT2CLS["gelu_pytorch_tanh"]
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, fused())
                n += 1
    return n


def from_objects(model: torch.nn.Module, tokenizer: object, *, source: str = "<in-memory>",
                 fused_activations: bool = False) -> LoadedModel:
    """Wrap an already-built model and tokenizer (tests, notebooks).

    The model is put in eval mode and otherwise left as it is, unless ``fused_activations`` asks for
    :func:`use_fused_activations` (which :func:`load_model` always applies to the models it loads).
    """
    if fused_activations:
        use_fused_activations(model)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, max_context=model_max_context(model))


def reference_is_target(target: LoadedModel, reference: LoadedModel | None) -> str | None:
    """Why ``reference`` is the target itself (BUG-21 a), or None when it is a different model.

    The same object, the same weights digest (:func:`llm_mia.core.io.weights_sha256`), or, for in-memory
    models, parameters equal tensor by tensor (the comparison stops at the first difference).
    A reference equal to the target makes every reference signal a constant.
    """
    if reference is None:
        return None
    if reference is target or reference.model is target.model:
        return "it is the same model object"
    a, b = target.weights_sha256, reference.weights_sha256
    if a is not None and b is not None:
        return f"both have weights sha256 {a[:12]}..." if a == b else None
    pa, pb = dict(target.model.named_parameters()), dict(reference.model.named_parameters())
    if pa.keys() != pb.keys():
        return None
    for k, v in pa.items():
        w = pb[k]
        if v.shape != w.shape or not torch.equal(v.detach().cpu(), w.detach().cpu()):
            return None
    return "their weights are identical"
