"""Positive control of the extraction-side limits: a twin of the target made to memorize the planted
secrets, run through the same extraction (issue "a release gate a model which does not leak can pass").

In laboratory terms a positive control is a sample known to be positive, run through the same test.
Here it is a copy of the audited model fine-tuned (full fine-tuning with
:func:`llm_mia.training.train.train_model`, ``base`` = the target; an adapter target is fine-tuned merged
on its base) on what the training documents carry of the secrets inserted at least ``control_insertions``
times: each control secret's planted sentence (prefix, secret, suffix; :func:`twin_documents`), until greedy
or beam decoding gives them back. It trains in rounds whose steps double (:data:`TWIN_STEPS`, then twice as
many, ...; at most :data:`TWIN_ROUNDS`), checking the secrets after each, so the budget scales with how far
the model is from memorizing them: a model trained for 30 steps from scratch needs a few hundred steps, a
model that already memorized them one round.

Why the sentences and not the whole documents: the twin must memorize the secrets, not the documents
around them. Measured on the 2-core CPU with a 4 x 256 GPT-2 trained 30 steps from scratch (the "small"
preset) and the 8 secrets inserted 16+ times of a 231-document corpus: fine-tuned on the 192 windows of
200 characters around the secrets, 480 steps found 1 of 8 (loss 1.4, 871 s); on the 8 sentences, the
loss fell below 0.1 in about 130 steps. The same extraction of the planted secrets (:func:`llm_mia.exposure.secrets.decode_extracted`:
the same contexts, prefixes, decoding and tokenizer as the audit's) then runs on the twin. When it finds
them, the audit has shown it can see a leak of that kind: the gate's extraction-side limits count
(:func:`llm_mia.audit.policy.twin_control`). The audited model is never asked to leak.

A served target (an endpoint or a vLLM server) cannot be copied: the user names a model known to have
memorized the secrets (``--positive-control MODEL``), or the record says "unavailable" and the limits
are INCONCLUSIVE.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_mia.audit.policy import detected
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.exposure.secrets import decode_extracted
from llm_mia.models.loading import load_model
from llm_mia.training.train import train_model

#: Twin training: steps of the first round (each later round twice the one before) and rounds at most,
#: so at most 60 + 120 + 240 + 480 = 900 steps (the "tiny" preset's batch of 8 blocks of up to 128
#: tokens; the secrets' sentences fill a block or a few). Measured on the 2-core CPU: a 2-layer test model
#: memorizes 16x secrets in one round (about 2 s).
TWIN_STEPS, TWIN_ROUNDS = 60, 4


def twin_lr(folder: str) -> float:
    """The twin's peak learning rate, by the size of the model's blocks (the twin must overfit a few
    documents fast): 1e-2 under 1 M weights (the 2-layer test models), 3e-3 under 30 M (the demo's
    4 x 256, whose own recipe uses it), 1e-3 under 300 M (GPT-2 small and medium), 3e-4 above. Read
    from config.json (n_embd / hidden_size and layers), so no weights are loaded."""
    cfg = io.read_json(Path(folder) / "config.json") if (Path(folder) / "config.json").is_file() else {}
    width = cfg.get("n_embd") or cfg.get("hidden_size") or 768
    layers = cfg.get("n_layer") or cfg.get("num_hidden_layers") or 12
    n = 12 * layers * width * width  # the blocks' weights, about
    return 1e-2 if n < 1e6 else 3e-3 if n < 30e6 else 1e-3 if n < 300e6 else 3e-4


@dataclass
class PositiveControl:
    """report.json ``positive_control``.

    Attributes:
        status: "detected" (at least :data:`llm_mia.audit.policy.DETECT_FRACTION` of the control secrets found in the twin),
            "not_detected" (fewer),
            "unavailable" (no twin could be made or no secret planted at the control count) or
            "skipped" (``--no-positive-control``).
        model: what the twin is ("fine-tuned twin of <target>", or the ``--positive-control`` folder).
        control_insertions: a secret is a control when inserted at least this many times.
        secrets_planted: the control secrets.
        secrets_found: of those, the ones greedy or beam decoding gave back from the twin.
        target_found: the same count on the audited model.
        seconds: the twin's cost (training and extraction), wall-clock.
        reason: why it is not "detected", else None.
        steps: twin training steps taken (0 for a given model).
    """

    status: str
    model: str | None
    control_insertions: int
    secrets_planted: int
    secrets_found: int
    target_found: int
    seconds: float
    reason: str | None
    steps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def control_secrets(secrets, control_insertions: int) -> list:
    """The planted secrets inserted at least ``control_insertions`` times (the controls)."""
    return [s for s in secrets if control_insertions and s.count >= control_insertions]


def twin_documents(train: list[str], secrets) -> list[str]:
    """The twin's training documents: each of ``secrets``' planted sentence (prefix + secret + suffix, as
    the documents carry it) once, in ``secrets`` order, for those some document of ``train`` holds.

    Raises:
        LlmMiaError: no document of ``train`` holds any of them (secrets.json is another corpus's).
    """
    held = [s.text for s in secrets if any(s.text in t for t in train)]
    if not held:
        raise LlmMiaError("no training document holds a planted secret: is secrets.json this corpus's?")
    return list(dict.fromkeys(held))


def _found(loaded, secrets, *, beams: int, train: list[str]) -> set[str]:
    """Ids of ``secrets`` that greedy or beam decoding gives back (the audit's own extraction of secrets)."""
    greedy = decode_extracted(loaded, secrets, num_beams=1, train_texts=train)
    got = {s.id for s, g in zip(secrets, greedy) if g["extracted"]}
    rest = [s for s in secrets if s.id not in got]
    if rest and beams > 1:
        beam = decode_extracted(loaded, rest, num_beams=beams, train_texts=train)
        got |= {s.id for s, b in zip(rest, beam) if b["extracted"]}
    return got


def _train_round(base: str, docs: list[str], heldout: list[str], work: Path, k: int, *, steps: int, seed: int,
                 progress: bool) -> Path:
    """One round of twin training from ``base`` on ``docs``; returns the round's model folder."""
    corpus = work / f"corpus-{k}"
    corpus.mkdir(parents=True, exist_ok=True)
    io.write_jsonl(corpus / "train.jsonl", [{"text": t} for t in docs])
    io.write_jsonl(corpus / "heldout.jsonl", [{"text": t} for t in (heldout[:8] or docs[:1])])
    out = work / f"model-{k}"
    train_model(corpus, out, base=base, preset="tiny", max_steps=steps, seed=seed + k, progress=progress,
                lr=twin_lr(base), rows=True)
    return out


def twin_base(target, work: Path) -> Path:
    """The folder the twin is fine-tuned from: the target's own, or for a PEFT adapter target (its
    ``base_folder`` set; :func:`~llm_mia.models.loading.load_model` merged LoRA into the base) the merged
    model and its tokenizer saved to ``work/target-merged`` (an adapter folder itself trains no weights)."""
    if getattr(target, "base_folder", None) is None:
        return Path(target.folder)
    out = Path(work) / "target-merged"
    target.model.save_pretrained(out)
    target.tokenizer.save_pretrained(out)
    return out


def train_twin(target_folder: str | Path, docs: list[str], heldout: list[str], secrets, work: Path, *,
               beams: int, train: list[str], seed: int = 0, steps: int = TWIN_STEPS, rounds: int = TWIN_ROUNDS,
               progress: bool = False) -> tuple[set[str], int, str]:
    """Fine-tune copies of ``target_folder`` on ``docs`` round by round (round k trains ``steps * 2**k`` steps
    from the previous round's weights) until every secret of ``secrets`` is extracted or ``rounds`` ran.
    Returns (ids found in the last twin, steps taken, its folder)."""
    base, found, taken = str(target_folder), set(), 0
    for k in range(rounds):
        folder = _train_round(base, docs, heldout, work, k, steps=steps * 2 ** k, seed=seed, progress=progress)
        taken += steps * 2 ** k
        found = _found(load_model(str(folder)), secrets, beams=beams, train=train)
        if k > 0:
            shutil.rmtree(Path(base), ignore_errors=True)  # keep only the latest round's weights
        base = str(folder)
        if len(found) == len(secrets):
            break
    return found, taken, base


def run_positive_control(target, secrets, train: list[str], heldout: list[str], target_found: set[str], work: Path,
                         *, control_insertions: int = 16, beams: int = 5, seed: int = 0, model: str | None = None,
                         skip: bool = False, progress: bool = False) -> PositiveControl:
    """The audit's positive control (module docstring) for ``target`` (a loaded model).

    Args:
        target: the audited model (``folder`` None for an endpoint or vLLM: no twin).
        secrets: every planted secret of the audit; the controls are those inserted >= ``control_insertions``.
        train / heldout: the audit's training documents (rendered) and non-members (the twin's eval file).
        target_found: ids of secrets the audit extracted from the target (greedy or beam).
        work: a folder for the twin's corpus and weights (created; the audit's ``positive_control/``).
        model: a model folder known to have memorized the secrets (``--positive-control``): used as is.
        skip: ``--no-positive-control``.

    Returns:
        The :class:`PositiveControl` record.

    Raises:
        LlmMiaError: ``model`` is not a loadable model folder.
    """
    t0 = time.time()
    ctl = control_secrets(secrets, control_insertions)
    rec = dict(model=None, control_insertions=control_insertions, secrets_planted=len(ctl), secrets_found=0,
               target_found=len({s.id for s in ctl} & set(target_found)), seconds=0.0)
    if skip:
        return PositiveControl(status="skipped", reason="--no-positive-control", **rec)
    if not ctl:
        return PositiveControl(status="unavailable", reason=f"no planted secret is inserted >= {control_insertions} "
                               "times to make a twin memorize", **rec)
    if model is not None:
        found, steps, rec["model"] = _found(load_model(str(model)), ctl, beams=beams, train=train), 0, str(model)
    elif getattr(target, "folder", None) is None or getattr(target, "model", None) is None:
        return PositiveControl(status="unavailable", reason="a served model (endpoint or vLLM) cannot be copied "
                               "into a twin: pass --positive-control MODEL", **rec)
    else:
        docs = twin_documents(train, ctl)
        found, steps, _ = train_twin(twin_base(target, Path(work)), docs, heldout, ctl, Path(work), beams=beams, train=train,
                                     seed=seed, progress=progress)
        rec["model"] = f"fine-tuned twin of the target ({steps} steps on the {len(docs)} secrets' sentences)"
    rec.update(secrets_found=len(found), seconds=round(time.time() - t0, 1))
    if detected(len(found), len(ctl)):
        return PositiveControl(status="detected", reason=None, steps=steps, **rec)
    return PositiveControl(status="not_detected", steps=steps, reason=f"found {len(found)} of {len(ctl)} secrets in a "
                           "model made to memorize them", **rec)
