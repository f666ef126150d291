"""llm_mia: audit language models for training-data leakage.

The public Python API: what a notebook needs to audit a model, in the order of the data path.

- Data: :func:`build_corpus` (members, held-out documents and planted secrets), :func:`load_secrets`,
  :func:`make_canaries` and :func:`plant_canaries` (designed canaries for a one-run epsilon).
- Model: :func:`train_model` (a tiny GPT-2 or a LoRA fine-tune, for experiments) and :func:`load_model`
  (a folder, a hub id, a PEFT adapter, an OpenAI-compatible endpoint, or vLLM).
- Attacks: :func:`score_texts` (membership signals, higher = member), :func:`roc_metrics` (AUC, TPR at low
  FPR), :func:`extract` (Carlini et al. 2021 extraction), :func:`secret_exposure` (Carlini et al. 2019
  exposure of planted secrets), :func:`audit_canaries` (epsilon lower bounds, Steinke et al. 2023).
- Audit: :func:`run_audit` (everything above, one report) and the release gate :func:`load_policy`,
  :func:`gate_report`.

Everything else lives in the subpackages, layered bottom to top: ``core``, ``models``, ``data``,
``training`` and ``report``, ``membership``, ``extraction`` / ``exposure`` / ``privacy``, ``serving``,
``audit``, ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.version import __version__

# The API is resolved on first use (PEP 562), so `import llm_mia.cli` (and `llm-mia --help`) does not pay
# for torch and transformers; type checkers and the docs read the imports below.
if TYPE_CHECKING:
    from llm_mia.audit.pipeline import AuditConfig, run_audit
    from llm_mia.audit.policy import gate_report, load_policy
    from llm_mia.data.canaries import make_canaries, plant_canaries
    from llm_mia.data.corpus import build_corpus
    from llm_mia.data.secrets import load_secrets
    from llm_mia.exposure.secrets import secret_exposure
    from llm_mia.extraction.extract import ExtractConfig, extract
    from llm_mia.membership.metrics import roc_metrics
    from llm_mia.membership.scoring import score_texts
    from llm_mia.models.loading import load_model
    from llm_mia.privacy.canary_audit import audit_canaries
    from llm_mia.training.train import train_model

#: public name -> the module that defines it
_API = {
    "AuditConfig": "llm_mia.audit.pipeline",
    "run_audit": "llm_mia.audit.pipeline",
    "gate_report": "llm_mia.audit.policy",
    "load_policy": "llm_mia.audit.policy",
    "make_canaries": "llm_mia.data.canaries",
    "plant_canaries": "llm_mia.data.canaries",
    "build_corpus": "llm_mia.data.corpus",
    "load_secrets": "llm_mia.data.secrets",
    "secret_exposure": "llm_mia.exposure.secrets",
    "ExtractConfig": "llm_mia.extraction.extract",
    "extract": "llm_mia.extraction.extract",
    "roc_metrics": "llm_mia.membership.metrics",
    "score_texts": "llm_mia.membership.scoring",
    "load_model": "llm_mia.models.loading",
    "audit_canaries": "llm_mia.privacy.canary_audit",
    "train_model": "llm_mia.training.train",
}


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llm_mia' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


__all__ = [
    "AuditConfig",
    "ExtractConfig",
    "LlmMiaError",
    "__version__",
    "audit_canaries",
    "build_corpus",
    "extract",
    "gate_report",
    "load_model",
    "load_policy",
    "load_secrets",
    "make_canaries",
    "plant_canaries",
    "roc_metrics",
    "run_audit",
    "score_texts",
    "secret_exposure",
    "train_model",
]
