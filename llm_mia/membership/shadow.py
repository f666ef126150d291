"""Shadow models: K models trained on random halves of a population, and what each one saw.

Layout of a shadow folder (``llm-mia shadow train --out DIR``)::

    DIR/membership.json   population digest, seed, tokenizer digest, recipe, per-model IN index lists
    DIR/population.jsonl  the population texts, in the order the index lists refer to
    DIR/model-00/ ...     one model folder per shadow model (llm_mia.training.train.train_model; recipe.json)

The design is Carlini et al. 2022's (LiRA, sec. VI): every population text is IN for exactly half
of the models (K even; K odd: half the texts for (K - 1) / 2 models, half for (K + 1) / 2), so each
text has IN and OUT models for the online attacks, and each model trains on about half the texts.
membership.json is written before the first model is trained; a model folder is finished when it
holds recipe.json (train_model writes it under a temporary name and renames it), so a rerun after a
kill trains only the missing models. The shadow models share the target's tokenizer
(``tokenizer_from`` the target folder, or the target's ``base``): the attacks compare per-token
likelihoods, and the tokenizer digest is checked against the target's before any scoring.

Shadows like the target (``like=TARGET``, ``llm-mia shadow train --like TARGET``): the recipe is read
from the target's recipe.json (:func:`recipe_like`): a LoRA adapter's shadows are LoRA adapters of the
same base with the same rank, alpha, dropout and target modules; a full fine-tune's shadows fine-tune
the same base; a model trained from scratch gives shadows from scratch with its tokenizer; the preset
and the number of steps are the target's (steps: the ones it took) unless given. ``train_options``
(train_model keywords such as ``defense="goldfish"``) trains every shadow with a defence: the
adaptive attack of Aerni, Zhang, Tramèr 2024 (arXiv 2404.17399), whose shadow models are
trained the way the defended target was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_mia.core import io, parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.texts import read_texts
from llm_mia.membership.signals import mean_nll
from llm_mia.membership.signals.shadow import (
    LIRA_FIXED_VARIANCE_BELOW,
    ShadowInputs,
    fit_attack_classifier,
    membership_features,
    token_logprob_matrix,
)
from llm_mia.models.hub import resolve_folder
from llm_mia.models.loading import load_model
from llm_mia.models.tokenizer import tokenizer_sha256
from llm_mia.training.config import LoraSpec
from llm_mia.training.train import PRESETS, train_model

MEMBERSHIP_FILE = "membership.json"
POPULATION_FILE = "population.jsonl"
DEFAULT_N_MODELS = 8
#: Each shadow model trains on about half the population: at least this many texts per half.
MIN_TEXTS_PER_HALF = 4
SCHEMA = 1


def population_sha256(texts: Sequence[str]) -> str:
    """Hex SHA-256 of the population: of the JSON list of its texts, in order (UTF-8, no spaces)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


