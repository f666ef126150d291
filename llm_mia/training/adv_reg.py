"""Adversarial regularisation for language models (``llm-mia train --defense adv-reg``).

Source: Nasr, Shokri, Houmansadr 2018, "Machine Learning with Membership Privacy using Adversarial
Regularization" (CCS), eq. 7 and Algorithm 1: ``min_f max_h  L_D(f) + lambda * G(f, h)`` with the
inference gain ``G = mean_{x in D} log h(f(x)) + mean_{x' in D'} log(1 - h(f(x')))`` over the
training set ``D`` and a reference set ``D'`` of the defender's non-members.

The unit is one training block (the rows of a training batch). The inference adversary ``h`` is an
MLP (3 -> 32 -> 1, ReLU, sigmoid output = probability "member") over three features of the model's
output on a block, all in nats and differentiable in the model (:func:`block_features`):
the mean next-token loss, the mean of the 20% largest token losses (Min-K% at k = 20%, as a loss)
and the mean entropy of the predicted next-token distribution. (The paper's adversary reads the
whole prediction vector and the label; a vocabulary-sized vector per token is not a fixed-size
input, so we give it these summaries, which are what the score-based attacks on LMs read.)

Each model step (Algorithm 1): first ``adv_k`` adversary steps maximising ``G`` (Adam, lr 3e-3) on
a member batch and a reference batch -- the first on the member batch the model is about to train
on, with features from the same forward pass (detached), later ones on extra batches -- then one
model step on ``L_D(f) + lambda * mean_{x in batch} log h(f(x))`` (only the member term depends on
the model's step, as in Algorithm 1). With ``lambda = 0`` the step is plain training's.

Reference set ``D'``: the texts of ``--reference-set FILE`` (JSONL, ``text`` fields) when given;
otherwise a seeded half of the evaluation file's documents (``heldout.jsonl`` for a target). The
model never trains on them (they only pass forward), but they are the audit's non-members too:
the adversary learnt to tell members from exactly those texts and the model was pushed to make
members look like them, a small optimistic bias for the audit's membership results on that half
(the recipe lists the half's indices). ``--adv-lambda`` default 1.0: the paper's range for its
image and tabular models is about 1 to 3 (3 in SELENA's re-run on Purchase100); a language
model's loss is a few nats per token and ``log h`` is of the same order, so 1 weights the two
alike.

Cost: each model step adds one forward pass on a reference batch (and ``adv_k - 1`` forward
passes on member + reference batches); the adversary itself is negligible.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import sha256_file
from llm_mia.models.heldout import encode_texts
from llm_mia.training.config import options_only_with
from llm_mia.training.train import _read_texts, run_loop

__all__ = ["MIN_K_FRACTION", "adversary_gain", "block_features", "check_config", "check_corpus",
           "make_adversary", "privacy_term", "train_loop"]

MIN_K_FRACTION = 0.2  # the Min-K% feature's k
_ADV_LR = 3e-3
_N_FEATURES = 3


def block_features(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The adversary's input for each block: (B, 3) = [mean token loss, mean of the largest 20% token
    losses, mean predictive entropy], nats, differentiable in ``logits``.

    Args:
        logits: (B, T, V) next-token logits; targets: (B, T) the tokens they predict.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    k = max(1, math.ceil(MIN_K_FRACTION * nll.shape[1]))
    top = nll.topk(k, dim=1).values.mean(dim=1)  # (B,)
    ent = -(logp.exp() * logp).sum(dim=-1).mean(dim=1)  # (B,)
    return torch.stack([nll.mean(dim=1), top, ent], dim=1)  # (B, 3)


def make_adversary(seed: int) -> torch.nn.Module:
    """The inference adversary h (3 -> 32 -> 1 logits), initialised from ``seed`` without touching the
    global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(_N_FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


def adversary_gain(member_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """Nasr et al.'s inference gain ``G = mean log h(members) + mean log(1 - h(references))``, with
    ``h = sigmoid(logits)``; (m,), (m',) -> scalar (<= 0; the adversary maximises it, its loss is -G)."""
    return (torch.nn.functional.logsigmoid(member_logits).mean()
            + torch.nn.functional.logsigmoid(-reference_logits).mean())


def privacy_term(adversary: torch.nn.Module, member_features: torch.Tensor, lam: float) -> torch.Tensor:
    """The model's regulariser ``lambda * mean_{x in batch} log h(f(x))`` (Algorithm 1), scalar; its
    gradient pushes the members' features to where h says "non-member"."""
    return lam * torch.nn.functional.logsigmoid(adversary(member_features).squeeze(-1)).mean()


def check_config(cfg) -> None:
    """Option checks (no files read): the adv-reg options only with ``--defense adv-reg``, in range."""

    if not options_only_with(cfg, "adv-reg", ("adv_lambda", "adv_k", "reference_set")):
        return
    if not (isinstance(cfg.adv_lambda, (int, float)) and math.isfinite(cfg.adv_lambda) and cfg.adv_lambda >= 0):
        raise LlmMiaError(f"--adv-lambda must be a number >= 0, got {cfg.adv_lambda!r}")
    if not (isinstance(cfg.adv_k, int) and cfg.adv_k >= 1):
        raise LlmMiaError(f"--adv-k (adversary steps per model step) must be a positive integer, got {cfg.adv_k!r}")


def _reference_texts(cfg, corpus) -> tuple[list[str], dict]:
    """D' and how it was chosen (for the recipe)."""

    if cfg.reference_set is not None:
        path = Path(cfg.reference_set)
        if not path.is_file():
            raise LlmMiaError(f"--reference-set file not found: {path}")
        texts = _read_texts(path)
        if not texts:
            raise LlmMiaError(f"--reference-set {path} holds no text")
        return texts, {"source": str(path.resolve()), "sha256": sha256_file(path), "n_documents": len(texts)}
    n = len(corpus.eval_texts)
    if n < 2:
        raise LlmMiaError(f"--defense adv-reg needs a reference set: {corpus.eval_file.name} has {n} document(s); "
                          "give --reference-set FILE")
    idx = sorted(torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 2))[: n // 2].tolist())
    return [corpus.eval_texts[i] for i in idx], {
        "source": f"a seeded half of {corpus.eval_file.name}", "indices": idx, "n_documents": len(idx),
        "bias": "these are also the audit's non-members: a small optimistic bias for membership results on them"}


def check_corpus(cfg, corpus) -> None:
    """Before any training: a reference set exists."""
    _reference_texts(cfg, corpus)


def train_loop(ctx):
    """The min-max loop of Algorithm 1 (module docstring) over the run's steps."""

    cfg = ctx.cfg
    ref_texts, ref_info = _reference_texts(cfg, ctx.corpus)
    ref_batches = ctx.batches(encode_texts(ctx.tokenizer, ref_texts), torch.Generator().manual_seed(cfg.seed + 3))
    extra_members = ctx.batches(ctx.train_docs, torch.Generator().manual_seed(cfg.seed + 4))
    h = make_adversary(cfg.seed + 5).to(ctx.device)
    h_opt = torch.optim.Adam(h.parameters(), lr=_ADV_LR)
    trajectory: list[dict] = []
    every = max(1, ctx.steps // 20)
    n = [0]

    def features_of(model, x):
        with torch.no_grad(), ctx.autocast():
            return block_features(model(input_ids=x).logits[:, :-1], x[:, 1:])

    def step_loss(model, x):
        n[0] += 1
        with ctx.autocast():
            logits = model(input_ids=x).logits[:, :-1]  # (B, T-1, V)
        feats = block_features(logits, x[:, 1:])  # (B, 3), with the model's graph
        lm = feats[:, 0].mean()  # every block has T-1 tokens: the mean token loss of the batch
        for j in range(cfg.adv_k):
            fm = feats.detach() if j == 0 else features_of(model, next(extra_members).to(ctx.device))
            fr = features_of(model, next(ref_batches).to(ctx.device))
            am, ar = h(fm).squeeze(-1), h(fr).squeeze(-1)
            gain = adversary_gain(am, ar)
            if j == 0 and (n[0] == 1 or n[0] % every == 0 or n[0] == ctx.steps):
                acc = ((am > 0).float().mean() + (ar <= 0).float().mean()) / 2  # balanced: (TPR + TNR) / 2
                trajectory.append({"step": n[0], "adversary_balanced_accuracy": round(acc.item(), 4),
                                   "gain": round(gain.item(), 4)})
            h_opt.zero_grad(set_to_none=True)
            (-gain).backward()
            h_opt.step()
        return lm + privacy_term(h, feats, cfg.adv_lambda), lm.item()

    model = ctx.new_model(cfg.seed)
    res = run_loop(ctx, model, ctx.batches(ctx.train_docs, torch.Generator().manual_seed(cfg.seed)),
                   steps=ctx.steps, step_loss=step_loss, stopper=ctx.stopper(model))
    res.info = {"adv_reg": {
        "lambda": cfg.adv_lambda, "adversary_steps_per_model_step": cfg.adv_k, "adversary_lr": _ADV_LR,
        "adversary": "MLP 3-32-1 over [mean token loss, mean of the largest 20% token losses, mean entropy] of a block",
        "objective": "min_f max_h L_D(f) + lambda * G(f, h) (Nasr et al. 2018, eq. 7, Algorithm 1)",
        "unit": "one training block", "reference_set": ref_info,
        "adversary_trajectory": trajectory,  # before each logged step's adversary update, on that step's batches
    }}
    return res
