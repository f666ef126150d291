"""Load a causal LM and its tokenizer from a local folder, a hub id, a PEFT adapter, or objects.

The model spec follows lm-evaluation-harness: ``--model`` names a folder or hub id and
``--model-args`` takes ``pretrained=...,peft=...,revision=...,dtype=...,trust_remote_code=...``
(plus ``allow_pickle``), parsed by :func:`parse_model_args`. Rules, decided here once:

* a path-like name (``./m``, ``/m``, ``~/m``, ``a/b/c``) that does not exist, or a bare name
  (no ``/``) that is not a folder and not in the local hub cache, is "model folder not found" at
  once (legacy hub ids such as ``gpt2`` need their full id, ``openai-community/gpt2``);
* a hub id ``org/name`` is read from the local cache when it is there (no network); otherwise, with
  ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, it is an error that says how to work offline;
  otherwise the hub is asked once (no retries) before the snapshot is downloaded;
* a folder with ``adapter_config.json`` and no ``config.json`` is a PEFT adapter: the base named in
  it (or ``pretrained=``) is loaded and the adapter applied with ``peft`` (LoRA is merged into the
  weights); :attr:`LoadedModel.base` names the base, the default reference model;
* weights are safetensors; a pickle-only checkpoint (``*.bin``) is refused unless ``allow_pickle``;
* ``trust_remote_code`` is off unless asked; the device is chosen automatically (cuda, mps, cpu) and
  the dtype is fp32 on CPU and bf16 on GPU. Log-softmax is always taken in fp32 by
  :mod:`llm_mia.models.stats`, whatever the weights' dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.device import _dtype, model_max_context, pick_device
from llm_mia.models.endpoint import is_endpoint, load_endpoint
from llm_mia.models.hf import LoadedModel, use_fused_activations
from llm_mia.models.hub import (
    ENDPOINT_ARGS,
    VLLM_ARGS,
    _check_weights,
    _has_tokenizer,
    parse_model_args,
    resolve_folder,
)
from llm_mia.models.vllm_engine import VllmModel, require_vllm

ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`load_model` loads, resolved and checked before any model work.

    Attributes:
        engine: "hf" (transformers) or "vllm" (loaded by transformers first, then handed to vLLM).
        base_name: the full model as named: ``--model``, ``pretrained=`` or the base named in the adapter's
            ``adapter_config.json`` (a folder or a hub id).
        folder: local folder of that full model (``config.json`` present, weights checked).
        adapter_name: the PEFT adapter as named (a folder or a hub id), or None for a full model.
        adapter_folder: local folder of the adapter (``adapter_config.json`` present, weights checked), or None.
        device: torch device the model is moved to.
        dtype: torch dtype of the loaded weights.
        trust_remote_code: run code shipped with the model.
        allow_pickle: accept pickle (``*.bin``) weights.
    """

    engine: str
    base_name: str
    folder: Path
    adapter_name: str | None
    adapter_folder: Path | None
    device: torch.device
    dtype: torch.dtype
    trust_remote_code: bool
    allow_pickle: bool