def balanced_membership(n_texts: int, n_models: int, seed: int) -> np.ndarray:
    """(K, N) bool: model k trains on text n. Each text is IN for exactly K // 2 models, plus one
    more for a random half of the texts when K is odd; which models, uniformly at random (seeded).

    Raises:
        LlmMiaError: n_models < 2, or fewer than max(2 K, 2 MIN_TEXTS_PER_HALF) texts.
    """
    if n_models < 2:
        raise LlmMiaError(f"shadow training needs at least 2 models (IN and OUT for each text), got {n_models}")
    need = max(2 * n_models, 2 * MIN_TEXTS_PER_HALF)
    if n_texts < need:
        raise LlmMiaError(f"the population has {n_texts} distinct texts; {n_models} shadow models need at least {need} "
                          f"(2 per model, and {MIN_TEXTS_PER_HALF} per half)")
    rng = np.random.default_rng(seed)
    n_in = np.full(n_texts, n_models // 2)
    if n_models % 2:
        n_in[rng.permutation(n_texts)[: n_texts // 2]] += 1
    rank = rng.random((n_models, n_texts)).argsort(0).argsort(0)  # a random order of the models per text
    keep = rank < n_in[None, :]
    for k in range(n_models):  # cannot happen with >= 8 texts and this design, but never train on nothing
        if keep[k].sum() < 1 or (~keep[k]).sum() < 1:
            raise LlmMiaError(f"shadow model {k} drew no IN or no OUT text; use a larger population or another --seed")
    return keep


@dataclass
class ShadowSet:
    """A finished shadow folder (:func:`load_shadows`).

    Attributes:
        folder: the shadow folder.
        texts: the population, in index order.
        keep: (K, N) bool, model k trained on population text n.
        model_dirs: the K model folders.
        tokenizer_sha256: digest of the tokenizer every model uses.
        meta: membership.json as read.
    """

    folder: Path
    texts: list[str]
    keep: np.ndarray
    model_dirs: list[Path]
    tokenizer_sha256: str
    meta: dict

    @property
    def n_models(self) -> int:
        return len(self.model_dirs)

    def is_in(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), K) bool: which models trained on each text (a text outside the population: none)."""
        index = {t: i for i, t in enumerate(self.texts)}
        out = np.zeros((len(texts), self.n_models), dtype=bool)
        for j, t in enumerate(texts):
            if t in index:
                out[j] = self.keep[:, index[t]]
        return out


def _model_name(k: int) -> str:
    return f"model-{k:02d}"


def _read_population(path: str | Path) -> list[str]:

    texts = [t for t in read_texts(path, text_field="text", label_field=None).texts if t.strip()]
    return list(dict.fromkeys(texts))  # exact duplicates once: a text is IN or OUT, never both


def _tokenizer_digest(tokenizer_from: str | None, base: str | None) -> str:
    from transformers import AutoTokenizer

    name = tokenizer_from or base
    folder = resolve_folder(name, what="tokenizer" if tokenizer_from else "base model")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # transformers raises many types; one line
        raise LlmMiaError(f"could not load the tokenizer of '{name}': {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    return tokenizer_sha256(tok)


def recipe_like(target: str | Path) -> dict:
    """The shadow recipe of a target model folder, from its recipe.json: ``train_shadows`` keywords
    ``base``, ``tokenizer_from``, ``lora`` (:class:`~llm_mia.training.config.LoraSpec` or None),
    ``preset`` and ``max_steps`` (the steps it took).

    Raises:
        LlmMiaError: no recipe.json in ``target`` (a model not trained by llm-mia: give the recipe).
    """
    f = Path(target) / "recipe.json"
    if not f.is_file():
        raise LlmMiaError(f"--like {target}: no recipe.json there (a model not trained by llm-mia); give --base or "
                          "--tokenizer-from and --steps instead")
    r = io.read_json(f)
    lo = r.get("lora")
    lora = None if lo is None else LoraSpec(r=int(lo["r"]), alpha=float(lo["alpha"]), dropout=float(lo["dropout"]),
                                            target_modules=tuple(lo["target_modules"]))
    base = r.get("base")
    return {"base": base, "tokenizer_from": None if base else str(Path(target).resolve()), "lora": lora,
            "preset": r.get("preset", "tiny"), "max_steps": r.get("steps")}


def _recipe_meta(preset, max_steps, base, tokenizer_from, lora, train_options) -> dict:
    """membership.json's ``recipe`` (``lora`` and ``train_options`` only when given: older folders resume)."""
    rec = {"preset": preset, "max_steps": max_steps, "base": base,
           "tokenizer_from": str(Path(tokenizer_from).resolve()) if tokenizer_from else None}
    if lora is not None:
        rec["lora"] = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                       "target_modules": list(lora.target_modules) if lora.target_modules else None}
    if train_options:
        rec["train_options"] = dict(train_options)
    return rec


def _shadow_recipe(like, base, tokenizer_from, lora, preset, max_steps) -> tuple:
    """(base, tokenizer_from, lora, preset, max_steps) of the shadows, from ``like`` when given, checked.

    Raises:
        LlmMiaError: ``like`` with a base, tokenizer or LoRA spec; no or both of base / tokenizer_from;
            an unknown preset; non-positive steps.
    """
    if like is not None:
        if base is not None or tokenizer_from is not None or lora is not None:
            raise LlmMiaError("--like TARGET takes the base, tokenizer and LoRA recipe from the target: drop --base / "
                              "--tokenizer-from")
        r = recipe_like(like)
        base, tokenizer_from, lora, preset = r["base"], r["tokenizer_from"], r["lora"], r["preset"]
        max_steps = max_steps if max_steps is not None else r["max_steps"]
    if (base is None) == (tokenizer_from is None):
        raise LlmMiaError("shadow models must share the target's tokenizer: give exactly one of --tokenizer-from "
                          "TARGET_FOLDER (train from scratch with it) and --base BASE (fine-tune the target's base)")
    if preset not in PRESETS:
        raise LlmMiaError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)})")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise LlmMiaError(f"--steps must be a positive integer, got {max_steps!r}")
    return base, tokenizer_from, lora, preset, max_steps


