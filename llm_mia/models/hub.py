"""Model folders: a local folder or a Hugging Face hub id resolved to a checked folder, and ``--model-args``.

Weights are safetensors unless pickles are allowed; offline runs (``HF_HUB_OFFLINE``) read the hub cache only.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from llm_mia.core.errors import LlmMiaError

MODEL_ARGS = ("pretrained", "peft", "revision", "dtype", "trust_remote_code", "allow_pickle")


#: keys of an ``openai:URL`` endpoint (:func:`llm_mia.models.endpoint.load_endpoint`)
ENDPOINT_ARGS = ("name", "api", "tokenizer", "top_logprobs", "batch", "concurrency", "max_retries", "timeout")


#: keys passed to ``vllm.LLM`` by the vLLM engine (``--engine vllm``): more than one GPU or node
#: (tensor, pipeline and data parallelism; ``distributed_executor_backend`` "ray" across nodes)
VLLM_ARGS = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend")
VLLM_EXECUTORS = ("mp", "ray", "uni", "external_launcher")


_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_model_args(text: str | None) -> dict:
    """Parse lm-evaluation-harness's ``key=value,key=value`` model arguments.

    Keys: ``pretrained`` (model folder or hub id), ``peft`` (adapter folder or id), ``revision``,
    ``dtype`` (float32/bfloat16/float16), ``trust_remote_code`` and ``allow_pickle`` (true/false);
    for an ``openai:URL`` endpoint, :data:`ENDPOINT_ARGS` instead; with ``--engine vllm`` also
    :data:`VLLM_ARGS` (``tensor_parallel_size``, ``pipeline_parallel_size``, ``data_parallel_size``:
    positive ints; ``distributed_executor_backend``: one of :data:`VLLM_EXECUTORS`), given to ``vllm.LLM``.
    Returns a dict with the keys given (booleans and the parallel sizes parsed).

    Raises:
        LlmMiaError: an item without ``=``, an unknown key (with a "did you mean" hint), a repeated
            key or a boolean that is not true/false.
    """
    out: dict = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            raise LlmMiaError(f"--model-args: '{item.strip()}' is not key=value")
        if key not in MODEL_ARGS + ENDPOINT_ARGS + VLLM_ARGS:
            known = MODEL_ARGS + ENDPOINT_ARGS + VLLM_ARGS
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(known)})"
            raise LlmMiaError(f"--model-args: unknown key '{key}'{hint}")
        if key in out:
            raise LlmMiaError(f"--model-args: '{key}' given twice")
        if key in ("trust_remote_code", "allow_pickle"):
            if value.lower() not in _BOOL:
                raise LlmMiaError(f"--model-args: {key} must be true or false, got '{value}'")
            out[key] = _BOOL[value.lower()]
        else:
            if not value:
                raise LlmMiaError(f"--model-args: '{key}' has no value")
            out[key] = _vllm_value(key, value) if key in VLLM_ARGS else value
    return out


def _vllm_value(key: str, value: str) -> int | str:
    """A parallel size as a positive int, or the executor backend checked against :data:`VLLM_EXECUTORS`."""
    if key == "distributed_executor_backend":
        if value not in VLLM_EXECUTORS:
            raise LlmMiaError(f"--model-args: {key} must be one of {', '.join(VLLM_EXECUTORS)}, got '{value}'")
        return value
    if not value.isdigit() or int(value) < 1:
        raise LlmMiaError(f"--model-args: {key} must be a positive int, got '{value}'")
    return int(value)


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _path_like(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local hub-cache snapshot of ``repo_id`` (no network), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id
        return None


_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]


def resolve_folder(name: str, *, revision: str | None = None, allow_pickle: bool = False, what: str = "model") -> Path:
    """A local folder for ``name``: the folder itself, or a hub id's snapshot (see the module rules).

    Raises:
        LlmMiaError: "model folder not found" for a missing path-like or bare name; a hub id not in
            the cache when offline or when the hub cannot be reached (one attempt), with how to make
            it work offline.
    """
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise LlmMiaError(f"{what} '{name}' is a file, not a model folder")
    if _path_like(name):
        raise LlmMiaError(f"{what} folder not found: {name}")
    cached = _cached_snapshot(name, revision)
    if cached is not None:
        return cached
    if "/" not in name:
        raise LlmMiaError(f"{what} folder not found: {name} (and not in the local hub cache; a hub model needs "
                          f"its full id, e.g. openai-community/gpt2)")
    how = (f"download it once with `hf download {name}` (it then loads from the cache), "
           f"or pass a local folder")
    if _offline():
        raise LlmMiaError(f"{what} '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {how}")
    from huggingface_hub import HfApi, snapshot_download

    try:  # one request, no retries: tells "unreachable" / "no such model" apart at once
        HfApi().model_info(name, revision=revision, timeout=10)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmMiaError(f"{what} '{name}' is not in the local cache and the hub could not give it ({msg}); "
                          f"to work offline, {how}") from None
    patterns = _SNAPSHOT_FILES + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmMiaError(f"could not download {what} '{name}': {msg}") from None


def _check_weights(folder: Path, name: str, *, adapter: bool, allow_pickle: bool) -> None:
    """Refuse a folder whose only weights are pickles (``*.bin``, ``*.pt``) unless ``allow_pickle``."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted(f.name for f in folder.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles and not allow_pickle:
        raise LlmMiaError(f"{'adapter' if adapter else 'model'} '{name}' has only pickle weights ({pickles[0]}), which "
                          f"can run code when loaded: convert them to safetensors, or pass --model-args "
                          f"allow_pickle=true (allow_pickle=True) if you trust the file")
    if not pickles:
        raise LlmMiaError(f"{'adapter' if adapter else 'model'} folder '{name}' holds no weights "
                          f"(*.safetensors)")


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"))