def load_model(name_or_path: str | None = None, *, device: str | None = None, dtype: str | torch.dtype | None = None,
               trust_remote_code: bool = False, revision: str | None = None, peft: str | None = None,
               allow_pickle: bool = False, model_args: str | dict | None = None, engine: str = "hf",
               crosscheck_texts: list[str] | None = None) -> LoadedModel:
    """Load a causal LM (or a PEFT adapter on its base) and its tokenizer, or connect to an endpoint.

    ``openai:URL`` is an OpenAI-compatible endpoint: an
    :class:`~llm_mia.models.endpoint.EndpointModel` (:func:`~llm_mia.models.endpoint.load_endpoint`)
    is returned instead, configured by the endpoint keys of ``model_args``.

    Args:
        name_or_path: a local folder (``save_pretrained`` layout, or a PEFT adapter folder) or a hub id;
            may be None when ``model_args`` names ``pretrained`` or ``peft``.
        device: "cpu", "cuda", "cuda:1", "mps"; default: the best available.
        dtype: "float32", "bfloat16", "float16" or a torch dtype; default fp32 on CPU, bf16 on GPU.
        trust_remote_code: run code shipped with the model (off unless the user asks).
        revision: hub revision (branch, tag or commit) of a hub id.
        peft: a PEFT adapter (folder or hub id) to apply on ``name_or_path``, which is then the base.
        allow_pickle: accept ``*.bin`` (pickle) weights, which can run code when loaded.
        model_args: lm-evaluation-harness string or dict (:func:`parse_model_args`); its keys override
            the keyword arguments; ``pretrained`` is the model (or, with an adapter, its base).
        engine: "hf" (transformers, the reference) or "vllm": the same model loaded by the HF engine,
            then run by vLLM once it passes the cross-check on ``crosscheck_texts`` (default: 16
            paragraphs of the prompt corpus); see :mod:`llm_mia.models.vllm_engine`.

    Returns:
        LoadedModel (a :class:`~llm_mia.models.vllm_engine.VllmModel` for ``engine="vllm"``); for an
        adapter, ``base`` names the base model and ``adapter`` the adapter.

    Raises:
        LlmMiaError: one line, before any model work, for a missing folder, an uncached hub id offline,
            an adapter whose base is missing, pickle-only weights, bad model args, an unknown engine or
            vLLM not installed; and if loading fails or the vLLM cross-check fails.
    """
    if engine not in ENGINES:
        raise LlmMiaError(f"unknown engine '{engine}' (use {' or '.join(ENGINES)})")
    if engine == "vllm":
        require_vllm()
    args = parse_model_args(model_args) if isinstance(model_args, str) or model_args is None else dict(model_args)
    vllm_args = {k: args.pop(k) for k in VLLM_ARGS if k in args}
    if vllm_args and engine != "vllm":
        raise LlmMiaError(f"--model-args {', '.join(vllm_args)}: vLLM settings, they need --engine vllm")

    if is_endpoint(name_or_path):
        if engine != "hf":
            raise LlmMiaError(f"--engine {engine} runs a model folder; an openai:URL endpoint is its own engine")
        return load_endpoint(name_or_path, args)
    spec = resolve_model_spec(name_or_path, args, engine=engine, device=device, dtype=dtype,
                              trust_remote_code=trust_remote_code, revision=revision, peft=peft,
                              allow_pickle=allow_pickle)
    loaded = _load_hf(spec)
    if engine == "vllm":
        return VllmModel.from_loaded(loaded, texts=crosscheck_texts, **vllm_args)
    return loaded


def resolve_model_spec(name_or_path: str | None, args: dict, *, engine: str = "hf", device: str | None = None,
                       dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
                       revision: str | None = None, peft: str | None = None,
                       allow_pickle: bool = False) -> ModelSpec:
    """Decide what :func:`load_model` loads (model or adapter and base, folders, device, dtype), loading nothing.

    Args:
        name_or_path: ``--model``: a folder or hub id (a full model or a PEFT adapter), or None.
        args: parsed ``--model-args`` (:func:`parse_model_args`); its keys override the keyword arguments.
        engine: "hf" or "vllm", carried into the spec.
        device, dtype, trust_remote_code, revision, peft, allow_pickle: as in :func:`load_model`.

    Returns:
        :class:`ModelSpec`, every folder resolved and its weights checked.

    Raises:
        LlmMiaError: an endpoint key in ``args``, no model given, two full models named, a ``peft=``
            that is no adapter, an adapter with no (loadable) base, a folder with no ``config.json``,
            missing or pickle-only weights, an unknown dtype, a folder or hub id that cannot be found.
    """
    wrong = [k for k in args if k in ENDPOINT_ARGS]
    if wrong:
        raise LlmMiaError(f"--model-args {wrong[0]} applies to an openai:URL endpoint, not to a model folder")
    pretrained = args.get("pretrained")
    peft = args.get("peft", peft)
    revision = args.get("revision", revision)
    dtype = args.get("dtype", dtype)
    trust_remote_code = args.get("trust_remote_code", trust_remote_code)
    allow_pickle = args.get("allow_pickle", allow_pickle)
    if name_or_path is None and pretrained is None and peft is None:
        raise LlmMiaError("no model given: pass --model or --model-args pretrained=...")
    # Which is the adapter, which the base: --model is the adapter unless peft= names one.
    adapter_name, base_name = (peft, pretrained or name_or_path) if peft else (None, name_or_path or pretrained)
    if peft is None and pretrained and name_or_path and pretrained != name_or_path:
        adapter_name, base_name = name_or_path, pretrained  # --model ADAPTER --model-args pretrained=BASE
    dev = pick_device(device)
    dt = _dtype(dtype, dev)
    adapter_folder = _adapter_folder(adapter_name, base_name, peft=peft, revision=revision, allow_pickle=allow_pickle)
    if base_name is None:
        raise LlmMiaError("no base model given for the adapter")
    folder = resolve_folder(base_name, revision=None if adapter_folder else revision, allow_pickle=allow_pickle)
    if adapter_folder is None and not (folder / "config.json").exists() and (folder / "adapter_config.json").exists():
        adapter_name, adapter_folder = base_name, folder
        base_name = None
    if adapter_folder is not None and base_name is None:
        base_name, folder = _adapter_base(adapter_name, adapter_folder, allow_pickle=allow_pickle)
    if not (folder / "config.json").exists():
        raise LlmMiaError(f"'{base_name}' is not a model folder (no config.json)")
    _check_weights(folder, base_name, adapter=False, allow_pickle=allow_pickle)
    if adapter_folder is not None:
        _check_weights(adapter_folder, adapter_name, adapter=True, allow_pickle=allow_pickle)
    if not _has_tokenizer(folder) and not (adapter_folder is not None and _has_tokenizer(adapter_folder)):
        raise LlmMiaError(f"no tokenizer in {folder} (none of tokenizer.json, tokenizer_config.json, "
                          "tokenizer.model, vocab.json): copy the tokenizer files of the model it was trained with")
    return ModelSpec(engine=engine, base_name=base_name, folder=folder, adapter_name=adapter_name,
                     adapter_folder=adapter_folder, device=dev, dtype=dt, trust_remote_code=trust_remote_code,
                     allow_pickle=allow_pickle)