def train_shadows(population: str | Path, out_dir: str | Path, *, n_models: int = DEFAULT_N_MODELS, preset: str = "tiny",
                  base: str | None = None, tokenizer_from: str | None = None, max_steps: int | None = None,
                  seed: int = 0, progress: bool = True, train_fn: Callable | None = None,
                  echo: Callable[[str], None] | None = None, like: str | Path | None = None,
                  lora: LoraSpec | None = None, train_options: dict | None = None) -> ShadowSet:
    """``llm-mia shadow train``: train ``n_models`` shadow models on balanced random halves of ``population``.

    Args:
        population: texts (.txt / .jsonl / .csv / ...) from the target's data distribution; exact
            duplicates are kept once.
        out_dir: the shadow folder (layout in the module docstring). An unfinished folder of the
            same run is resumed (finished models are kept); one of another run is refused.
        n_models: K >= 2 (8 by default; LiRA's per-example variance needs 64, see
            :data:`llm_mia.membership.signals.shadow.LIRA_FIXED_VARIANCE_BELOW`).
        preset / max_steps: the training recipe of every model (:data:`llm_mia.training.train.PRESETS`).
        base / tokenizer_from: exactly one: fine-tune this base model (the target's base), or train
            from scratch with this model folder's tokenizer (the target's folder).
        seed: seeds the IN/OUT draw; model k trains with seed + k.
        train_fn: ``train_model``-compatible callable (tests spy on it); default llm_mia.training.train.train_model.
        like: a target model folder whose recipe the shadows copy (:func:`recipe_like`; replaces
            ``preset``, ``base``, ``tokenizer_from`` and ``lora``; ``max_steps`` given wins over its steps).
        lora: train each shadow as a LoRA adapter of ``base``.
        train_options: extra ``train_model`` keywords for every shadow (a defence: adaptive shadows).

    Returns:
        The :class:`ShadowSet` of the finished folder.

    Raises:
        LlmMiaError: one line, before any training: no or both of base / tokenizer_from, an unknown
            preset, a population too small (:func:`balanced_membership`), an output that is a file,
            or a folder holding shadow models of another run.
    """

    base, tokenizer_from, lora, preset, max_steps = _shadow_recipe(like, base, tokenizer_from, lora, preset, max_steps)
    out = Path(out_dir)
    io.check_output_dir(out)
    texts = _read_population(population)
    keep = balanced_membership(len(texts), n_models, seed)
    tok_sha = _tokenizer_digest(tokenizer_from, base)
    meta = {"schema": SCHEMA, "design": "balanced: each text IN for half the models (Carlini et al. 2022)",
            "population": {"file": str(Path(population).resolve()), "n_texts": len(texts),
                           "sha256": population_sha256(texts)},
            "n_models": n_models, "seed": seed, "tokenizer_sha256": tok_sha,
            "recipe": _recipe_meta(preset, max_steps, base, tokenizer_from, lora, train_options),
            "models": [{"name": _model_name(k), "seed": seed + k, "in": np.flatnonzero(keep[k]).tolist()}
                       for k in range(n_models)]}
    mfile = out / MEMBERSHIP_FILE
    rank, world = parallel.rank_and_world()
    # No process group before training (transformers >= 5 saves a model only on rank 0 once
    # torch.distributed is initialised): the other processes wait for process 0's membership.json.
    if rank > 0:
        parallel.wait_for_file(mfile)
    _check_folder(out, mfile, meta)
    meta["num_processes"] = world  # processes that trained the models (the last run's, on a resume)
    if rank == 0:
        io.write_json(mfile, meta)
        io.write_jsonl(out / POPULATION_FILE, [{"text": t} for t in texts])
    train_fn = train_fn or train_model
    say = echo if echo is not None and rank == 0 else (lambda s: None)
    with parallel.local():  # under `accelerate launch` process r trains models r, r + P, ...
        for k in parallel.shard(n_models, rank, world):
            _train_one(k, out, texts, keep, train_fn, say, base=base, tokenizer_from=tokenizer_from, preset=preset,
                       max_steps=max_steps, seed=seed, progress=progress and rank == 0, lora=lora,
                       train_options=train_options)
    parallel.barrier()  # every model finished
    return load_shadows(out)


