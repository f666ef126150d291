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

import difflib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_mia.errors import LlmMiaError

ENGINES = ("hf", "vllm")
MODEL_ARGS = ("pretrained", "peft", "revision", "dtype", "trust_remote_code", "allow_pickle")
#: keys of an ``openai:URL`` endpoint (:func:`llm_mia.models.endpoint.load_endpoint`)
ENDPOINT_ARGS = ("name", "api", "tokenizer", "top_logprobs", "batch", "concurrency", "max_retries", "timeout")
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass
class LoadedModel:
    """A model ready to score: ``model`` in eval mode, its ``tokenizer`` (never mutated), and where it came from.

    ``base`` is the name or path of the base model of a PEFT adapter (None for a full model);
    ``adapter`` the adapter folder; ``folder`` the local folder the weights were read from (a hub
    id's cache snapshot included; the adapter folder for an adapter), ``base_folder`` the base's
    folder of an adapter; both None for in-memory objects.
    """

    model: torch.nn.Module
    tokenizer: object
    source: str
    max_context: int | None
    base: str | None = None
    adapter: str | None = None
    folder: Path | None = None
    base_folder: Path | None = None

    @functools.cached_property
    def weights_sha256(self) -> str | None:
        """Digest of every weight file (:func:`llm_mia.io.weights_sha256`); None for in-memory objects."""
        from llm_mia.io import weights_sha256

        return weights_sha256(self.folder, base_folder=self.base_folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ---- the model contract (llm_mia.models.contract.LanguageModel)
    @property
    def bos_id(self) -> int:
        """The id a generation or a ``prepend_bos`` score starts from: BOS, else EOS."""
        tok = self.tokenizer
        for tid in (tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise LlmMiaError(f"model '{self.source}' has neither a BOS nor an EOS token")

    @property
    def vocab_size(self) -> int:
        """``len(tokenizer)``: the ids the tokenizer can decode."""
        return len(self.tokenizer)

    @property
    def eos_ids(self) -> list[int]:
        from llm_mia.models.tokenizer import eos_ids

        return eos_ids(self.tokenizer, self.model)

    def encode(self, texts, *, prepend_bos: bool = False) -> tuple[list[list[int]], int]:
        from llm_mia.models.tokenizer import encode

        return encode(self.tokenizer, texts, prepend_bos=prepend_bos)

    def decode(self, ids) -> str:
        from llm_mia.models.tokenizer import decode

        return decode(self.tokenizer, ids)

    def decode_continuation(self, prompt_ids, new_ids) -> str:
        from llm_mia.models.tokenizer import decode_continuation

        return decode_continuation(self.tokenizer, prompt_ids, new_ids)

    def token_stats(self, sequences, *, context_lens=1, batch_size=None, stride=None, moments=True, progress=None):
        from llm_mia.models.stats import compute_token_stats

        return compute_token_stats(self.model, sequences, context_lens=context_lens, batch_size=batch_size,
                                   pad_id=self.bos_id, max_context=self.max_context, stride=stride, moments=moments,
                                   progress=progress, logprob_transform=self.logprob_transform)

    #: which engine runs the model (``--engine``): "hf" here, "vllm" in :class:`~llm_mia.models.vllm_engine.VllmModel`
    engine = "hf"

    @property
    def engine_info(self) -> dict:
        """What the reports record about the engine (the vLLM engine adds its cross-check figures)."""
        return {"engine": "hf"}

    #: a function of (m, V) fp32 log-probs returning what the caller may see (None: everything);
    #: :class:`llm_mia.output_limits.ApiView` sets it to an API output limit
    logprob_transform = None

    def generate(self, prompts, *, max_new_tokens: int, **kw):
        from llm_mia.models.generation import generate

        kw.setdefault("pad_id", self.bos_id)
        kw.setdefault("eos_id", self.eos_ids or None)
        kw.setdefault("vocab_limit", self.vocab_size)
        return generate(self.model, prompts, max_new_tokens=max_new_tokens, **kw)


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else cuda, then mps, then cpu."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_max_context(model: torch.nn.Module) -> int | None:
    """The number of positions the model accepts (``n_positions`` / ``max_position_embeddings``)."""
    cfg = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def parse_model_args(text: str | None) -> dict:
    """Parse lm-evaluation-harness's ``key=value,key=value`` model arguments.

    Keys: ``pretrained`` (model folder or hub id), ``peft`` (adapter folder or id), ``revision``,
    ``dtype`` (float32/bfloat16/float16), ``trust_remote_code`` and ``allow_pickle`` (true/false);
    for an ``openai:URL`` endpoint, :data:`ENDPOINT_ARGS` instead.
    Returns a dict with the keys given (booleans parsed).

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
        if key not in MODEL_ARGS + ENDPOINT_ARGS:
            close = difflib.get_close_matches(key, MODEL_ARGS + ENDPOINT_ARGS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (known: {', '.join(MODEL_ARGS + ENDPOINT_ARGS)})"
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
            out[key] = value
    return out


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


def _dtype(dtype: str | torch.dtype | None, dev: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32 if dev.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise LlmMiaError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)") from None
    return dtype


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json"))


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
        from llm_mia.models.vllm_engine import require_vllm

        require_vllm()
    args = parse_model_args(model_args) if isinstance(model_args, str) or model_args is None else dict(model_args)
    from llm_mia.models.endpoint import is_endpoint, load_endpoint

    if is_endpoint(name_or_path):
        if engine != "hf":
            raise LlmMiaError(f"--engine {engine} runs a model folder; an openai:URL endpoint is its own engine")
        return load_endpoint(name_or_path, args)
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
    adapter_folder = None
    if adapter_name is not None:
        adapter_folder = resolve_folder(adapter_name, revision=revision, allow_pickle=allow_pickle, what="adapter")
        if not (adapter_folder / "adapter_config.json").exists():
            if peft is None:  # --model M --model-args pretrained=P, M a full model
                raise LlmMiaError(f"--model '{adapter_name}' and pretrained='{base_name}' name two models: give one "
                                  f"(or peft=ADAPTER for an adapter on pretrained=)")
            raise LlmMiaError(f"'{adapter_name}' is not a PEFT adapter folder (no adapter_config.json)")
    if base_name is None:
        raise LlmMiaError("no base model given for the adapter")
    folder = resolve_folder(base_name, revision=None if adapter_folder else revision, allow_pickle=allow_pickle)
    if adapter_folder is None and not (folder / "config.json").exists() and (folder / "adapter_config.json").exists():
        adapter_name, adapter_folder = base_name, folder
        base_name = None
    if adapter_folder is not None and base_name is None:
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
    if not (folder / "config.json").exists():
        raise LlmMiaError(f"'{base_name}' is not a model folder (no config.json)")
    _check_weights(folder, base_name, adapter=False, allow_pickle=allow_pickle)
    if adapter_folder is not None:
        _check_weights(adapter_folder, adapter_name, adapter=True, allow_pickle=allow_pickle)
        try:
            from peft import PeftModel
        except ImportError:
            raise LlmMiaError(f"'{adapter_name}' is a PEFT adapter: install peft (pip install peft) or merge it "
                              f"into its base") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok_folder = adapter_folder if adapter_folder is not None and _has_tokenizer(adapter_folder) else folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dt, use_safetensors=None if allow_pickle else True,
                                                     trust_remote_code=trust_remote_code)
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
        raise LlmMiaError(f"could not load model '{adapter_name or base_name}': {msg}") from None
    model.to(dev).eval()
    use_fused_activations(model)
    source = str(adapter_name if adapter_folder is not None else base_name)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, source=source, max_context=model_max_context(model),
                       base=str(base_name) if adapter_folder is not None else None,
                       adapter=str(adapter_folder) if adapter_folder is not None else None,
                       folder=adapter_folder if adapter_folder is not None else folder,
                       base_folder=folder if adapter_folder is not None else None)
    if engine == "vllm":
        from llm_mia.models.vllm_engine import VllmModel

        return VllmModel.from_loaded(loaded, texts=crosscheck_texts)
    return loaded


def use_fused_activations(model: torch.nn.Module) -> int:
    """Replace GPT-2's ``gelu_new`` modules by PyTorch's fused tanh GELU, in place, for inference.

    ``gelu_new`` (transformers' ``NewGELUActivation``) computes 0.5 x (1 + tanh(sqrt(2/pi)
    (x + 0.044715 x^3))) as a chain of element-wise operations; ``torch.nn.functional.gelu(x,
    approximate="tanh")`` is the same formula in one kernel (results agree to ~1e-7 relative). On a
    CPU the chain is ~10 % of a GPT-2 forward pass. Returns the number of modules replaced.
    """
    from transformers.activations import ACT2CLS, NewGELUActivation

    fused = ACT2CLS["gelu_pytorch_tanh"]
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, fused())
                n += 1
    return n


def from_objects(model: torch.nn.Module, tokenizer: object, *, source: str = "<in-memory>",
                 fused_activations: bool = False) -> LoadedModel:
    """Wrap an already-built model and tokenizer (tests, notebooks).

    The model is put in eval mode and otherwise left as it is, unless ``fused_activations`` asks for
    :func:`use_fused_activations` (which :func:`load_model` always applies to the models it loads).
    """
    if fused_activations:
        use_fused_activations(model)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, max_context=model_max_context(model))


def reference_is_target(target: LoadedModel, reference: LoadedModel | None) -> str | None:
    """Why ``reference`` is the target itself (BUG-21 a), or None when it is a different model.

    The same object, the same weights digest (:func:`llm_mia.io.weights_sha256`), or, for in-memory
    models, parameters equal tensor by tensor (the comparison stops at the first difference).
    A reference equal to the target makes every reference signal a constant.
    """
    if reference is None:
        return None
    if reference is target or reference.model is target.model:
        return "it is the same model object"
    a, b = target.weights_sha256, reference.weights_sha256
    if a is not None and b is not None:
        return f"both have weights sha256 {a[:12]}..." if a == b else None
    pa, pb = dict(target.model.named_parameters()), dict(reference.model.named_parameters())
    if pa.keys() != pb.keys():
        return None
    for k, v in pa.items():
        w = pb[k]
        if v.shape != w.shape or not torch.equal(v.detach().cpu(), w.detach().cpu()):
            return None
    return "their weights are identical"
