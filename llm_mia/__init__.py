"""llm_mia: audit language models for training-data leakage.

Extraction (Carlini et al. 2021), canary exposure (Carlini et al. 2019), membership scoring
(LOSS, zlib, lowercase, reference, Min-K%, Min-K%++, window) and a release audit.
"""

from llm_mia.core.errors import LlmMiaError

__version__ = "0.1.0"

__all__ = ["LlmMiaError", "__version__"]