def _check_folder(out: Path, mfile: Path, meta: dict) -> None:
    """Refuse a shadow folder of another run (membership.json differs) or a non-empty folder without one."""
    if mfile.exists():
        old = io.read_json(mfile)
        same = {k: old.get(k) for k in ("population", "n_models", "seed", "tokenizer_sha256", "recipe", "models")}
        if same != {k: meta[k] for k in same}:
            raise LlmMiaError(f"{out} holds shadow models of another run (population, seed, --n, tokenizer or "
                              "recipe differ); use another --out")
    elif out.exists() and any(out.iterdir()):
        raise LlmMiaError(f"output folder {out} is not empty and holds no {MEMBERSHIP_FILE}; refusing to write there")


def _train_one(k: int, out: Path, texts: list[str], keep: np.ndarray, train_fn: Callable, say: Callable, *, base,
               tokenizer_from, preset, max_steps, seed: int, progress: bool, lora, train_options) -> None:
    """Train shadow model ``k`` of :func:`train_shadows` on its IN texts (``keep[k]``), unless finished earlier."""
    folder = out / _model_name(k)
    if (folder / "recipe.json").is_file():
        say(f"{folder.name}: finished earlier, kept")
        return
    data = out / f".data-{_model_name(k)}"
    io.write_jsonl(data / "train.jsonl", [{"text": texts[i]} for i in np.flatnonzero(keep[k])])
    io.write_jsonl(data / "heldout.jsonl", [{"text": texts[i]} for i in np.flatnonzero(~keep[k])])
    try:
        extra = dict(train_options or {}, **({"lora": lora} if lora is not None else {}))
        s = train_fn(data, folder, base=base, tokenizer_from=tokenizer_from, preset=preset, max_steps=max_steps,
                     seed=seed + k, progress=progress, **extra)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    say(f"{folder.name}: {int(keep[k].sum())} IN texts, {s.steps} steps, held-out (OUT) loss "
        + (f"{s.heldout_loss:.3f}" if s.heldout_loss is not None else "-"))


def _membership_matrix(meta: dict, n_pop: int, where: Path) -> np.ndarray:
    """The (K, n_texts) IN matrix of a membership.json, after checking it: K model entries (n_models),
    names unique and inside the folder, IN indices whole numbers in [0, n_texts), every text with IN
    and OUT models. Anything else is a one-line LlmMiaError."""
    models = meta["models"]
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise LlmMiaError(f"{where}: models must be a list of entries")
    if meta.get("n_models") is not None and meta.get("n_models") != len(models):
        raise LlmMiaError(f"{where}: n_models is {meta.get('n_models')!r} but {len(models)} models are listed")
    names = [m.get("name") for m in models]
    bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or n in ("", ".", "..")]
    if bad:
        raise LlmMiaError(f"{where}: model name {bad[0]!r} must be a folder name inside the shadow folder")
    if len(set(names)) != len(names):
        raise LlmMiaError(f"{where}: model names must be unique ({next(n for n in names if names.count(n) > 1)!r} twice)")
    keep = np.zeros((len(models), n_pop), dtype=bool)
    for k, m in enumerate(models):
        idx = m.get("in")
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n_pop
                                                for i in idx):
            raise LlmMiaError(f"{where}: {names[k]}'s 'in' must be a list of text indices in [0, {n_pop})")
        keep[k, idx] = True
    if len(models) < 2 or not (keep.any(0) & (~keep).any(0)).all():
        raise LlmMiaError(f"{where}: every population text needs IN and OUT shadow models "
                          f"({int((~(keep.any(0) & (~keep).any(0))).sum())} of {n_pop} texts lack one)")
    return keep


