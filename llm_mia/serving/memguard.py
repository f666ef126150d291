"""MemGuard at serving time: adversarial noise on the returned next-token distributions.

Jia, Salem, Backes, Zhang, Gong 2019, "MemGuard: Defending against Black-Box Membership Inference
Attacks via Adversarial Examples" (CCS), adapted to a language model's API, where every scored
position returns a next-token distribution (the ``memguard:EPS`` mode of
:mod:`llm_mia.serving.output_limits`).

The defender's classifier (sec. 4.1) ``g`` reads one returned distribution (V,) and says whether
the position belongs to a training text: a logistic regression (scikit-learn) over the standardized
:data:`FEATURES` of the sorted distribution (the top-1 and top-2 log-probs and the mean and spread
of log p under p, i.e. minus the entropy), trained on positions of member texts (label 1) against
positions of reference texts (label 0): of shadow models (their own members and non-members) when
the defender has them, else of the target itself on training texts against texts it never saw.
It reads no token of the text, so the returned distribution is a function of the context alone,
as a real predictive distribution must be.

Per position, with ``s = softmax(z)`` the true distribution and ``l = argmax z`` its top token:

- Phase I (sec. 4.2, Algorithm 1): noise ``e`` on the logits that moves ``h``, the classifier's
  logit, across 0 (g across 0.5) with ``l`` still on top by ``margin`` nats. MemGuard takes
  fixed-size gradient steps on ``|h| + c2 (label loss) + c3 (distortion)``; here each step is the
  minimal one of the linearized problem, ``e -= (1 + overshoot) h grad(h) / ||grad(h)||^2``
  (DeepFool, Moosavi-Dezfooli et al. 2016), halved up to 8 times while it would change the top
  token, at most ``max_iter`` (5) steps: the same stopping rule in a few steps instead of hundreds,
  and the smallest logit change of each linear step stands in for the distortion term.
  ``s1 = softmax(z + e)``; a row that never crosses keeps the last noise that kept its top token.
- Budget (the utility loss, our choice of MemGuard's distance ``d``): the L1 distance between the
  returned and the true distribution, ``||r||_1 <= epsilon`` at *every* position (MemGuard bounds
  the expected distortion; here no single answer exceeds it): ``r = alpha (s1 - s)``, ``alpha =
  min(1, epsilon / ||s1 - s||_1)``. ``s + r`` is a mixture of two distributions whose top token is
  ``l``, so the top token stays ``l``.
- Phase II (sec. 4.3): the noise is added with probability ``p``, the solution of
  ``min_p |p g(s + r) + (1 - p) g(s) - 0.5|`` (the budget already holds for any p):
  ``p = clip((g(s) - 0.5) / (g(s) - g(s + r)), 0, 1)``. The coin is a hash of ``seed`` and the
  position's true distribution (its top token, top-1 log-prob and mean log-prob at 1e-3 nats), so
  the same query always gets the same answer and repeating it does not average the noise away.

The returned log-probs are ``log_softmax`` of the chosen distribution (they sum to one). Generated
text is untouched: label-only access (greedy or sampled generation) sees the model itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.shadow import load_shadows
from llm_mia.models.hf import LoadedModel
from llm_mia.models.loading import load_model
from llm_mia.models.output_modes import DEFAULT_EPSILON

__all__ = ["FEATURES", "MemGuardClassifier", "distribution_features", "fit_classifier", "position_features",
           "defense_training_set", "classifier_from_shadows", "memguard_logprobs", "DEFAULT_EPSILON"]

#: Features of one returned distribution, in nats: top-1 and top-2 log-prob, E_p[log p], sd_p(log p).
FEATURES = ("top1_logprob", "top2_logprob", "mean_logprob", "std_logprob")
#: The budget of ``memguard`` without a number: L1 distance 0.5 between returned and true distribution.


def distribution_features(lp: torch.Tensor) -> torch.Tensor:
    """:data:`FEATURES` of normalised log-probs ``lp`` (m, V) -> (m, 4), differentiable; V >= 2.

    mu = E_p[log p] (minus the entropy), sigma = sqrt(E_p[(log p - mu)^2]); tokens of probability 0
    (log p = -inf) add 0 to both.
    """
    top = lp.topk(2, dim=-1).values  # (m, 2)
    p = lp.exp()
    x = lp.clamp_min(-1e4)  # p = 0 there: contributes 0, never -inf * 0
    mu = (p * x).sum(-1)
    sigma = ((p * (x - mu[:, None]) ** 2).sum(-1)).clamp_min(1e-12).sqrt()
    return torch.stack([top[:, 0], top[:, 1], mu, sigma], dim=-1)


@dataclass(frozen=True)
class MemGuardClassifier:
    """The defender's membership classifier: ``g = sigmoid(w . (f - mean) / scale + b)`` over
    :data:`FEATURES` ``f``; g > 0.5 = member. ``n_train`` positions trained on, ``train_auc`` its AUC there."""

    weight: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    n_train: int = 0
    train_auc: float = float("nan")

    def logit(self, feats: torch.Tensor) -> torch.Tensor:
        """(m, 4) features -> (m,) logit h (member when > 0), differentiable."""
        t = lambda v: torch.tensor(v, dtype=feats.dtype, device=feats.device)  # noqa: E731
        return ((feats - t(self.mean)) / t(self.scale)) @ t(self.weight) + self.bias

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"features": list(FEATURES)}


def fit_classifier(X, y, *, seed: int = 0) -> MemGuardClassifier:
    """Fit the defender's classifier on ``X`` (n, 4) :data:`FEATURES` rows and labels ``y`` (n,) in {0, 1}
    (logistic regression, scikit-learn, balanced class weights, on standardized features).

    Raises:
        LlmMiaError: shapes disagree, a non-finite feature, or fewer than 2 rows of either label.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != len(FEATURES) or y.shape != (X.shape[0],):
        raise LlmMiaError(f"MemGuard classifier needs X of shape (n, {len(FEATURES)}) and y of shape (n,), "
                          f"got {X.shape} and {y.shape}")
    if not np.isfinite(X).all():
        raise LlmMiaError("MemGuard classifier: non-finite features")
    if min((y == 1).sum(), (y == 0).sum()) < 2:
        raise LlmMiaError("MemGuard classifier needs at least 2 member and 2 non-member positions")
    mean, scale = X.mean(0), X.std(0)
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    lr = LogisticRegression(class_weight="balanced", random_state=seed).fit(Z, y)
    auc = float(roc_auc_score(y, lr.decision_function(Z)))
    return MemGuardClassifier(tuple(map(float, lr.coef_[0])), float(lr.intercept_[0]), tuple(map(float, mean)),
                              tuple(map(float, scale)), n_train=int(len(y)), train_auc=auc)