def _adapter_folder(adapter_name: str | None, base_name: str | None, *, peft: str | None, revision: str | None,
                    allow_pickle: bool) -> Path | None:
    """The local folder of the adapter named ``adapter_name`` (None: no adapter named).

    Raises:
        LlmMiaError: the folder holds no ``adapter_config.json`` (with ``--model M --model-args
            pretrained=P``: two full models named), or it cannot be found.
    """
    if adapter_name is None:
        return None
    adapter_folder = resolve_folder(adapter_name, revision=revision, allow_pickle=allow_pickle, what="adapter")
    if not (adapter_folder / "adapter_config.json").exists():
        if peft is None:  # --model M --model-args pretrained=P, M a full model
            raise LlmMiaError(f"--model '{adapter_name}' and pretrained='{base_name}' name two models: give one "
                              f"(or peft=ADAPTER for an adapter on pretrained=)")
        raise LlmMiaError(f"'{adapter_name}' is not a PEFT adapter folder (no adapter_config.json)")
    return adapter_folder


def _adapter_base(adapter_name: str, adapter_folder: Path, *, allow_pickle: bool) -> tuple[str, Path]:
    """(name, local folder) of the base model named in the adapter's ``adapter_config.json``.

    Raises:
        LlmMiaError: the adapter names no base, or its base cannot be found.
    """
    cfg = json.loads((adapter_folder / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = cfg.get("base_model_name_or_path")
    if not base_name:
        raise LlmMiaError(f"'{adapter_name}' is a PEFT adapter that names no base model: pass "
                          f"--model-args pretrained=BASE,peft={adapter_name}")
    try:
        folder = resolve_folder(base_name, allow_pickle=allow_pickle, what="base model")
    except LlmMiaError as e:
        raise LlmMiaError(f"'{adapter_name}' is a PEFT adapter for '{base_name}', which cannot be loaded ({e}); "
                          f"pass --model-args pretrained=BASE to give the base") from None
    return base_name, folder


def _load_hf(spec: ModelSpec) -> LoadedModel:
    """Load ``spec`` with transformers (and peft for an adapter, LoRA merged), on its device, in eval mode.

    Raises:
        LlmMiaError: peft is not installed for an adapter, or transformers / peft fail to load (one line).
    """
    adapter_folder, adapter_name, folder = spec.adapter_folder, spec.adapter_name, spec.folder
    if adapter_folder is not None:
        try:
            from peft import PeftModel
        except ImportError:
            raise LlmMiaError(f"'{adapter_name}' is a PEFT adapter: install peft (pip install peft) or merge it "
                              f"into its base") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_folder = adapter_folder if adapter_folder is not None and _has_tokenizer(adapter_folder) else folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_folder), trust_remote_code=spec.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=spec.dtype,
                                                     use_safetensors=None if spec.allow_pickle else True,
                                                     trust_remote_code=spec.trust_remote_code)
        if adapter_folder is not None:
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
            model = PeftModel.from_pretrained(model, str(adapter_folder))
            if hasattr(model, "merge_and_unload"):
                try:  # LoRA and kin: merged weights, a plain transformers model again
                    model = model.merge_and_unload()
                except Exception:  # adapter types that cannot merge (prompt tuning) stay wrapped
                    pass
    except Exception as e:  # transformers raises many types; the user needs one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmMiaError(f"could not load model '{adapter_name or spec.base_name}': {msg}") from None
    model.to(spec.device).eval()
    use_fused_activations(model)
    source = str(adapter_name if adapter_folder is not None else spec.base_name)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, max_context=model_max_context(model),
                       base=str(spec.base_name) if adapter_folder is not None else None,
                       adapter=str(adapter_folder) if adapter_folder is not None else None,
                       folder=adapter_folder if adapter_folder is not None else folder,
                       base_folder=folder if adapter_folder is not None else None)