def in_set_sha256(texts: list[str], keep_row: np.ndarray) -> str:
    """SHA-256 of the train.jsonl :func:`train_shadows` writes for a model with IN row ``keep_row``
    (what its recipe.json records as ``train_sha256``)."""
    h = hashlib.sha256()
    for i in np.flatnonzero(keep_row):
        h.update((io.dumps({"text": texts[i]}) + "\n").encode("utf-8"))
    return h.hexdigest()


def _check_trained_on_in_sets(texts: list[str], keep: np.ndarray, dirs: list[Path]) -> None:
    """Each shadow model's recipe.json ``train_sha256`` is the digest of its IN set (a model of another
    run or IN set in the folder would turn the attack's IN/OUT labels into noise)."""
    for k, mdir in enumerate(dirs):
        rec = io.read_json(mdir / "recipe.json")
        got = rec.get("train_sha256") if isinstance(rec, dict) else None
        if got is not None and got != in_set_sha256(texts, keep[k]):
            raise LlmMiaError(f"{mdir.name} was not trained on its IN set of {MEMBERSHIP_FILE} "
                              f"(recipe.json train_sha256 differs): a model of another shadow run?")


def load_shadows(folder: str | Path, *, target_tokenizer=None) -> ShadowSet:
    """Read and check a shadow folder; nothing is loaded but JSON (and the target's tokenizer digest).

    Raises:
        LlmMiaError: one line: no such folder, no or corrupt membership.json, a model folder missing
            or unfinished (no recipe.json), a population file that does not match its digest, or a
            ``target_tokenizer`` whose digest differs from the shadow models'.
    """
    d = Path(folder)
    if not d.is_dir():
        raise LlmMiaError(f"shadow folder not found: {d}")
    if not (d / MEMBERSHIP_FILE).is_file():
        raise LlmMiaError(f"{d} has no {MEMBERSHIP_FILE}: not a shadow folder (make one with `llm-mia shadow train`)")
    meta = io.read_json(d / MEMBERSHIP_FILE)
    try:
        models, n_pop = meta["models"], int(meta["population"]["n_texts"])
        sha, tok = meta["population"]["sha256"], str(meta["tokenizer_sha256"])
    except (KeyError, TypeError, ValueError):
        raise LlmMiaError(f"{d / MEMBERSHIP_FILE} lacks models, population or tokenizer_sha256") from None
    keep = _membership_matrix(meta, n_pop, d / MEMBERSHIP_FILE)
    dirs = [d / m["name"] for m in models]
    missing = [p.name for p in dirs if not (p / "recipe.json").is_file()]
    if missing:
        raise LlmMiaError(f"{d}: {len(missing)} of {len(dirs)} shadow models missing or unfinished ({missing[0]}...); "
                          "rerun the same `llm-mia shadow train` to finish them")
    texts = [r.get("text", "") for r in io.read_jsonl(d / POPULATION_FILE)] if (d / POPULATION_FILE).is_file() else None
    if texts is None or len(texts) != n_pop or population_sha256(texts) != sha:
        raise LlmMiaError(f"{d / POPULATION_FILE} is missing or does not match the population digest in {MEMBERSHIP_FILE}")
    _check_trained_on_in_sets(texts, keep, dirs)
    out = ShadowSet(folder=d, texts=texts, keep=keep, model_dirs=dirs, tokenizer_sha256=tok, meta=meta)
    if target_tokenizer is not None:
        check_tokenizer(out, target_tokenizer)
    return out


