"""DP-SGD tuned to a heuristic defence's utility: the ``dp-matched`` row of ``llm-mia defenses``.

Aerni, Zhang and Tramèr 2024 ("Evaluations of Machine Learning Privacy Defenses are Misleading",
arXiv 2404.17399, its evaluation protocol's DP-SGD baseline): a heuristic defence should be
compared with DP-SGD tuned to the *same utility*, not with DP at a fixed epsilon whose model is far
worse. Here the utility is the held-out perplexity ``exp(recipe.json["heldout_loss"])`` (nats per
token, the evaluation file of the training corpus); the target is the best (lowest) perplexity among
the compared non-DP defences other than the baseline, and a DP run matches when its perplexity is
within ``tolerance`` (10%) of it.

Clipping under AdamW: once every sample's gradient is clipped, the clipping norm C scales the
clipped sum and the noise (sigma C) alike, and Adam's update is invariant to that scale; measured in
the ``--quick`` run, C = 1 and C = 0.1 at sigma 1 gave the same held-out perplexity (457.37), so the
quick search tries one norm and spends its runs on sigma.

Search (bounded: at most ``max_runs`` trainings): the first two runs try the clipping norms
``clips`` at noise multiplier 1.0 and keep the better one; the rest bisect the noise multiplier
geometrically inside [0.01, 4.0] (too noisy: lower it; better than needed: raise it) until one lands
within the tolerance. The closest run (smallest ``|log(ppl / target)|``) is kept, with a note when
it is outside 1.25x of the target. Its epsilon is the RDP accountant's for the noise and steps it
trained with (``recipe.json["dp"]["epsilon"]``, finite since the noise multiplier is >= 0.01).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.training.train import train_model

__all__ = ["DpMatch", "heldout_ppl_of", "match_dp_utility"]

SIGMA_RANGE = (0.01, 4.0)


@dataclass
class DpMatch:
    """Result of :func:`match_dp_utility` (``settings.dp_matched`` of compare.json).

    Attributes:
        target_name / target_perplexity: the defence matched and its held-out perplexity.
        noise_multiplier / max_grad_norm / epsilon / perplexity: the kept run's.
        within_tolerance: its perplexity within ``tolerance`` of the target; ``note`` says when it is
            not even within 1.25x.
        tries: every run, in order: ``noise_multiplier``, ``max_grad_norm``, ``perplexity``, ``epsilon``.
    """

    target_name: str
    target_perplexity: float
    tolerance: float
    noise_multiplier: float
    max_grad_norm: float
    epsilon: float
    perplexity: float
    within_tolerance: bool
    note: str | None = None
    tries: list[dict] = field(default_factory=list)


def heldout_ppl_of(folder: Path) -> float:
    """exp of ``recipe.json["heldout_loss"]`` of a trained model folder (nats -> perplexity).

    Raises:
        LlmMiaError: the recipe has no finite held-out loss.
    """
    loss = io.read_json(Path(folder) / "recipe.json").get("heldout_loss")
    if loss is None or not math.isfinite(loss):
        raise LlmMiaError(f"{folder}: recipe.json has no held-out loss to match DP-SGD's utility against")
    return math.exp(loss)


def _next_sigma(sigma: float, ppl: float, target: float, bounds: list[float]) -> float:
    """Geometric bisection step: too noisy (ppl above target) lowers the upper bound, else raises the lower."""
    if ppl > target:
        bounds[1] = sigma
    else:
        bounds[0] = sigma
    return math.sqrt(bounds[0] * bounds[1])


def match_dp_utility(train_corpus: Path, out_dir: Path, *, target_name: str, target_perplexity: float,
                     max_runs: int = 4, clips: tuple[float, ...] = (1.0, 0.1), tolerance: float = 0.10,
                     **train_kw) -> DpMatch:
    """Train DP-SGD models (``train_model(train_corpus, ..., defense="dp", noise_multiplier=s,
    max_grad_norm=C, **train_kw)``) until one's held-out perplexity is within ``tolerance`` of
    ``target_perplexity``; the closest is moved to ``out_dir`` (the module docstring's search).

    Returns:
        :class:`DpMatch`; the other runs are deleted.
    Raises:
        LlmMiaError: ``max_runs`` < 1, no clipping norm, a non-positive target.
    """
    if max_runs < 1 or not clips or not target_perplexity > 0:
        raise LlmMiaError(f"DP matching needs max_runs >= 1, a clipping norm and a positive target perplexity; "
                          f"got {max_runs}, {clips}, {target_perplexity}")
    work = Path(out_dir).parent / f"{Path(out_dir).name}-search"
    tries: list[dict] = []
    sigma, bounds, clip = 1.0, list(SIGMA_RANGE), clips[0]
    for i in range(max_runs):
        if i < len(clips):
            clip = clips[i]
        folder = work / f"try{i}"
        train_model(train_corpus, folder, defense="dp", noise_multiplier=sigma, max_grad_norm=clip, **train_kw)
        ppl = heldout_ppl_of(folder)
        eps = io.read_json(folder / "recipe.json")["dp"]["epsilon"]
        tries.append({"noise_multiplier": sigma, "max_grad_norm": clip, "perplexity": ppl, "epsilon": eps,
                      "folder": folder.name})
        if abs(ppl / target_perplexity - 1) <= tolerance:
            break
        if i == len(clips) - 1:  # every clipping norm tried at sigma 1: keep the better one, then bisect sigma
            first = min(tries, key=lambda t: t["perplexity"])
            clip = first["max_grad_norm"]
            sigma = _next_sigma(sigma, first["perplexity"], target_perplexity, bounds)
        elif i >= len(clips):
            sigma = _next_sigma(sigma, ppl, target_perplexity, bounds)
    best = min(tries, key=lambda t: abs(math.log(t["perplexity"] / target_perplexity)))
    if Path(out_dir).exists():
        shutil.rmtree(out_dir)
    shutil.move(str(work / best["folder"]), str(out_dir))
    shutil.rmtree(work)
    ratio = best["perplexity"] / target_perplexity
    note = None if ratio <= 1.25 and ratio >= 1 / 1.25 else (
        f"no DP run within 1.25x of {target_name}'s held-out perplexity in {len(tries)} runs; the closest "
        f"({best['perplexity']:.1f} against {target_perplexity:.1f}) is reported")
    return DpMatch(target_name=target_name, target_perplexity=target_perplexity, tolerance=tolerance,
                   noise_multiplier=best["noise_multiplier"], max_grad_norm=best["max_grad_norm"],
                   epsilon=best["epsilon"], perplexity=best["perplexity"], within_tolerance=abs(ratio - 1) <= tolerance,
                   note=note, tries=[{k: v for k, v in t.items() if k != "folder"} for t in tries])