def position_features(loaded, texts: Sequence[str]) -> np.ndarray:
    """:data:`FEATURES` of every scored position of ``texts`` under ``loaded`` (its true distributions),
    scored as the audit scores them (BOS prepended): (n_positions, 4), float64."""

    rows: list[torch.Tensor] = []

    def record(lp: torch.Tensor) -> torch.Tensor:
        rows.append(distribution_features(lp.float()).double().cpu())
        return lp

    plain = LoadedModel(**{f.name: getattr(loaded, f.name) for f in fields(LoadedModel)})
    plain.logprob_transform = record
    ids, ctx = plain.encode(list(texts), prepend_bos=True)
    plain.token_stats(ids, context_lens=ctx, moments=False)
    return torch.cat(rows).numpy() if rows else np.zeros((0, len(FEATURES)))


def defense_training_set(sets) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's training set from ``sets``: (loaded model, its member texts, texts it never saw)
    triples (the target itself, or each shadow model). Returns (X (n, 4), y (n,)): every scored
    position of a member text labelled 1, of a non-member text 0."""
    X, y = [], []
    for loaded, members, nonmembers in sets:
        for texts, label in ((members, 1), (nonmembers, 0)):
            f = position_features(loaded, texts)
            X.append(f)
            y.append(np.full(len(f), label))
    if not X:
        raise LlmMiaError("MemGuard needs at least one model with member and non-member texts")
    return np.concatenate(X), np.concatenate(y)


def classifier_from_shadows(shadow_dir, *, max_models: int = 4, max_texts: int = 40, seed: int = 0,
                            device: str | None = None) -> MemGuardClassifier:
    """The defender's classifier trained as MemGuard trains it, on shadow models (Jia et al. 2019, sec. 4.1):
    for each of the first ``max_models`` models of ``shadow_dir`` (``llm-mia shadow train``), the
    positions of up to ``max_texts`` population texts it trained on (label 1) and of as many it did
    not (label 0), drawn with ``seed``. Raises LlmMiaError for a bad shadow folder."""

    sh = load_shadows(shadow_dir)
    rng = random.Random(seed)
    sets = []
    for k, folder in enumerate(sh.model_dirs[:max_models]):
        ins = [t for t, keep in zip(sh.texts, sh.keep[k]) if keep]
        outs = [t for t, keep in zip(sh.texts, sh.keep[k]) if not keep]
        sets.append((load_model(str(folder), device=device), rng.sample(ins, min(max_texts, len(ins))),
                     rng.sample(outs, min(max_texts, len(outs)))))
    clf = fit_classifier(*defense_training_set(sets), seed=seed)
    return clf


def _coins(z: torch.Tensor, top1: torch.Tensor, label: torch.Tensor, mu: torch.Tensor, seed: int) -> torch.Tensor:
    """(m,) uniforms in [0, 1), a splitmix64 hash of (seed, top token, top-1 log-prob, mu at 1e-3 nats)."""
    with np.errstate(over="ignore"):
        k = (label.cpu().numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.round(top1.detach().double().cpu().numpy() * 1e3).astype(np.int64).astype(np.uint64)
             * np.uint64(0xBF58476D1CE4E5B9)
             ^ np.round(mu.detach().double().cpu().numpy() * 1e3).astype(np.int64).astype(np.uint64)
             * np.uint64(0x94D049BB133111EB) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            k = (k ^ (k >> np.uint64(shift))) * np.uint64(mul)
        k = k ^ (k >> np.uint64(31))
    return torch.from_numpy((k >> np.uint64(11)).astype(np.float64) / float(2**53)).to(z.device)


def _gap(x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The true top token's lead over the rest, in nats, per row of logits ``x`` (n, V); ``label`` (n,)
    the true top tokens. Negative where another token is on top."""
    top = x.topk(2, dim=-1)
    first = top.indices[:, 0] == label
    return torch.where(first, top.values[:, 0] - top.values[:, 1],
                       x.gather(1, label[:, None])[:, 0] - top.values[:, 0])


