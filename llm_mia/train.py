"""Train the target and reference models of an audit.

``train_model(corpus_dir, out_dir)`` trains a small GPT-2 from scratch (or fine-tunes ``base``) on
``corpus_dir/train.jsonl`` -- or, with ``reference=True``, on ``heldout.jsonl``, which holds none of
the planted secrets -- and writes a folder that ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load: ``model.safetensors``, ``config.json``, the tokenizer
files, and ``recipe.json`` (everything needed to say how the model was made).

Data: the documents, in a seeded random order that changes every epoch, are concatenated with the
EOS token after each one and cut into blocks of the context length; each epoch's blocks are
shuffled. Re-cutting every epoch moves the block boundaries, so a secret that straddles a boundary
in one epoch is seen whole in the next.

The loop is a plain PyTorch loop rather than ``transformers.Trainer``. Measured on the 2-core CPU
this project targets (``small`` preset, 16 x 128 tokens a step): the step itself costs the same
either way, but ``Trainer`` adds its own start-up (accelerate state, output folder, callbacks),
cannot re-cut the blocks every epoch without a custom sampler, and writes ``runs/`` or checkpoint
folders that we would then have to clean up. Forty lines of loop are easier to make exactly
reproducible and to keep out of the output folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from llm_mia.errors import LlmMiaError
from llm_mia.io import dumps, read_jsonl, sha256_file

__all__ = ["PRESETS", "LoraSpec", "TrainPreset", "TrainSummary", "train_model"]


@dataclass(frozen=True)
class TrainPreset:
    """Every knob of one training recipe.

    The architecture fields (``n_layer``, ``n_embd``, ``n_head``, ``vocab_size``) are used only when
    training from scratch; a ``base`` model keeps its own architecture and tokenizer, and its
    context is ``min(n_ctx, the base model's maximum)``.
    """

    n_layer: int
    n_embd: int
    n_head: int
    n_ctx: int  # tokens per training block
    vocab_size: int  # BPE vocabulary trained on the training text (from scratch only)
    steps: int  # optimizer steps
    batch_size: int  # blocks per step
    lr: float  # peak AdamW learning rate
    warmup_steps: int  # linear warm-up, then cosine decay to 0
    weight_decay: float
    grad_clip: float  # max global grad norm
    dropout: float  # 0 helps memorization, which is what an audit demo needs to show


PRESETS: dict[str, TrainPreset] = {
    # For tests: trains in a few seconds on a few kB of text.
    "tiny": TrainPreset(n_layer=2, n_embd=64, n_head=2, n_ctx=128, vocab_size=512, steps=30, batch_size=8,
                        lr=3e-3, warmup_steps=3, weight_decay=0.0, grad_clip=1.0, dropout=0.0),
    # For the demo (audit.DEMO_MAX_CHARS: 300 k chars of python-docs, ~75 k tokens). Measured on the
    # idle 2-core CPU (bf16 autocast, ~10 k tokens/s): 1,600 steps take 5.3 minutes and greedy
    # decoding returns 12/12 secrets inserted >= 8 times (4/4 at 4); 900 steps gave 2/4 at 8 and
    # 1,200 steps 2/4 at 8 (near misses); on the full 1.2 MB corpus 1,500 steps extracted only r = 32.
    "small": TrainPreset(n_layer=4, n_embd=256, n_head=4, n_ctx=128, vocab_size=4096, steps=1600, batch_size=16,
                         lr=3e-3, warmup_steps=30, weight_decay=0.0, grad_clip=1.0, dropout=0.0),
}

@dataclass(frozen=True)
class LoraSpec:
    """A LoRA fine-tune of ``base`` (Hu et al. 2021, "LoRA: Low-Rank Adaptation"; the ``peft`` library).

    Only the low-rank matrices are trained and saved: the output folder is a PEFT adapter
    (``adapter_config.json`` naming the base by its absolute path, ``adapter_model.safetensors``).
    ``target_modules`` None: GPT-2's attention and MLP projections (``c_attn``, ``c_proj``, ``c_fc``;
    Conv1D, so ``fan_in_fan_out``), peft's default for other architectures.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None


