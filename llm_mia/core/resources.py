"""Files shipped beside the package: the prompt corpus and the canary templates (``prompts/``)."""

from __future__ import annotations

from pathlib import Path

#: The ``prompts/`` folder of this checkout.
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
#: Real-text prompts for extraction (Carlini et al. 2021's "Internet" strategy) and the engine cross-check.
DEFAULT_PROMPTS = PROMPTS_DIR / "internet.txt"
#: Canary sentence templates of the corpus builder.
CANARY_TEMPLATES = PROMPTS_DIR / "canary_templates.json"
#: Chat-model extraction prompts: the ``chat`` requests and the ``divergence`` repeated-word template.
CHAT_PROMPTS = PROMPTS_DIR / "chat_prompts.json"