def recipe_mismatch(shadow: ShadowSet, target_folder) -> str | None:
    """One warning line when the shadow models' recipe (membership.json) differs from the target's
    recipe.json in preset, steps or base (None: same, or the target has no recipe.json). Shadow models
    trained much longer or shorter than the target can invert LiRA / RMIA (AUC near 0)."""
    rfile = Path(target_folder) / "recipe.json" if target_folder is not None else None
    if rfile is None or not rfile.is_file():
        return None
    tgt, mine = io.read_json(rfile), shadow.meta.get("recipe") or {}
    if not isinstance(tgt, dict):
        return None
    diffs = [f"{k} {mine.get(mk)!r} vs {tgt.get(tk)!r}" for k, mk, tk in
             (("preset", "preset", "preset"), ("steps", "max_steps", "steps"), ("base", "base", "base"))
             if mine.get(mk) is not None and tgt.get(tk) is not None and mine.get(mk) != tgt.get(tk)]
    if not diffs:
        return None
    return (f"warning: the shadow models in {shadow.folder} were trained with another recipe than the target "
            f"({'; '.join(diffs)}; shadow vs target): shadow-model attacks may be weak or inverted")


def check_tokenizer(shadow: ShadowSet, tokenizer) -> None:
    """Raise a one-line LlmMiaError unless ``tokenizer`` (the target's) has the shadow models' digest."""

    got = tokenizer_sha256(tokenizer)
    if got != shadow.tokenizer_sha256:
        raise LlmMiaError(f"the shadow models in {shadow.folder} use another tokenizer than the target (sha256 "
                          f"{shadow.tokenizer_sha256[:12]}... vs {got[:12]}...): train them with --tokenizer-from the "
                          "target folder or the target's --base")


def _mean_logprob_and_features(stats, texts):
    """(mean log p (n,), features (n, F), per-token log p (n, T) with NaN where unscored)."""
    return -mean_nll(stats).double().numpy(), membership_features(stats, texts), token_logprob_matrix(stats)


def _stack_tokens(rows: list[np.ndarray]) -> np.ndarray:
    """K arrays (n, T_k) -> (n, K, max T_k), NaN-padded."""
    width = max(r.shape[1] for r in rows)
    return np.stack([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=np.nan) for r in rows], 1)


def _per_model(shadow: ShadowSet, jobs: list[tuple[list, int | list, list[str], Callable | None]], *,
               device: str | None, batch_size: int | None, stride: int | None):
    """For each shadow model: [(mean log p (n,), features (n, F)) per job]; each job is (ids, context_lens,
    texts, restrict), ``restrict`` mapping TokenStats to the scored tokens (or None). One model in memory at a time."""

    out = []
    for mdir in shadow.model_dirs:
        keys = [_job_key(mdir, job, device, stride) for job in jobs]
        if all(k in _STATS_CACHE for k in keys):
            out.append([_STATS_CACHE[k] for k in keys])
            continue
        m = load_model(str(mdir), device=device)
        res = []
        for key, (ids, ctx, texts, restrict) in zip(keys, jobs):
            if key in _STATS_CACHE:
                res.append(_STATS_CACHE[key])
                continue
            st = m.token_stats(ids, context_lens=ctx, batch_size=batch_size, stride=stride, moments=True)
            res.append(_mean_logprob_and_features(restrict(st) if restrict else st, texts))
            if key is not None:
                if len(_STATS_CACHE) >= _CACHE_SIZE:
                    _STATS_CACHE.pop(next(iter(_STATS_CACHE)))
                _STATS_CACHE[key] = res[-1]
        out.append(res)
        del m
    return out


#: A shadow model's statistics of a job, kept for the next audit with the same shadow folder and texts
#: (``llm-mia compare``: every compared model meets the same shadow models on the same texts).
_STATS_CACHE: dict = {}
_CACHE_SIZE = 64


def _job_key(mdir: Path, job, device, stride):
    """Cache key of one (model folder, job): its recipe.json's mtime and a digest of the ids; None for a
    job with a score mask (not cached)."""
    ids, ctx, _, restrict = job
    if restrict is not None:
        return None
    digest = hashlib.sha256(json.dumps([[list(map(int, x)) for x in ids],
                                        ctx if isinstance(ctx, int) else list(map(int, ctx))]).encode()).hexdigest()
    return (str(Path(mdir).resolve()), (Path(mdir) / "recipe.json").stat().st_mtime_ns, digest, str(device), stride)


