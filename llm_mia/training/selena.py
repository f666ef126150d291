"""SELENA for language models: Split-AI, then self-distillation (``llm-mia train --defense selena``).

Source: Tang, Mahloujifar, Song, Shejwalkar, Nasr, Houmansadr, Mittal 2022, "Mitigating Membership
Inference Attacks by Self-Distillation Through a Novel Ensemble Architecture" (USENIX Security),
section 3.

Split-AI (section 3.1). The unit is one training document (one non-empty ``text`` of
``train.jsonl``, in file order; after dedup when that is also applied). Each document ``i`` is
assigned ``L`` of the ``K`` sub-models that must NOT see it: the first ``L`` entries of a seeded
random permutation of ``range(K)`` (documents in order, one permutation each, from one
``torch.Generator`` seeded with the run's seed; the paper's construction: a random ``L``-subset
per example, so every training document is excluded from exactly ``L`` sub-models). Sub-model
``k`` trains, with the run's recipe, on the documents whose excluded set does not hold ``k``
(about ``N (K - L) / K`` of them). If a draw leaves a sub-model with no document (small corpora)
the whole draw is repeated with the same generator (``draws`` in the recipe).

Split-AI's answer for a token of training document ``i`` is the average of the next-token
probability distributions (softmax of the logits, in fp32, over the whole vocabulary) of the ``L``
sub-models in ``i``'s excluded set, each given the same context:
``p(. | ctx) = (1/L) sum_{k in E(i)} softmax(z_k(ctx))`` -- probabilities are averaged, not logits.
In a training block, which mixes documents, each predicted token is routed by the document it
belongs to (a document's EOS belongs to it); the context before it may hold the end of another
document, which the answering sub-models may have seen (that reveals nothing about document
``i``). For a text that is not a training document the paper routes to the excluded set of a
random training example; :meth:`SplitAIPlan.route_text` makes that choice deterministic: the
training document ``sha256(text) mod N``.

Self-distillation (section 3.2): the saved model is a fresh model (same initialisation recipe and
seed as an undefended run) trained on the training documents against Split-AI's soft labels only
(no hard labels): per predicted token ``KL(p_SplitAI || q_student)``, averaged over the block's
tokens (:func:`distillation_loss`; the gradient equals that of the paper's soft cross-entropy,
which differs by the teacher's entropy). The logged ``loss`` is the student's ordinary next-token
loss on the same batch, so ``train_loss`` compares with other defences.

Cost: ``K`` sub-model trainings of ``selena_sub_steps`` steps (default: the run's steps) plus one
distillation of the run's steps, each of whose steps also runs the ``K`` sub-models forward.
The recipe's ``train_seconds``, ``epochs`` and ``tokens_per_second`` count every model trained
(the sub-models and the distilled one). What it does not protect: a secret repeated in several documents is seen by sub-models that are
not excluded for the other copies, so the teacher still knows it (record-level, like DP's group
privacy).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.training.config import options_only_with
from llm_mia.training.train import LoopResult, run_loop

__all__ = ["SplitAIPlan", "check_config", "check_corpus", "distillation_loss", "split_ai_assignment", "split_ai_probs",
           "train_loop"]

_MAX_DRAWS = 1000


@dataclass(frozen=True)
class SplitAIPlan:
    """Which sub-models see and answer which training document.

    ``excluded[i]``: the sorted ``L`` sub-models that never train on document ``i`` and answer for it.
    """

    k: int
    l: int
    excluded: tuple[tuple[int, ...], ...]
    draws: int = 1

    def training_documents(self, sub: int) -> list[int]:
        """The documents sub-model ``sub`` trains on (ascending)."""
        return [i for i, e in enumerate(self.excluded) if sub not in e]

    def route_text(self, text: str) -> tuple[int, ...]:
        """The sub-models that answer for a non-training text: the excluded set of training document
        ``int(sha256(text utf-8), 16) mod N``."""
        h = int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16)
        return self.excluded[h % len(self.excluded)]

    def weights(self, owners: torch.Tensor) -> torch.Tensor:
        """Averaging weights (..., K) for tokens owned by documents ``owners`` (...): 1/L on each of the
        owner's excluded sub-models, 0 elsewhere."""
        table = torch.zeros(len(self.excluded), self.k)  # (N, K)
        for i, e in enumerate(self.excluded):
            table[i, list(e)] = 1.0 / self.l
        return table.to(owners.device)[owners]

    def to_recipe(self) -> dict:
        return {"k": self.k, "l": self.l, "draws": self.draws,
                "excluded": [list(e) for e in self.excluded],
                "sub_model_documents": [len(self.training_documents(s)) for s in range(self.k)]}


def split_ai_assignment(n_docs: int, k: int, l: int, seed: int) -> SplitAIPlan:
    """The paper's assignment: document ``i`` is excluded from the first ``l`` entries of the ``i``-th
    ``torch.randperm(k)`` of a generator seeded with ``seed``; redrawn while a sub-model has no document.

    Raises:
        LlmMiaError: ``k < 2``, ``l`` outside ``[1, k - 1]``, fewer than ``k`` documents, or no
            draw in 1000 gives every sub-model a document.
    """
    _check_k_l(k, l)
    if n_docs < k:
        raise LlmMiaError(f"--defense selena needs at least K = {k} training documents, got {n_docs}")
    g = torch.Generator().manual_seed(seed)
    for draw in range(1, _MAX_DRAWS + 1):
        excluded = tuple(tuple(sorted(torch.randperm(k, generator=g)[:l].tolist())) for _ in range(n_docs))
        plan = SplitAIPlan(k, l, excluded, draws=draw)
        if all(plan.training_documents(s) for s in range(k)):
            return plan
    raise LlmMiaError(f"--defense selena: {n_docs} documents cannot give each of K = {k} sub-models a document; "
                      "use a smaller K or L")