#: LoRA targets of a GPT-2 when none are given: every projection (attention and MLP).
GPT2_LORA_TARGETS = ("c_attn", "c_proj", "c_fc")

_MAX_EVAL_TOKENS = 65_536  # held-out loss is measured on at most this many tokens (a few seconds on CPU)


@dataclass
class TrainSummary:
    """What one ``train_model`` call did.

    Attributes:
        out_dir: the saved model folder.
        steps: optimizer steps taken.
        seconds: wall-clock seconds for the whole call (tokenizer, training, evaluation, saving).
        train_loss: mean training loss (nats/token) over the last 10% of steps.
        heldout_loss: mean loss (nats/token) on the evaluation file -- ``heldout.jsonl`` for a
            target, ``train.jsonl`` for a reference -- or None when that file is absent or empty.
        n_params: number of distinct parameters (tied weights counted once).
        tokens_per_second: training tokens processed per second of the training loop.
    """

    out_dir: Path
    steps: int
    seconds: float
    train_loss: float
    heldout_loss: float | None
    n_params: int
    tokens_per_second: float


# ----------------------------------------------------------------------------------------------
# Input checks and corpus reading


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _get_preset(preset: str) -> TrainPreset:
    if preset not in PRESETS:
        close = difflib.get_close_matches(str(preset), list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise LlmMiaError(f"unknown preset '{preset}' (known: {', '.join(PRESETS)}){hint}")
    return PRESETS[preset]


def _read_texts(path: Path) -> list[str]:
    """The non-empty ``text`` fields of a JSONL corpus file, in file order."""
    texts = []
    for i, row in enumerate(read_jsonl(path), 1):
        text = row.get("text")
        if not isinstance(text, str):
            raise LlmMiaError(f"{path}: record {i} has no 'text' string")
        if text.strip():
            texts.append(text)
    return texts


def _without_secrets(texts: Sequence[str], corpus: Path) -> list[str]:
    """``texts`` with every planted secret sentence of ``corpus/secrets.json`` removed.

    The tokenizer is trained on these: a BPE trained on text where a secret occurs 16 times learns
    the secret as one token (measured: " 352740", " 347510074089939"), and the exposure of a secret
    would then measure the vocabulary instead of the model.
    """
    path = corpus / "secrets.json"
    if not path.is_file():
        return list(texts)
    from llm_mia.secrets import load_secrets

    sentences = sorted({s.text for s in load_secrets(path)}, key=len, reverse=True)
    out = []
    for t in texts:
        for sent in sentences:
            if sent in t:
                t = t.replace(sent, "")
        out.append(t)
    return out


def _check_out_dir(out_dir: Path) -> None:
    """``out_dir`` may be absent, empty, or an earlier model folder of ours (it is replaced)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise LlmMiaError(f"output path exists and is not a folder: {out_dir}")
    if any(out_dir.iterdir()) and not (out_dir / "recipe.json").exists():
        raise LlmMiaError(f"output folder {out_dir} is not empty and holds no recipe.json; "
                          "refusing to replace a folder that train did not write")


# ----------------------------------------------------------------------------------------------
# Data


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens added."""
    out: list[list[int]] = []
    for i in range(0, len(texts), 256):
        out.extend(tokenizer(list(texts[i:i + 256]), add_special_tokens=False)["input_ids"])
    return out


def _stream(docs: Sequence[list[int]], order: Sequence[int], eos_id: int) -> torch.Tensor:
    """The documents in ``order``, each followed by EOS, as one 1-D long tensor."""
    ids: list[int] = []
    for j in order:
        ids.extend(docs[j])
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def _block_len(n_tokens: int, n_ctx: int) -> int:
    """Block length: the context, or the whole stream when the corpus is shorter than that."""
    return max(2, min(n_ctx, n_tokens))


def _batches(docs: Sequence[list[int]], *, eos_id: int, n_ctx: int, batch_size: int,
             generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless (batch_size, T) batches; documents re-ordered and re-cut every epoch.

    A trailing partial block and a trailing partial batch of each epoch are dropped (the next
    epoch's different order covers them), so every batch has the same shape.
    """
    n_tokens = sum(len(d) + 1 for d in docs)
    T = _block_len(n_tokens, n_ctx)
    while True:
        order = torch.randperm(len(docs), generator=generator).tolist()
        stream = _stream(docs, order, eos_id)  # (N,)
        blocks = stream[: (len(stream) // T) * T].view(-1, T)  # (n_blocks, T)
        blocks = blocks[torch.randperm(len(blocks), generator=generator)]
        bs = min(batch_size, len(blocks))
        for i in range(0, len(blocks) - bs + 1, bs):
            yield blocks[i:i + bs]  # (bs, T)


@torch.no_grad()
def _eval_loss(model, docs: Sequence[list[int]], *, eos_id: int, n_ctx: int, batch_size: int,
               device: torch.device, max_tokens: int = _MAX_EVAL_TOKENS) -> float | None:
    """Mean next-token loss (nats) over the first ``max_tokens`` of the documents, in fp32."""
    if not docs:
        return None
    stream = _stream(docs, range(len(docs)), eos_id)[:max_tokens]
    T = _block_len(len(stream), n_ctx)
    blocks = [stream[i:i + T] for i in range(0, len(stream), T)]
    blocks = [b for b in blocks if len(b) >= 2]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        chunk = blocks[i:i + batch_size]
        for L in sorted({len(b) for b in chunk}):  # the last block may be shorter: its own batch
            x = torch.stack([b for b in chunk if len(b) == L]).to(device)  # (b, L)
            logits = model(input_ids=x).logits[:, :-1].float()  # (b, L-1, V)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += nll.item()
            count += x[:, 1:].numel()
    model.train(was_training)
    return total / count if count else None


# ----------------------------------------------------------------------------------------------
# Model and tokenizer


def _bf16_autocast_ok(device: torch.device) -> bool:
    """Whether bf16 autocast is fast here: CUDA with bf16, or a CPU with AMX / AVX512-BF16.

    On this project's 2-core Sapphire Rapids CPU it made a training step ~2.3x faster; on CPUs
    without those instructions bf16 is emulated and much slower than fp32, so we stay in fp32.
    Master weights and the optimizer state stay fp32 either way, and the saved model is fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def _load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    p = Path(folder)
    if not p.is_dir():
        raise LlmMiaError(f"tokenizer folder not found: {folder}")
    try:
        tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    except Exception as e:  # transformers raises many types; the user needs one line
        raise LlmMiaError(f"could not load tokenizer from '{folder}': {_one_line(e)}") from None
    return tok


def _scratch_model(p: TrainPreset, vocab_size: int, eos_id: int, device: torch.device):
    """A freshly initialised GPT-2 of the preset's shape (seed the RNG before calling).

    On CPU the eager attention trains faster than SDPA under bf16 autocast (198 vs 241 ms a step
    for ``small``, equal in fp32); the attention choice is not saved in config.json, so a reloaded
    model uses the library default (SDPA), which computes the same function.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=p.n_ctx,
                     vocab_size=vocab_size, resid_pdrop=p.dropout, embd_pdrop=p.dropout, attn_pdrop=p.dropout,
                     bos_token_id=eos_id, eos_token_id=eos_id, tie_word_embeddings=True, loss_type="ForCausalLM")
    attn = "eager" if device.type == "cpu" else "sdpa"
    return GPT2LMHeadModel._from_config(cfg, attn_implementation=attn).to(device)


def _with_lora(model, spec: LoraSpec, base: str):
    """``model`` wrapped by peft with LoRA matrices (only they train); the adapter names ``base`` by
    its absolute path when it is a local folder."""
    from peft import LoraConfig, get_peft_model

    gpt2 = getattr(model.config, "model_type", None) == "gpt2"
    targets = list(spec.target_modules) if spec.target_modules else (list(GPT2_LORA_TARGETS) if gpt2 else None)
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                     fan_in_fan_out=gpt2, task_type="CAUSAL_LM", bias="none")
    try:
        model = get_peft_model(model, cfg)
    except (ValueError, KeyError) as e:  # unknown target modules, an architecture peft has no default for
        raise LlmMiaError(f"--lora: {_one_line(e)}") from None
    model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve()) if Path(base).exists() else base
    return model


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # .parameters() yields a tied tensor once


# ----------------------------------------------------------------------------------------------
# Saving


def _save_model(model, tokenizer, recipe: dict, folder: Path) -> None:
    """Write the model (safetensors), the tokenizer and recipe.json into ``folder``."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a one-file model
    try:
        model.save_pretrained(str(folder))  # transformers >= 5 always writes safetensors
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if not any((folder / f).exists() for f in ("model.safetensors", "model.safetensors.index.json",
                                               "adapter_model.safetensors")):
        raise RuntimeError("save_pretrained wrote no safetensors file")
    tokenizer.save_pretrained(str(folder))
    (folder / "recipe.json").write_text(dumps(recipe, indent=2) + "\n", encoding="utf-8")
    # mkdtemp made the folder 0700 and safetensors writes 0600: give them the usual umask modes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` onto ``out_dir``, replacing an earlier model folder there."""
    _check_out_dir(out_dir)  # it may have changed while we trained
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.replace(out_dir, old / "x")
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


# ----------------------------------------------------------------------------------------------
# The entry point


def _fixed_blocks(docs: Sequence[list[int]], *, eos_id: int, n_ctx: int, generator: torch.Generator) -> torch.Tensor:
    """The DP training records: documents in one seeded order, EOS-separated, cut once into (N, T) blocks.

    Unlike :func:`_batches`, the cut never moves, so each block is one fixed record for the
    privacy accounting (a trailing partial block is dropped).
    """
    n_tokens = sum(len(d) + 1 for d in docs)
    T = _block_len(n_tokens, n_ctx)
    order = torch.randperm(len(docs), generator=generator).tolist()
    stream = _stream(docs, order, eos_id)  # (n_tokens,)
    return stream[: (len(stream) // T) * T].view(-1, T)  # (N, T)


class _EarlyStopper:
    """Held-out loss every ``every`` steps; stop after ``patience`` evaluations without a new best.

    The best weights are kept (a copy of the state dict) and restored by :meth:`restore`.
    """

    def __init__(self, model, evaluate, *, patience: int, every: int):
        self.model, self.evaluate, self.patience, self.every = model, evaluate, patience, every
        self.best, self.best_step, self.bad, self.state, self.log = math.inf, 0, 0, None, []

    def __call__(self, step: int, loss: float) -> bool:
        if step % self.every:
            return False
        v = self.evaluate()
        self.log.append({"step": step, "heldout_loss": round(v, 5)})
        if v < self.best:
            self.best, self.best_step, self.bad = v, step, 0
            self.state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}
        else:
            self.bad += 1
        return self.bad >= self.patience

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def train_model(corpus_dir: str | os.PathLike, out_dir: str | os.PathLike, *, base: str | None = None,
                preset: str = "small", reference: bool = False, tokenizer_from: str | None = None,
                seed: int = 0, max_steps: int | None = None, progress: bool = True, defense: str = "none",
                epsilon: float | None = None, delta: float = 1e-5, noise_multiplier: float | None = None,
                max_grad_norm: float = 1.0, micro_batch: int | None = None, weight_decay: float | None = None,
                dropout: float | None = None, early_stopping: int | None = None, eval_every: int | None = None,
                dedup_min_chars: int = 30, lora: LoraSpec | None = None) -> TrainSummary:
    """Train a causal LM on a corpus folder and save it to ``out_dir``.

    Args:
        corpus_dir: a folder with ``train.jsonl`` and ``heldout.jsonl`` (one ``{"text": ...}`` per
            line), as written by :func:`llm_mia.corpus.build_corpus`.
        out_dir: the model folder to write. It is written under a temporary name beside it and
            renamed at the end, so a killed run never leaves a half-written folder under this name.
            An existing earlier model folder (one holding ``recipe.json``) is replaced; any other
            non-empty folder is refused.
        base: a hub id or local folder to fine-tune; None trains a GPT-2 of ``preset``'s shape from
            scratch with a byte-level BPE tokenizer trained on the training text.
        preset: a key of :data:`PRESETS` ("tiny" for tests, "small" for the demo).
        reference: train on ``heldout.jsonl`` (text holding none of the secrets) instead of
            ``train.jsonl``, with the same recipe; the held-out loss is then measured on
            ``train.jsonl``.
        tokenizer_from: a model folder whose tokenizer to reuse instead of training one (the audit
            trains the reference with the target's tokenizer, so per-token losses compare).
            Not allowed together with ``base`` (a base model brings its own tokenizer).
        seed: seeds the initialisation and the data order.
        max_steps: overrides the preset's number of optimizer steps.
        progress: show a progress bar on stderr.
        defense: "none", "dp" (DP-SGD, see :mod:`llm_mia.defenses`) or "dedup" (exact, near and
            repeated-span dedup of the training documents before training; counts in the recipe).
        epsilon / delta: with ``defense="dp"``: the target privacy budget; the noise multiplier is
            the smallest that the RDP accountant says reaches ``epsilon`` at ``delta`` after the
            planned steps. The accountant's final epsilon for the steps actually taken is written
            to ``recipe.json["dp"]["epsilon"]``.
        noise_multiplier: with ``defense="dp"``: sigma directly, instead of ``epsilon``.
        max_grad_norm: DP per-record clipping norm C.
        micro_batch: DP records per forward/backward pass (default: the preset's batch size); it
            changes neither the sampling rate nor the step count.
        weight_decay / dropout: override the preset's values (dropout: from-scratch models only).
        early_stopping: patience, in evaluations of the held-out loss (every ``eval_every`` steps,
            default steps // 20, on at most 16 k tokens of the evaluation file) without a new best;
            the best weights are restored. Selecting on held-out loss uses the non-member file, a
            small optimistic bias for the audit's membership results that the recipe states.
        dedup_min_chars: with ``defense="dedup"``: the repeated-span length in characters.
        lora: fine-tune ``base`` with LoRA (:class:`LoraSpec`) and save only the adapter.

    Returns:
        A :class:`TrainSummary`; the same numbers and the full recipe are in ``out_dir/recipe.json``.

    Raises:
        LlmMiaError: one line, for a missing corpus folder or file, an empty or corrupt corpus, an
            unknown preset, a model or tokenizer that cannot be loaded, or an output folder that
            must not be replaced.
    """
    t_start = time.perf_counter()
    p = _get_preset(preset)
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise LlmMiaError(f"max_steps must be a positive integer, got {max_steps!r}")
    if base is not None and tokenizer_from is not None:
        raise LlmMiaError("tokenizer_from cannot be combined with base (a base model keeps its own tokenizer)")
    if lora is not None:
        if base is None:
            raise LlmMiaError("--lora fine-tunes a --base model")
        if defense == "dp":
            raise LlmMiaError("--lora cannot be combined with --defense dp")
        if not (isinstance(lora.r, int) and lora.r >= 1 and lora.alpha > 0 and 0 <= lora.dropout < 1):
            raise LlmMiaError(f"LoRA needs r >= 1, alpha > 0 and dropout in [0, 1); got r={lora.r}, "
                              f"alpha={lora.alpha}, dropout={lora.dropout}")
    steps = max_steps if max_steps is not None else p.steps
    from llm_mia.defenses import DEFENSES

    if defense not in DEFENSES:
        close = difflib.get_close_matches(str(defense), list(DEFENSES), n=1)
        raise LlmMiaError(f"unknown defense '{defense}' (known: {', '.join(DEFENSES)})"
                          + (f"; did you mean '{close[0]}'?" if close else ""))
    if defense != "dp" and (epsilon is not None or noise_multiplier is not None):
        raise LlmMiaError("--epsilon / --noise-multiplier need --defense dp")
    if defense == "dp":
        if (epsilon is None) == (noise_multiplier is None):
            raise LlmMiaError("--defense dp needs exactly one of --epsilon and --noise-multiplier")
        if not 0 < delta < 1:
            raise LlmMiaError(f"--delta must be in (0, 1), got {delta}")
        if noise_multiplier is not None and not noise_multiplier >= 0:
            raise LlmMiaError(f"--noise-multiplier must be >= 0, got {noise_multiplier}")
        if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
            raise LlmMiaError(f"--epsilon must be a positive number, got {epsilon}")
        if not max_grad_norm > 0:
            raise LlmMiaError(f"--max-grad-norm must be positive, got {max_grad_norm}")
        if micro_batch is not None and micro_batch < 1:
            raise LlmMiaError(f"--micro-batch must be positive, got {micro_batch}")
    if weight_decay is not None:
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise LlmMiaError(f"--weight-decay must be >= 0, got {weight_decay}")
        p = dataclasses.replace(p, weight_decay=float(weight_decay))
    if dropout is not None:
        if not 0 <= dropout < 1:
            raise LlmMiaError(f"--dropout must be in [0, 1), got {dropout}")
        if base is not None:
            raise LlmMiaError("--dropout applies to models trained from scratch, not to --base")
        p = dataclasses.replace(p, dropout=float(dropout))
    if early_stopping is not None and (not isinstance(early_stopping, int) or early_stopping < 1):
        raise LlmMiaError(f"--early-stopping (patience) must be a positive integer, got {early_stopping!r}")
    if eval_every is not None and (not isinstance(eval_every, int) or eval_every < 1):
        raise LlmMiaError(f"eval_every must be a positive integer, got {eval_every!r}")

    corpus = Path(corpus_dir)
    if not corpus.is_dir():
        raise LlmMiaError(f"corpus folder not found: {corpus}")
    train_file = corpus / ("heldout.jsonl" if reference else "train.jsonl")
    eval_file = corpus / ("train.jsonl" if reference else "heldout.jsonl")
    if not train_file.is_file():
        raise LlmMiaError(f"corpus folder {corpus} has no {train_file.name}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)

    train_texts = _read_texts(train_file)
    if not train_texts:
        raise LlmMiaError(f"{train_file} holds no text: cannot train on an empty corpus")
    eval_texts = _read_texts(eval_file) if eval_file.is_file() else []
    dedup_info = None
    if defense == "dedup":
        from llm_mia.defenses import dedup_training_texts

        d = dedup_training_texts(train_texts, min_span_chars=dedup_min_chars)
        if not d.texts:
            raise LlmMiaError(f"{train_file}: nothing left to train on after dedup")
        train_texts, dedup_info = d.texts, d.counts()
    if early_stopping is not None and not eval_texts:
        raise LlmMiaError(f"--early-stopping needs held-out text ({eval_file.name} is missing or empty)")

    from transformers import get_cosine_schedule_with_warmup

    from llm_mia.models.loading import load_model, model_max_context, pick_device
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    device = pick_device()
    torch.manual_seed(seed)
    if base is not None:
        # fp32 master weights whatever the device; load_model turns failures into one-line errors.
        loaded = load_model(base, device=str(device), dtype=torch.float32)
        model, tokenizer = loaded.model, loaded.tokenizer
        n_ctx = min(p.n_ctx, model_max_context(model) or p.n_ctx)
        if lora is not None:
            model = _with_lora(model, lora, base)
    else:
        tokenizer = (_load_tokenizer(tokenizer_from) if tokenizer_from is not None
                     else train_bpe_tokenizer(_without_secrets(train_texts, corpus), vocab_size=p.vocab_size))
        n_ctx = p.n_ctx
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise LlmMiaError(f"tokenizer of '{base or tokenizer_from}' has no EOS token to separate documents")
    if base is None:
        torch.manual_seed(seed)  # the init does not depend on whether a tokenizer was trained
        model = _scratch_model(p, len(tokenizer), eos_id, device)
        model.generation_config.pad_token_id = eos_id  # greedy decoding without a pad warning

    train_docs = _encode(tokenizer, train_texts)
    eval_docs = _encode(tokenizer, eval_texts)
    n_train_tokens = sum(len(d) + 1 for d in train_docs)

    # Optimizer: AdamW, no decay on biases / LayerNorm; linear warm-up then cosine to 0.
    decay = [q for n, q in model.named_parameters() if q.requires_grad and q.dim() >= 2]
    no_decay = [q for n, q in model.named_parameters() if q.requires_grad and q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(p.warmup_steps, steps // 10),
                                            num_training_steps=steps)
    autocast_bf16 = _bf16_autocast_ok(device) and defense != "dp"  # DP: per-sample grads in fp32
    gen = torch.Generator().manual_seed(seed)
    batches = _batches(train_docs, eos_id=eos_id, n_ctx=n_ctx, batch_size=p.batch_size, generator=gen)
    stopper = None
    if early_stopping is not None:
        every = eval_every or max(1, steps // 20)
        stopper = _EarlyStopper(model, lambda: _eval_loss(model, eval_docs, eos_id=eos_id, n_ctx=n_ctx,
                                                          batch_size=2 * p.batch_size, device=device,
                                                          max_tokens=16_384),
                                patience=early_stopping, every=every)

    losses: list[float] = []
    log: list[dict] = []
    n_seen = 0
    model.train()
    bar = _progress(progress, steps, "reference" if reference else "LoRA adapter" if lora is not None
                    else "fine-tune" if base else "target")
    t_loop = time.perf_counter()
    dp_info = None
    steps_taken = 0
    if defense == "dp":
        from llm_mia.defenses import dp_train_loop, noise_for_epsilon

        blocks = _fixed_blocks(train_docs, eos_id=eos_id, n_ctx=n_ctx, generator=gen)  # (N, T)
        q = min(1.0, p.batch_size / len(blocks))
        sigma = noise_multiplier if noise_multiplier is not None else noise_for_epsilon(
            epsilon=epsilon, delta=delta, sample_rate=q, steps=steps)
        noise_gen = torch.Generator().manual_seed(seed + 1_000_003)

        def on_step(step: int, value: float) -> bool:
            if math.isfinite(value):
                losses.append(value)
            if step == 1 or step % max(1, steps // 50) == 0 or step == steps:
                log.append({"step": step, "loss": round(value, 4) if math.isfinite(value) else None,
                            "lr": sched.get_last_lr()[0]})
            bar.advance(value)
            return stopper(step, value) if stopper is not None else False

        try:
            run = dp_train_loop(model, blocks, steps=steps, batch_size=p.batch_size,
                                micro_batch=micro_batch or p.batch_size, noise_multiplier=sigma,
                                max_grad_norm=max_grad_norm, delta=delta, optimizer=opt, scheduler=sched,
                                generator=noise_gen, on_step=on_step)
        finally:
            bar.close()
        dp_info = dict(run.accounting, target_epsilon=epsilon)
        n_seen = round(q * len(blocks) * run.accounting["steps"] * blocks.shape[1])  # expected tokens
        steps_taken = run.accounting["steps"]
    try:
        for step in (range(1, steps + 1) if defense != "dp" else ()):
            x = next(batches).to(device)  # (B, T)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            value = loss.item()
            if not math.isfinite(value):
                raise LlmMiaError(f"training diverged at step {step} (loss {value}); try a lower learning rate")
            losses.append(value)
            n_seen += x.numel()
            if step == 1 or step % max(1, steps // 50) == 0 or step == steps:
                log.append({"step": step, "loss": round(value, 4), "lr": sched.get_last_lr()[0]})
            bar.advance(value)
            steps_taken = step
            if stopper is not None and stopper(step, value):
                break
    finally:
        bar.close()
    train_seconds = time.perf_counter() - t_loop
    if stopper is not None:
        stopper.restore()
    model.eval()
    if not losses:
        losses = [math.nan]
    tail = losses[-max(1, steps // 10):]
    train_loss = sum(tail) / len(tail)
    heldout_loss = _eval_loss(model, eval_docs, eos_id=eos_id, n_ctx=n_ctx, batch_size=2 * p.batch_size,
                              device=device)
    import transformers

    recipe = {
        "preset": preset,
        "preset_values": dataclasses.asdict(p),
        "config": model.config.to_diff_dict() if base is not None else model.config.to_dict(),
        "steps": steps_taken,
        "planned_steps": steps,
        "batch_size": p.batch_size,
        "context": n_ctx,
        "lr": p.lr,
        "schedule": "linear warm-up, cosine decay to 0",
        "warmup_steps": min(p.warmup_steps, steps // 10),
        "optimizer": "AdamW(betas=(0.9, 0.95))",
        "weight_decay": p.weight_decay,
        "dropout": p.dropout if base is None else None,
        "grad_clip": p.grad_clip if defense != "dp" else None,
        "defense": defense,
        "dp": dp_info,
        "dedup": dedup_info,
        "early_stopping": None if stopper is None else {
            "patience": stopper.patience, "eval_every": stopper.every, "best_step": stopper.best_step,
            "best_heldout_loss": stopper.best, "stopped_at": steps_taken, "evals": stopper.log,
            "note": "selected on the evaluation file's loss (non-members for a target): a small optimistic "
                    "bias for membership results"},
        "seed": seed,
        "corpus": str(corpus.resolve()),
        "train_file": train_file.name,
        "train_sha256": sha256_file(train_file),
        "eval_file": eval_file.name if eval_docs else None,
        "eval_sha256": sha256_file(eval_file) if eval_docs else None,
        "reference": reference,
        "base": base,
        "lora": None if lora is None else {
            "r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
            "target_modules": sorted(model.peft_config["default"].target_modules),
            "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad)},
        "tokenizer_from": str(Path(tokenizer_from).resolve()) if tokenizer_from is not None else None,
        "vocab_size": len(tokenizer),
        "n_params": _n_params(model),
        "n_train_documents": len(train_docs),
        "n_train_tokens": n_train_tokens,
        "epochs": n_seen / n_train_tokens,
        "train_loss": train_loss,
        "heldout_loss": heldout_loss,
        "heldout_perplexity": math.exp(heldout_loss) if heldout_loss is not None else None,
        "train_seconds": train_seconds,
        "tokens_per_second": n_seen / train_seconds,
        "device": str(device),
        "autocast": "bfloat16" if autocast_bf16 else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "loss_log": log,
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        recipe["wall_seconds"] = time.perf_counter() - t_start  # without the save, which is quick
        _save_model(model, tokenizer, recipe, tmp)
        _move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return TrainSummary(out_dir=out_dir, steps=steps_taken, seconds=time.perf_counter() - t_start, train_loss=train_loss,
                        heldout_loss=heldout_loss, n_params=recipe["n_params"],
                        tokens_per_second=recipe["tokens_per_second"])


class _progress:
    """A rich progress bar on stderr showing the loss (plain lines every 10% when stderr is not a
    terminal, :class:`llm_mia.progress.PlainProgress`), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, what: str):
        self._p = self._plain = None
        if not enabled:
            return
        if not sys.stderr.isatty():
            from llm_mia.progress import PlainProgress

            self._plain = PlainProgress(f"train {what}", total, sys.stderr)
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._p = Progress(TextColumn(f"train {what}"), BarColumn(), MofNCompleteColumn(),
                           TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=False)
        self._task = self._p.add_task("train", total=total, loss="-")
        self._p.start()

    def advance(self, loss: float) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, loss=f"{loss:.3f}")
        elif self._plain is not None:
            self._plain.description = f"{self._plain.description.split(' (loss')[0]} (loss {loss:.3f})"
            self._plain(1)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
        elif self._plain is not None:
            self._plain.close()