def shadow_inputs(shadow: ShadowSet, target, texts: Sequence[str], ids, context_lens, *, restrict=None,
                  prepend_bos: bool = False, batch_size: int | None = None, stride: int | None = None,
                  seed: int = 0):
    """:class:`llm_mia.membership.signals.shadow.ShadowInputs` of ``texts`` (already encoded as ``ids`` /
    ``context_lens`` by the target's tokenizer, ``restrict`` the score mask) and of the shadow
    population: each shadow model scores both; the target scores the population (RMIA's z); the
    Shokri classifier is fitted on the shadow models' features of the population (their own
    members and non-members). Cost: K + 1 forward passes over the population, K over ``texts``."""

    check_tokenizer(shadow, target.tokenizer)
    pids, pctx = target.encode(shadow.texts, prepend_bos=prepend_bos)
    per = _per_model(shadow, [(ids, context_lens, list(texts), restrict), (pids, pctx, shadow.texts, None)],
                     device=str(target.device), batch_size=batch_size, stride=stride)

    zt = -mean_nll(target.token_stats(pids, context_lens=pctx, batch_size=batch_size, stride=stride,
                                      moments=False)).double().numpy()
    X = np.concatenate([p[1][1] for p in per])
    y = shadow.keep.reshape(-1).astype(np.int64)
    return ShadowInputs(x_logprob=np.stack([p[0][0] for p in per], 1), x_in=shadow.is_in(texts), z_target=zt,
                        z_logprob=np.stack([p[1][0] for p in per], 1), z_in=shadow.keep.T.copy(),
                        classifier=fit_attack_classifier(X, y, seed=seed), n_models=shadow.n_models,
                        x_token_logprob=_stack_tokens([p[0][2] for p in per]),
                        z_token_logprob=_stack_tokens([p[1][2] for p in per]))


def shadow_summary(shadow: ShadowSet, inputs) -> dict:
    """What a report says about the shadow models used: the folder, K, the population size, and the
    range of IN / OUT models per scored text (``inputs``: the ShadowInputs of those texts)."""
    n_in = inputs.x_in.sum(1)
    return {"folder": str(shadow.folder), "n_models": shadow.n_models, "n_population": len(shadow.texts),
            "in_per_text": [int(n_in.min()), int(n_in.max())],
            "out_per_text": [int(shadow.n_models - n_in.max()), int(shadow.n_models - n_in.min())],
            "lira_variance": "fixed (global)" if shadow.n_models < LIRA_FIXED_VARIANCE_BELOW else "per text",
            "recipe": shadow.meta.get("recipe"), "tokenizer_sha256": shadow.tokenizer_sha256}


def shadow_training_features(shadow_dir: str | Path, texts: Sequence[str] | None = None, *, prepend_bos: bool = True,
                             device: str | None = None, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Training data for a membership classifier (Shokri's attack model, MemGuard's defence classifier):
    the features of ``texts`` under every shadow model, labelled by whether that model trained on them.

    Args:
        shadow_dir: a finished shadow folder (:func:`train_shadows`).
        texts: default the shadow population (half members of each model); a text outside the
            population is a non-member of every shadow model.
        prepend_bos: condition on the BOS/EOS id so the first token is scored (as the audit does).

    Returns:
        (X, y): X (K * n, F) float64, rows model-major (model 0's n texts first), columns
        :data:`llm_mia.membership.signals.shadow.FEATURE_NAMES` (:func:`llm_mia.membership.signals.shadow.membership_features`,
        NaN rows for texts with no scored token); y (K * n,) int64, 1 = the model trained on the text.

    Raises:
        LlmMiaError: a bad shadow folder (:func:`load_shadows`).
    """
    sh = load_shadows(shadow_dir)
    texts = list(sh.texts if texts is None else texts)

    first = load_model(str(sh.model_dirs[0]), device=device)
    ids, ctx = first.encode(texts, prepend_bos=prepend_bos)
    del first
    per = _per_model(sh, [(ids, ctx, texts, None)], device=device, batch_size=batch_size, stride=None)
    return np.concatenate([p[0][1] for p in per]), sh.is_in(texts).T.reshape(-1).astype(np.int64)
