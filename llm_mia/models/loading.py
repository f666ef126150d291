"""Load a causal LM and its tokenizer from a hub id, a local folder, or objects.

safetensors weights are preferred, ``trust_remote_code`` is off unless asked, the device is chosen
automatically (cuda, mps, cpu) and the dtype is fp32 on CPU and bf16 on GPU. Log-softmax is always
taken in fp32 by :mod:`llm_mia.models.stats`, whatever the weights' dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_mia.errors import LlmMiaError


@dataclass
class LoadedModel:
    """A model ready to score: ``model`` in eval mode, its ``tokenizer`` (never mutated), and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    source: str
    max_context: int | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def bos_id(self) -> int:
        """The id a generation or a ``prepend_bos`` score starts from: BOS, else EOS."""
        tok = self.tokenizer
        for tid in (tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise LlmMiaError(f"model '{self.source}' has neither a BOS nor an EOS token")


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


def load_model(name_or_path: str, *, device: str | None = None, dtype: str | torch.dtype | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        name_or_path: a local folder (``save_pretrained`` layout) or a Hugging Face hub id.
        device: "cpu", "cuda", "cuda:1", "mps"; default: the best available.
        dtype: "float32", "bfloat16", "float16" or a torch dtype; default fp32 on CPU, bf16 on GPU.
        trust_remote_code: run code shipped with the model (off unless the user asks).

    Raises:
        LlmMiaError: one line, if the folder is not a model or the id cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    if dtype is None:
        dt = torch.float32 if dev.type == "cpu" else torch.bfloat16
    elif isinstance(dtype, str):
        try:
            dt = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                  "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise LlmMiaError(f"unknown dtype '{dtype}' (use float32, bfloat16 or float16)") from None
    else:
        dt = dtype
    p = Path(name_or_path)
    if p.exists() and not (p / "config.json").exists():
        raise LlmMiaError(f"'{name_or_path}' is not a model folder (no config.json)")
    if not p.exists() and (name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip("/").replace("/", "", 1)):
        raise LlmMiaError(f"model folder not found: {name_or_path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dt, use_safetensors=None,
                                                     trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types; the user needs one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmMiaError(f"could not load model '{name_or_path}': {msg}") from None
    model.to(dev).eval()
    use_fused_activations(model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(name_or_path), max_context=model_max_context(model))


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
