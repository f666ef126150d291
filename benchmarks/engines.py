"""The engines the benchmarks run ours on: which can run in this Python, and how each is loaded."""

from __future__ import annotations

import importlib.util

ENGINES = ("hf", "vllm")


def engine_notes(names: list[str]) -> dict[str, str | None]:
    """engine -> None when it can run here, else the note that says why it is skipped."""
    notes: dict[str, str | None] = {}
    for e in names:
        if e not in ENGINES:
            raise SystemExit(f"unknown engine {e!r} (known: {', '.join(ENGINES)})")
        if e == "vllm" and importlib.util.find_spec("vllm") is None:
            notes[e] = "skipped: vllm is not importable in this Python (run the benchmark with the vLLM environment)"
        elif e == "vllm" and importlib.util.find_spec("llm_mia.models.vllm_engine") is None:
            notes[e] = "skipped: this llm_mia has no vLLM engine (llm_mia/models/vllm_engine.py)"
        else:
            notes[e] = None
    return notes


def load_engine(engine: str, folder: str, device: str = "cpu", dtype: str | None = None):
    """The model in ``folder`` as the CLI loads it with ``--engine ENGINE`` (default CPU, fp32)."""
    if engine == "hf":
        from llm_mia.models.loading import load_model

        return load_model(folder, device=device, dtype=dtype)
    from llm_mia.models.loading import load_model

    return load_model(folder, device=device, dtype=dtype, engine=engine)  # vLLM after its built-in cross-check
