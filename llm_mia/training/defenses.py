"""Training-time defences: DP-SGD (per-sample clipping + Gaussian noise) and training-data dedup.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1)
-----------------------------------------------------------------------------------
The privacy unit is one training *block* (``n_ctx`` tokens of the document stream, cut once with a
seeded order; blocks are not re-cut between epochs, so a record stays one record). Each optimizer
step samples every block independently with probability ``q = batch_size / N`` (Poisson sampling,
as the RDP analysis assumes), splits the sampled blocks into micro-batches, computes per-sample
gradients with opacus's ``GradSampleModule`` (plus the grad sampler below for transformers'
``Conv1D``), clips each sample's whole gradient to L2 norm ``C``, sums, adds ``N(0, (sigma C)^2)``
per coordinate once per *optimizer* step and divides by the expected batch size ``q N``. An empty
sample (it happens on small corpora) still takes the noisy step. The accountant is opacus's RDP
accountant (Mironov 2017; Mironov, Talwar, Zhang 2019) fed ``(sigma, q, optimizer steps)``.

A secret inserted ``r`` times sits in ``r`` different blocks: record-level (epsilon, delta)-DP
bounds it only by group privacy, ``r * epsilon``.

Noise comes from a seeded ``torch.Generator`` so that runs are reproducible; that is not a
cryptographically secure source (opacus's ``secure_mode`` is), which matters for a real release
but not for measuring the defence.

Dedup (Lee et al. 2022, "Deduplicating Training Data Makes Language Models Better"; Kandpal et
al. 2022, "Deduplicating Training Data Mitigates Privacy Risks in Language Models")
---------------------------------------------------------------------------------------------
Rules, applied to the training documents in file order (earlier wins):

1. exact duplicates (same :func:`llm_mia.data.dedup.normalize_text`) are dropped;
2. near duplicates: a document whose word trigrams are at least ``near_threshold`` contained in
   one earlier kept document is dropped (the :func:`llm_mia.data.dedup.dedup` containment rule; two
   documents whose PII values differ are never merged);
3. repeated substrings: every span of at least ``min_span_chars`` characters that already occurred
   in the kept text (an earlier document, or earlier in the same one) is cut out, so only its
   first occurrence is trained on. Lee et al.'s ExactSubstr uses 50 BPE tokens (~200 characters);
   the planted secrets of this project are single sentences of 30-60 characters, which a 50-token
   rule would never touch, so the default here is 30 characters (a choice, reported in the
   recipe with the counts it removed). Windows are compared by exact string equality, found with
   a hash table of all ``min_span_chars``-character windows (O(total characters)).

Goldfish loss (Hans et al. 2024, "Be like a Goldfish, Don't Memorize! Mitigating Memorization in
Generative LLMs", arXiv 2406.10209, Section 3.1, "Robust handling of duplicate passages with hashing")
-----------------------------------------------------------------------------------------------------
The next-token loss leaves out a pseudo-random 1/k of the token positions, so that the model never
receives a gradient on them and cannot reproduce a training passage verbatim. The drop is decided by
a hash of the ``h`` tokens that precede the position (the paper's hashed mask, k = 4 and h = 13 as in
its main experiments): the same context always drops the same token, however often and wherever a
passage is repeated, which a random mask redrawn each time would not do (the repeats would together
cover every token). Here: the label at position ``i`` of a block is dropped when
``blake2b(x[i-h:i] as little-endian int64, 8-byte digest) mod k == 0``; a position with fewer than
``h`` preceding tokens in its block is always kept (a choice; the paper's code also keeps the first
tokens of a sequence).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.data.dedup import dedup

__all__ = ["DEFENSES", "DPRun", "DPSGD", "dp_train_loop", "TrainingDedup", "dedup_training_texts", "dp_epsilon",
           "goldfish_keep_mask", "goldfish_loss", "noise_for_epsilon",
           "per_sample_losses", "poisson_batches", "register_conv1d_grad_sampler", "wrap_for_dp"]

#: The values of ``llm-mia train --defense``.
DEFENSES = ("none", "dp", "dedup", "selena", "adv-reg", "goldfish")

# ----------------------------------------------------------------------------------------------
# DP-SGD

_REGISTERED = False


def register_conv1d_grad_sampler() -> None:
    """Teach opacus the per-sample gradient of transformers' ``Conv1D`` (GPT-2's linear layers).

    ``Conv1D`` computes ``y = x W + b`` with ``W`` of shape (in, out) -- the transpose of
    ``nn.Linear``. For activations ``x`` (B, T, in) and output gradients ``g`` (B, T, out), sample
    b's gradients are ``dW_b = sum_t x[b, t]^T g[b, t]`` (in, out) and ``db_b = sum_t g[b, t]``
    (out,). Idempotent.

    Raises:
        LlmMiaError: opacus is not installed.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        from opacus.grad_sample import register_grad_sampler
    except ImportError:
        raise LlmMiaError("--defense dp needs opacus (pip install opacus)") from None
    from transformers.pytorch_utils import Conv1D

    @register_grad_sampler(Conv1D)
    def _conv1d_grad_sample(layer, activations, backprops):  # noqa: ANN001 (opacus's signature)
        x = activations[0]  # (B, T, in) or (B, in)
        g = backprops  # (B, T, out) or (B, out)
        if x.dim() == 2:
            x, g = x.unsqueeze(1), g.unsqueeze(1)
        out = {}
        if layer.weight.requires_grad:
            out[layer.weight] = torch.einsum("bti,bto->bio", x, g)  # (B, in, out)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.sum(dim=1)  # (B, out)
        return out

    _REGISTERED = True