@dataclass
class _PhaseOne:
    """MemGuard's phase I outcome for m positions.

    Attributes:
        noise: (m, V) logit noise ``e``: the first one that moved the classifier's logit across 0 with
            the true top token still on top by ``margin`` nats, else the last one that kept the top token
            (zeros if none did).
        crossed: (m,) bool, phase I reached the other side of g = 0.5 (False where h was exactly 0).
    """

    noise: torch.Tensor
    crossed: torch.Tensor


def _phase_one(z: torch.Tensor, label: torch.Tensor, h0: torch.Tensor, clf: MemGuardClassifier, *,
               max_iter: int, overshoot: float, margin: float) -> _PhaseOne:
    """Phase I (Jia et al. 2019 sec. 4.2, DeepFool steps; module docstring) on true logits ``z`` (m, V)
    with top tokens ``label`` (m,) and classifier logits ``h0`` (m,). Needs gradients enabled."""
    best = torch.zeros_like(z)  # the first crossing noise of each row
    kept = torch.zeros_like(z)  # the last noise that kept the top token (rows that never cross)
    done = h0 == 0
    e = torch.zeros_like(z)
    for _ in range(max_iter + 1):
        act = (~done).nonzero().view(-1)
        if len(act) == 0:
            break
        ea = e[act].clone().requires_grad_(True)
        zz = z[act] + ea
        h = clf.logit(distribution_features(torch.log_softmax(zz, -1)))
        with torch.no_grad():
            ok = _gap(zz, label[act]) > margin
            hit = ok & (h * h0[act] <= 0)
            kept[act[ok]] = ea[ok].detach()
            best[act[hit]] = ea[hit].detach()
            done[act[hit]] = True
        (g,) = torch.autograd.grad(h.sum(), ea)
        with torch.no_grad():
            live = ~hit
            rows, g, h, base = act[live], g[live], h[live].detach(), zz[live].detach()
            delta = -((1 + overshoot) * h / (g * g).sum(-1).clamp_min(1e-20))[:, None] * g
            idx = torch.arange(len(rows))
            for _ in range(8):  # halve the steps that would change the top token
                bad = _gap(base[idx] + delta[idx], label[rows[idx]]) <= margin
                if not bad.any():
                    break
                idx = idx[bad]
                delta[idx] *= 0.5
            e[rows] = base - z[rows] + delta
    with torch.no_grad():
        crossed = done & (h0 != 0)
        return _PhaseOne(noise=torch.where(crossed[:, None], best, kept), crossed=crossed)


