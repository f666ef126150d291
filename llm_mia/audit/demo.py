"""The demo: the fine-tuning case on the embedded python-docs text, end to end.

A base GPT-2 is pre-trained on a public part of python-docs, fine-tuned with LoRA on the private part
with planted secrets, and the adapter is audited with the base as reference model.
"""

from __future__ import annotations

import time
from pathlib import Path

from llm_mia.audit.pipeline import AuditConfig, run_audit, write_reports
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.corpus import build_corpus, load_source
from llm_mia.data.secrets import load_secrets
from llm_mia.training.train import LoraSpec, train_model

#: The demo's private corpus: the first 300 k characters of python-docs (~75 k tokens). Measured here: on
#: the full 1.2 MB, 600-1,500 steps of the small preset memorized only secrets inserted 32 times.
DEMO_MAX_CHARS = 300_000


#: The demo's public text, on which the base model is pre-trained: the next 300 k characters of python-docs.
DEMO_PUBLIC_CHARS = 300_000


#: Optimizer steps (small preset, 16 x 128 tokens each) of the base pre-training and of the LoRA fine-tune.
DEMO_BASE_STEPS = 300


DEMO_LORA_STEPS = 1000


def _public_corpus(folder: Path, max_chars: int | None) -> None:
    """train.jsonl / heldout.jsonl of the python-docs documents that follow the private corpus's
    (disjoint from it: the same ordered list, the documents after the first ``max_chars``)."""

    private = len(load_source("python-docs", max_chars=max_chars or DEMO_MAX_CHARS))
    public = load_source("python-docs", max_chars=(max_chars or DEMO_MAX_CHARS) + DEMO_PUBLIC_CHARS)[private:]
    if len(public) < 2:
        raise LlmMiaError("the embedded python-docs text has no public part left for the demo's base model")
    k = max(1, len(public) // 20)
    io.write_jsonl(folder / "train.jsonl", [{"text": t} for t in public[:-k]])
    io.write_jsonl(folder / "heldout.jsonl", [{"text": t} for t in public[-k:]])


def run_demo(out_dir: str | Path = "audit-demo", *, preset: str = "small", cfg: AuditConfig | None = None,
             max_steps: int | None = None, max_chars: int | None = DEMO_MAX_CHARS, progress: bool = True,
             policy=None) -> dict:
    """The fine-tuning case on the embedded python-docs text: a base model pre-trained on a public
    part, fine-tuned with LoRA on the private part (with the planted secrets), the adapter audited
    with the base as its reference model.

    Steps: ``corpus/`` (the private corpus with secrets, :func:`llm_mia.data.corpus.build_corpus`);
    ``public/`` (the next :data:`DEMO_PUBLIC_CHARS` characters); ``base/`` (trained from scratch on
    ``public/``, :data:`DEMO_BASE_STEPS` steps); ``adapter/`` (LoRA on ``corpus/train.jsonl``,
    :data:`DEMO_LORA_STEPS` steps, :class:`llm_mia.training.train.LoraSpec` defaults); then :func:`run_audit`
    of ``adapter/`` with ``--reference base``. ``max_steps`` sets the LoRA steps (the base gets half).
    """

    out = Path(out_dir)
    t0 = time.time()
    timings = {}
    build_corpus("python-docs", out / "corpus", seed=(cfg.seed if cfg else 0), max_chars=max_chars)
    (out / "public").mkdir(parents=True, exist_ok=True)
    _public_corpus(out / "public", max_chars)
    timings["corpus_s"] = round(time.time() - t0, 1)
    t = time.time()
    lora_steps = max_steps or DEMO_LORA_STEPS
    base_steps = max(10, max_steps // 2) if max_steps else DEMO_BASE_STEPS
    train_model(out / "public", out / "base", preset=preset, max_steps=base_steps, progress=progress)
    timings["train_base_s"] = round(time.time() - t, 1)
    t = time.time()
    train_model(out / "corpus", out / "adapter", base=str(out / "base"), preset=preset, max_steps=lora_steps,
                progress=progress, lora=LoraSpec())
    timings["train_lora_s"] = round(time.time() - t, 1)
    report = run_audit(out / "corpus", out / "adapter", out, reference_path="base", cfg=cfg, policy=policy)
    report["provenance"]["timings"].update(timings)
    report["provenance"]["timings"]["demo_total_s"] = round(time.time() - t0, 1)

    return write_reports(out, report, load_secrets(out / "corpus" / "secrets.json"),
                         show_secrets=(cfg.show_secrets if cfg else False))