def wrap_for_dp(model: torch.nn.Module):
    """Wrap ``model`` in opacus's ``GradSampleModule`` (loss reduction "sum").

    After a backward pass of ``per_sample_losses(wrapped, x).sum()``, every trainable parameter
    ``p`` holds ``p.grad_sample`` of shape (B, *p.shape): sample b's gradient of its own loss. A
    weight used twice (GPT-2's tied ``wte`` / ``lm_head``) gets the sum over both uses. The wrapped
    module shares its parameters with ``model`` (save ``model``, never the wrapper: no ``_module.``
    prefix). Raises LlmMiaError when opacus is missing or a trainable layer has no grad sampler.
    """
    register_conv1d_grad_sampler()
    from opacus import GradSampleModule

    try:
        return GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    except NotImplementedError as e:
        raise LlmMiaError(f"--defense dp: opacus cannot compute per-sample gradients of this model: "
                          f"{' '.join(str(e).split())[:200]}") from None


def per_sample_losses(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each row of ``x`` (B, T) under ``model``: (B,), nats.

    Row b's value equals ``model(input_ids=x[b:b+1], labels=x[b:b+1]).loss``. Position ids are
    passed explicitly with shape (B, T): a (1, T) broadcast would give the position embedding a
    per-sample gradient with a batch dimension of 1.
    """
    B, T = x.shape
    pos = torch.arange(T, device=x.device).expand(B, T)  # (B, T)
    logits = model(input_ids=x, position_ids=pos).logits[:, :-1].float()  # (B, T-1, V)
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                            reduction="none")  # (B*(T-1),)
    return nll.view(B, T - 1).mean(dim=1)  # (B,)


def dp_epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """epsilon of ``steps`` Poisson-subsampled Gaussian steps (opacus's RDP accountant, default orders).

    Args:
        noise_multiplier: sigma, noise std / clipping norm (> 0).
        sample_rate: q, the probability that one record is in one step's batch, in (0, 1].
        steps: number of *optimizer* steps (noise additions), not micro-batches.
        delta: target delta in (0, 1).

    Returns:
        epsilon (>= 0); +inf when ``noise_multiplier`` is 0 and steps > 0.
    Source: Mironov 2017 (RDP); Mironov, Talwar, Zhang 2019 (sampled Gaussian mechanism).
    """
    if steps == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    return float(acc.get_epsilon(delta=float(delta)))


def noise_for_epsilon(*, epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to opacus's search tolerance) giving ``epsilon`` after ``steps`` steps.

    Raises:
        LlmMiaError: epsilon or delta out of range.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise LlmMiaError(f"--epsilon must be a positive number, got {epsilon}")
    if not 0 < delta < 1:
        raise LlmMiaError(f"--delta must be in (0, 1), got {delta}")
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant="rdp", epsilon_tolerance=0.005))


def poisson_batches(n: int, *, sample_rate: float, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` index tensors: each of ``range(n)`` included independently with probability ``sample_rate``.

    Sizes vary and may be 0 (an empty long tensor). Indices ascending within a step.
    """
    for _ in range(steps):
        keep = torch.rand(n, generator=generator) < sample_rate  # (n,)
        yield keep.nonzero().view(-1)


@dataclass
class DPSGD:
    """One DP-SGD optimizer step at a time, over a model wrapped by :func:`wrap_for_dp`.

    Use: for each micro-batch of a step's Poisson sample call :meth:`accumulate`, then
    :meth:`finish` (which sets ``p.grad`` of every trainable parameter) and the optimizer's
    ``step()``. ``expected_batch_size`` is ``q N``: dividing by it (not by the realised batch
    size) keeps the sensitivity fixed, as opacus does for Poisson sampling.
    """

    module: torch.nn.Module  # the GradSampleModule
    max_grad_norm: float  # C, per-sample L2 clipping norm
    noise_multiplier: float  # sigma
    expected_batch_size: float
    generator: torch.Generator
    n_clipped: int = 0  # samples whose norm exceeded C, over the whole run
    n_samples: int = 0
    _sums: dict = field(default_factory=dict)

    def __post_init__(self):
        self.params = [p for p in self.module.parameters() if p.requires_grad]  # a tied tensor once

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample losses of micro-batch ``x`` (b, T) (returned, detached, (b,)); adds its clipped gradients."""
        losses = per_sample_losses(self.module, x)  # (b,)
        with warnings.catch_warnings():  # opacus's full backward hooks on a module whose inputs are ids
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses.sum().backward()
        b = x.shape[0]
        gs = [p.grad_sample for p in self.params]
        norms = torch.stack([g.reshape(b, -1).norm(dim=1) for g in gs]).norm(dim=0)  # (b,)
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # (b,)
        self.n_clipped += int((norms > self.max_grad_norm).sum())
        self.n_samples += b
        for p, g in zip(self.params, gs):
            s = torch.einsum("b,b...->...", factor, g)
            self._sums[p] = self._sums[p] + s if p in self._sums else s
            p.grad_sample = None
            p.grad = None
        return losses.detach()

    def finish(self) -> None:
        """Set each ``p.grad`` to (sum of clipped grads + N(0, (sigma C)^2)) / expected batch size."""
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            s = self._sums.get(p)
            if s is None:
                s = torch.zeros_like(p)
            if std > 0:
                noise = torch.normal(0.0, std, size=p.shape, generator=self.generator).to(p.device, p.dtype)
                s = s + noise
            p.grad = s / self.expected_batch_size
        self._sums = {}


@dataclass
class DPRun:
    """What :func:`dp_train_loop` did: per-step mean losses (NaN for an empty step) and the accounting."""

    losses: list[float]
    accounting: dict


def dp_train_loop(model: torch.nn.Module, blocks: torch.Tensor, *, steps: int, batch_size: int, micro_batch: int,
                  noise_multiplier: float, max_grad_norm: float, delta: float, optimizer, scheduler=None,
                  generator: torch.Generator, on_step=None) -> DPRun:
    """Train ``model`` with DP-SGD on the records ``blocks`` (N, T) for up to ``steps`` optimizer steps.

    Each step draws a Poisson sample with rate ``q = min(1, batch_size / N)``, runs it in
    micro-batches of at most ``micro_batch`` records (the sampling unit stays the record and the
    step stays the optimizer step: micro-batches change neither q nor the step count), then one
    noisy update (:class:`DPSGD`). ``on_step(step, loss) -> bool`` may stop the run early (True);
    the accountant then counts only the steps taken. ``model`` is left unwrapped (hooks removed).

    Returns:
        :class:`DPRun`; ``accounting`` holds ``sample_rate``, ``steps`` (noisy optimizer steps
        taken), ``noise_multiplier``, ``max_grad_norm``, ``delta``, ``epsilon`` (RDP accountant),
        ``n_records``, ``expected_batch_size``, ``micro_batch``, ``empty_steps``,
        ``clipped_fraction``.
    Raises:
        LlmMiaError: no records, or non-positive batch sizes / clipping norm, negative noise.
    """
    N = int(blocks.shape[0])
    if N < 1:
        raise LlmMiaError("DP training needs at least one training record")
    if batch_size < 1 or micro_batch < 1:
        raise LlmMiaError(f"batch sizes must be positive, got batch {batch_size}, micro-batch {micro_batch}")
    if not max_grad_norm > 0:
        raise LlmMiaError(f"--max-grad-norm must be positive, got {max_grad_norm}")
    if noise_multiplier < 0:
        raise LlmMiaError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    q = min(1.0, batch_size / N)
    gsm = wrap_for_dp(model)
    dp = DPSGD(gsm, max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier, expected_batch_size=q * N,
               generator=generator)
    device = next(model.parameters()).device
    losses: list[float] = []
    empty = 0
    taken = 0
    gsm.train()
    try:
        for step, idx in enumerate(poisson_batches(N, sample_rate=q, steps=steps, generator=generator), 1):
            total, count = 0.0, 0
            for i in range(0, len(idx), micro_batch):
                x = blocks[idx[i:i + micro_batch]].to(device)  # (b, T)
                l = dp.accumulate(x)
                total += float(l.sum())
                count += len(l)
            empty += count == 0
            dp.finish()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            taken = step
            loss = total / count if count else math.nan
            if count and not math.isfinite(loss):
                raise LlmMiaError(f"training diverged at step {step} (loss {loss}); try a lower learning rate")
            losses.append(loss)
            if on_step is not None and on_step(step, loss):
                break
    finally:
        gsm.to_standard_module()  # removes the hooks and every grad_sample attribute
    acc = {"mechanism": "DP-SGD, Poisson sampling, per-record clipping, Gaussian noise (Abadi et al. 2016)",
           "accountant": "rdp (opacus RDPAccountant, default orders)", "privacy_unit": "one training block",
           "sample_rate": q, "steps": taken, "noise_multiplier": noise_multiplier, "max_grad_norm": max_grad_norm,
           "delta": delta, "epsilon": dp_epsilon(noise_multiplier=noise_multiplier, sample_rate=q, steps=taken,
                                                 delta=delta),
           "n_records": N, "expected_batch_size": q * N, "micro_batch": micro_batch, "empty_steps": int(empty),
           "clipped_fraction": dp.n_clipped / dp.n_samples if dp.n_samples else None}
    return DPRun(losses=losses, accounting=acc)


# ----------------------------------------------------------------------------------------------
# Training-data dedup


@dataclass
class TrainingDedup:
    """What :func:`dedup_training_texts` did; ``counts()`` goes into recipe.json."""

    texts: list[str]
    n_in: int
    exact_documents_removed: int
    near_documents_removed: int
    spans_removed: int
    chars_removed: int
    chars_in: int
    min_span_chars: int
    near_threshold: float

    def counts(self) -> dict:
        return {"rule": "exact docs, near docs (trigram containment), repeated spans (first occurrence kept)",
                "documents_in": self.n_in, "documents_out": len(self.texts),
                "exact_documents_removed": self.exact_documents_removed,
                "near_documents_removed": self.near_documents_removed,
                "spans_removed": self.spans_removed, "chars_removed": self.chars_removed,
                "chars_in": self.chars_in, "min_span_chars": self.min_span_chars,
                "near_threshold": self.near_threshold}


def _cut_repeated_spans(texts: Sequence[str], k: int) -> tuple[list[str], int, int]:
    """Cut every k-character window already seen (earlier text or earlier in the same text).

    Positions covered by a repeated window are removed; adjacent/overlapping repeated windows make
    one span. Returns (new texts, number of spans cut, characters cut).
    """
    seen: set[str] = set()
    out, n_spans, n_chars = [], 0, 0
    for t in texts:
        cut = bytearray(len(t))  # 1 = position inside a repeated window
        local: set[str] = set()
        for i in range(len(t) - k + 1):
            w = t[i:i + k]
            if w in seen or w in local:
                cut[i:i + k] = b"\x01" * k
            else:
                local.add(w)
        seen |= local
        if any(cut):
            inside = False
            for c in cut:
                if c and not inside:
                    n_spans += 1
                inside = bool(c)
            n_chars += sum(cut)
            t = "".join(ch for ch, c in zip(t, cut) if not c)
        out.append(t)
    return out, n_spans, n_chars


def dedup_training_texts(texts: Sequence[str], *, min_span_chars: int = 30,
                         near_threshold: float = 0.8) -> TrainingDedup:
    """Apply the dedup defence's three rules (module docstring) to the training documents.

    Args:
        texts: training documents in file order (earlier wins).
        min_span_chars: repeated spans of at least this many characters are cut (>= 8).
        near_threshold: trigram containment that makes a near-duplicate document, in (0, 1].

    Returns:
        :class:`TrainingDedup`: the kept texts (spans cut, empty results dropped) and the counts.

    Raises:
        LlmMiaError: ``min_span_chars`` < 8 or ``near_threshold`` outside (0, 1].
    """

    if not isinstance(min_span_chars, int) or min_span_chars < 8:
        raise LlmMiaError(f"min_span_chars must be an integer >= 8, got {min_span_chars!r}")
    if not 0 < near_threshold <= 1:
        raise LlmMiaError(f"near_threshold must be in (0, 1], got {near_threshold}")
    texts = list(texts)
    res = dedup(texts, threshold=near_threshold)
    n_exact = sum(1 for r in res.reason.values() if r == "exact")
    n_near = sum(1 for r in res.reason.values() if r == "near")
    kept = res.kept_texts(texts)
    cut, n_spans, n_chars = _cut_repeated_spans(kept, min_span_chars)
    cut = [t for t in cut if t.strip()]
    return TrainingDedup(texts=cut, n_in=len(texts), exact_documents_removed=n_exact,
                         near_documents_removed=n_near, spans_removed=n_spans, chars_removed=n_chars,
                         chars_in=sum(map(len, texts)), min_span_chars=min_span_chars, near_threshold=near_threshold)


# ----------------------------------------------------------------------------------------------
# Goldfish loss


def _goldfish_drops(context: Sequence[int], k: int) -> bool:
    """Whether the token after ``context`` (its h preceding token ids) is dropped: the hash mod k is 0."""
    digest = hashlib.blake2b(b"".join(int(t).to_bytes(8, "little", signed=True) for t in context), digest_size=8)
    return int.from_bytes(digest.digest(), "little") % k == 0


def goldfish_keep_mask(x: torch.Tensor, *, k: int = 4, h: int = 13) -> torch.Tensor:
    """Which labels of the blocks ``x`` (B, T) of token ids the Goldfish loss keeps: bool (B, T).

    ``mask[b, i]`` is False when position ``i >= h`` is dropped (module docstring: the hash of
    ``x[b, i-h:i]`` mod ``k`` is 0), True otherwise; position 0 is never a label but is True.
    Deterministic: equal contexts give equal decisions in any block, run or process.
    Source: Hans et al. 2024, arXiv 2406.10209, Section 3.1 (hashed mask).

    Raises:
        LlmMiaError: ``k`` < 2 or ``h`` < 1.
    """
    if not (isinstance(k, int) and k >= 2):
        raise LlmMiaError(f"--goldfish-k (drop one token in k) must be an integer >= 2, got {k!r}")
    if not (isinstance(h, int) and h >= 1):
        raise LlmMiaError(f"--goldfish-h (hash context width) must be an integer >= 1, got {h!r}")
    keep = torch.ones(x.shape, dtype=torch.bool)
    rows = x.detach().cpu().tolist()
    for b, row in enumerate(rows):
        for i in range(h, len(row)):
            if _goldfish_drops(row[i - h:i], k):
                keep[b, i] = False
    return keep.to(x.device)


def goldfish_loss(logits: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over the kept labels only: a scalar tensor.

    Args:
        logits: (B, T, V) the model's logits on ``x``; position t predicts ``x[:, t+1]``.
        x: (B, T) token ids.
        keep: (B, T) :func:`goldfish_keep_mask` of ``x`` (column 0 is ignored: it is no label).

    Returns:
        ``sum over kept (b, i >= 1) of -log p(x[b, i] | x[b, :i]) / number kept``; NaN when no
        label is kept (the caller's divergence check stops the run).
    Source: Hans et al. 2024, arXiv 2406.10209, Section 3.1, eq. 2 (normalised by the kept count).
    """
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                            x[:, 1:].reshape(-1), reduction="none")  # (B*(T-1),)
    k = keep[:, 1:].reshape(-1).to(nll.dtype)
    return (nll * k).sum() / k.sum()