def memguard_logprobs(lp: torch.Tensor, clf: MemGuardClassifier, *, epsilon: float = DEFAULT_EPSILON,
                      seed: int = 0, max_iter: int = 5, overshoot: float = 0.02, margin: float = 1e-3,
                      return_info: bool = False):
    """MemGuard's answer for true normalised log-probs ``lp`` (m, V) (module docstring for each phase).

    Args:
        lp: the true next-token log-probs (log-softmax output), one row per position.
        clf: the defender's classifier (:func:`fit_classifier`).
        epsilon: the utility budget, the L1 distance between returned and true distribution at
            every position, in (0, 2].
        seed: the phase II coins' seed.
        max_iter, overshoot, margin: phase I's search.
        return_info: also return a dict of (m,) tensors: ``g0`` (classifier on the true
            distribution), ``g1`` (on the noised candidate), ``p`` (phase II probability),
            ``noised`` (bool), ``crossed`` (phase I reached the other side of 0.5), ``l1``
            (L1 distance of the candidate noise).

    Returns:
        (m, V) normalised log-probs, same dtype; the top token of every row is the true one.

    Raises:
        LlmMiaError: epsilon outside (0, 2].
    """
    if not 0 < epsilon <= 2:
        raise LlmMiaError(f"MemGuard budget must be an L1 distance in (0, 2], got {epsilon}")
    with torch.inference_mode(False), torch.enable_grad():
        # (m, V), fp32 or fp64 as given; a normal tensor even when called in inference mode
        z = lp.detach().clone().to(torch.promote_types(lp.dtype, torch.float32))
        m, V = z.shape
        s = z.exp()
        label = z.argmax(-1)  # (m,)
        with torch.no_grad():
            f0 = distribution_features(z)
            h0 = clf.logit(f0)
        one = _phase_one(z, label, h0, clf, max_iter=max_iter, overshoot=overshoot, margin=margin)
        crossed = one.crossed
        with torch.no_grad():
            s1 = torch.softmax(z + one.noise, -1)
            l1 = (s1 - s).abs().sum(-1)  # (m,)
            alpha = torch.where(l1 > 0, (epsilon * (1 - 1e-4) / l1.clamp_min(1e-30)).clamp(max=1.0),
                                torch.ones_like(l1))
            q = s + alpha[:, None] * (s1 - s)
            lq = torch.log_softmax(torch.log(q.clamp_min(torch.finfo(q.dtype).tiny)), -1)
            g0, g1 = torch.sigmoid(h0), torch.sigmoid(clf.logit(distribution_features(lq)))
            den = g0 - g1
            p = torch.where(den.abs() > 1e-12, ((g0 - 0.5) / den.where(den.abs() > 1e-12, torch.ones_like(den))),
                            torch.zeros_like(den)).clamp(0.0, 1.0)
            noised = _coins(z, f0[:, 0], label, f0[:, 2], seed) < p.double()
            out = torch.where(noised[:, None], lq, torch.log_softmax(z, -1)).to(lp.dtype)
            # a near-tie of the true top token could flip in the mixture's rounding: keep the true row there
            flipped = out.argmax(-1) != label
            if flipped.any():
                out[flipped] = torch.log_softmax(z[flipped], -1).to(lp.dtype)
                noised = noised & ~flipped
    if return_info:
        return out, {"g0": g0, "g1": g1, "p": p, "noised": noised, "crossed": crossed, "l1": alpha * l1}
    return out