def split_ai_probs(sub_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Split-AI's next-token distribution: ``sum_k weights[..., k] * softmax(sub_logits[k])``.

    Args:
        sub_logits: (K, B, T, V) logits of the K sub-models on the same tokens.
        weights: (B, T, K) averaging weights (:meth:`SplitAIPlan.weights`; each row sums to 1).
    Returns:
        (B, T, V) probabilities, fp32.
    """
    probs = torch.softmax(sub_logits.float(), dim=-1)  # (K, B, T, V)
    return torch.einsum("btk,kbtv->btv", weights.float(), probs)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``KL(teacher || student) = sum_v p_v (log p_v - log q_v)``, nats (0 log 0 = 0).

    Args:
        student_logits: (B, T, V); teacher_probs: (B, T, V), rows summing to 1.
    """
    logq = torch.log_softmax(student_logits.float(), dim=-1)
    kl = torch.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * logq  # (B, T, V)
    return kl.sum(dim=-1).mean()


def _check_k_l(k, l) -> None:
    if not (isinstance(k, int) and k >= 2):
        raise LlmMiaError(f"--selena-k must be an integer >= 2, got {k!r}")
    if not (isinstance(l, int) and 1 <= l < k):
        raise LlmMiaError(f"--selena-l must be an integer in [1, K-1] = [1, {k - 1}], got {l!r}")


def check_config(cfg) -> None:
    """Option checks (no files read): the SELENA options only with ``--defense selena``, K and L in range."""

    if not options_only_with(cfg, "selena", ("selena_k", "selena_l", "selena_sub_steps")):
        return
    _check_k_l(cfg.selena_k, cfg.selena_l)
    if cfg.selena_sub_steps is not None and not (isinstance(cfg.selena_sub_steps, int) and cfg.selena_sub_steps >= 1):
        raise LlmMiaError(f"--selena-sub-steps must be a positive integer, got {cfg.selena_sub_steps!r}")
    if cfg.early_stopping is not None:
        raise LlmMiaError("--early-stopping is not supported with --defense selena")


def check_corpus(cfg, corpus) -> None:
    """Before any training: the documents can be split among the K sub-models."""
    split_ai_assignment(len(corpus.train_texts), cfg.selena_k, cfg.selena_l, cfg.seed)


def train_loop(ctx):
    """Train the K Split-AI sub-models, then distil the saved model from them (module docstring)."""

    cfg = ctx.cfg
    docs: Sequence[list[int]] = ctx.train_docs
    plan = split_ai_assignment(len(docs), cfg.selena_k, cfg.selena_l, cfg.seed)
    sub_steps = cfg.selena_sub_steps or ctx.steps
    subs, sub_info, seconds, seen = [], [], 0.0, 0
    for s in range(plan.k):
        idx = plan.training_documents(s)
        m = ctx.new_model(cfg.seed + 1 + s)
        gen = torch.Generator().manual_seed(cfg.seed + 1 + s)
        r = run_loop(ctx, m, ctx.batches([docs[i] for i in idx], gen), steps=sub_steps,
                     what=f"{ctx.what} split-AI {s + 1}/{plan.k}")
        m.eval().requires_grad_(False)
        subs.append(m)
        seconds, seen = seconds + r.seconds, seen + r.tokens_seen
        tail = r.losses[-max(1, sub_steps // 10):]
        sub_info.append({"documents": len(idx), "steps": r.steps, "train_loss": sum(tail) / len(tail),
                         "heldout_loss": ctx.eval_loss(m, max_tokens=16_384)})
    kl_log: list[dict] = []
    kl_seen: list[int] = []

    def step_loss(model, batch):
        x, owners = batch  # (B, T), (B, T)
        with torch.no_grad(), ctx.autocast():
            z = torch.stack([m(input_ids=x).logits[:, :-1] for m in subs])  # (K, B, T-1, V)
        teacher = split_ai_probs(z, plan.weights(owners[:, 1:]))  # (B, T-1, V)
        with ctx.autocast():
            logits = model(input_ids=x).logits[:, :-1].float()  # (B, T-1, V)
        loss = distillation_loss(logits, teacher)
        nll = torch.nn.functional.cross_entropy(logits.detach().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        step = len(kl_seen) + 1
        kl_seen.append(1)
        if step == 1 or step % max(1, ctx.steps // 50) == 0:
            kl_log.append({"step": step, "kl": round(loss.item(), 4)})
        return loss, nll.item()

    student = ctx.new_model(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    res = run_loop(ctx, student, ctx.batches(docs, gen, owners=True), steps=ctx.steps, step_loss=step_loss,
                   what=f"{ctx.what} SELENA distillation")
    info = dict(plan.to_recipe(), sub_steps=sub_steps, distill_steps=res.steps, sub_models=sub_info, distill_kl=kl_log,
                unit="one training document (train.jsonl order of the non-empty texts)",
                teacher="mean of the next-token probabilities of the L sub-models that did not train on the "
                        "token's document (same context)",
                objective="KL(Split-AI || student) per token, soft labels only",
                non_member_routing="the excluded set of training document sha256(text) mod N",
                source="Tang et al. 2022, USENIX Security, section 3")
    return LoopResult(student, res.losses, res.log, res.steps, seen + res.tokens_seen, seconds + res.seconds,
                      info={"selena": info})
