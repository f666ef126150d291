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
import importlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.io import dumps, read_jsonl, sha256_file
from llm_mia.core.progress import PlainProgress
from llm_mia.data.secrets import load_secrets
from llm_mia.models.device import model_max_context, pick_device
from llm_mia.models.heldout import (
    MAX_EVAL_TOKENS,
    block_len,
    encode_texts,
    heldout_loss,
    token_stream,
)
from llm_mia.models.loading import load_model
from llm_mia.models.tokenizer import train_bpe_tokenizer
from llm_mia.training.config import (
    GPT2_LORA_TARGETS,
    PRESETS,
    LoraSpec,
    TrainConfig,
    TrainPreset,
    options_only_with,
)
from llm_mia.training.defenses import (
    DEFENSES,
    dedup_training_texts,
    dp_train_loop,
    goldfish_keep_mask,
    goldfish_loss,
    noise_for_epsilon,
)

__all__ = ["PRESETS", "LoopResult", "LoraSpec", "TrainConfig", "TrainContext", "TrainPreset", "TrainSummary", "run_loop",
           "train_model"]


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


def _batches(docs: Sequence[list[int]], *, eos_id: int, n_ctx: int, batch_size: int,
             generator: torch.Generator, owners: bool = False) -> Iterator:
    """Endless (batch_size, T) batches; documents re-ordered and re-cut every epoch.

    A trailing partial block and a trailing partial batch of each epoch are dropped (the next
    epoch's different order covers them), so every batch has the same shape. With ``owners``, each
    item is ``(x, o)``: ``o`` (batch_size, T) holds the index in ``docs`` of the document each
    token of ``x`` belongs to (a document's EOS belongs to it).
    """
    n_tokens = sum(len(d) + 1 for d in docs)
    T = block_len(n_tokens, n_ctx)
    while True:
        order = torch.randperm(len(docs), generator=generator).tolist()
        stream = token_stream(docs, order, eos_id)  # (N,)
        n = (len(stream) // T) * T
        blocks = stream[:n].view(-1, T)  # (n_blocks, T)
        perm = torch.randperm(len(blocks), generator=generator)
        blocks = blocks[perm]
        if owners:
            own = torch.cat([torch.full((len(docs[j]) + 1,), j, dtype=torch.long) for j in order])[:n].view(-1, T)[perm]
        bs = min(batch_size, len(blocks))
        for i in range(0, len(blocks) - bs + 1, bs):
            yield (blocks[i:i + bs], own[i:i + bs]) if owners else blocks[i:i + bs]  # (bs, T)


def _row_batches(docs: Sequence[list[int]], *, bos_id: int, eos_id: int, n_ctx: int, batch_size: int,
                 generator: torch.Generator) -> Iterator:
    """Endless (batch_size, T) batches of whole documents, one a row: ``[BOS] + document``, cut to
    ``n_ctx`` tokens and right-padded with EOS to the longest row (T). Each document sits where a
    generation from BOS puts it (the audit's "start" extraction context), unlike :func:`_batches`' packed,
    re-cut stream; the rows are re-ordered every epoch. The positive-control twin trains this way
    (``TrainConfig.rows``): its documents are short sentences it must memorize."""
    rows = [([bos_id] + list(d))[:n_ctx] for d in docs]
    T = max(2, max(len(r) for r in rows))
    table = torch.full((len(rows), T), eos_id, dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        table[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    bs = min(batch_size, len(rows))
    while True:
        order = torch.randperm(len(rows), generator=generator)
        for i in range(0, len(rows) - bs + 1, bs):
            yield table[order[i:i + bs]]  # (bs, T)


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
# DP records and early stopping


def _fixed_blocks(docs: Sequence[list[int]], *, eos_id: int, n_ctx: int, generator: torch.Generator) -> torch.Tensor:
    """The DP training records: documents in one seeded order, EOS-separated, cut once into (N, T) blocks.

    Unlike :func:`_batches`, the cut never moves, so each block is one fixed record for the
    privacy accounting (a trailing partial block is dropped).
    """
    n_tokens = sum(len(d) + 1 for d in docs)
    T = block_len(n_tokens, n_ctx)
    order = torch.randperm(len(docs), generator=generator).tolist()
    stream = token_stream(docs, order, eos_id)  # (n_tokens,)
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


# ----------------------------------------------------------------------------------------------
# Checks, corpus, tokenizer and model: everything a training loop needs, in one TrainContext


def _check_config(cfg: TrainConfig) -> tuple[TrainPreset, int]:
    """Every check that needs no file: (the preset with its overrides applied, the planned steps)."""
    p = _get_preset(cfg.preset)
    if cfg.max_steps is not None and (not isinstance(cfg.max_steps, int) or cfg.max_steps < 1):
        raise LlmMiaError(f"max_steps must be a positive integer, got {cfg.max_steps!r}")
    if cfg.base is not None and cfg.tokenizer_from is not None:
        raise LlmMiaError("tokenizer_from cannot be combined with base (a base model keeps its own tokenizer)")
    lora = cfg.lora
    if lora is not None:
        if cfg.base is None:
            raise LlmMiaError("--lora fine-tunes a --base model")
        if cfg.defense == "dp":
            raise LlmMiaError("--lora cannot be combined with --defense dp")
        if not (isinstance(lora.r, int) and lora.r >= 1 and lora.alpha > 0 and 0 <= lora.dropout < 1):
            raise LlmMiaError(f"LoRA needs r >= 1, alpha > 0 and dropout in [0, 1); got r={lora.r}, "
                              f"alpha={lora.alpha}, dropout={lora.dropout}")

    if cfg.defense not in DEFENSES:
        close = difflib.get_close_matches(str(cfg.defense), list(DEFENSES), n=1)
        raise LlmMiaError(f"unknown defense '{cfg.defense}' (known: {', '.join(DEFENSES)})"
                          + (f"; did you mean '{close[0]}'?" if close else ""))
    _check_dp(cfg)
    if options_only_with(cfg, "goldfish", ("goldfish_k", "goldfish_h")):
        goldfish_keep_mask(torch.zeros(1, 1, dtype=torch.long), k=cfg.goldfish_k, h=cfg.goldfish_h)  # checks k, h
    for module in _DEFENSE_MODULES.values():
        importlib.import_module(module).check_config(cfg)
    if cfg.rows and cfg.defense != "none":
        raise LlmMiaError(f"row-per-document training is plain training only (the positive-control twin), not --defense {cfg.defense}")
    if cfg.lr is not None:
        if not (isinstance(cfg.lr, (int, float)) and 0 < cfg.lr < 1 and math.isfinite(cfg.lr)):
            raise LlmMiaError(f"learning rate must be in (0, 1), got {cfg.lr}")
        p = dataclasses.replace(p, lr=float(cfg.lr))
    if cfg.weight_decay is not None:
        if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
            raise LlmMiaError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
        p = dataclasses.replace(p, weight_decay=float(cfg.weight_decay))
    if cfg.dropout is not None:
        if not 0 <= cfg.dropout < 1:
            raise LlmMiaError(f"--dropout must be in [0, 1), got {cfg.dropout}")
        if cfg.base is not None:
            raise LlmMiaError("--dropout applies to models trained from scratch, not to --base")
        p = dataclasses.replace(p, dropout=float(cfg.dropout))
    if cfg.early_stopping is not None and (not isinstance(cfg.early_stopping, int) or cfg.early_stopping < 1):
        raise LlmMiaError(f"--early-stopping (patience) must be a positive integer, got {cfg.early_stopping!r}")
    if cfg.eval_every is not None and (not isinstance(cfg.eval_every, int) or cfg.eval_every < 1):
        raise LlmMiaError(f"eval_every must be a positive integer, got {cfg.eval_every!r}")
    return p, cfg.max_steps if cfg.max_steps is not None else p.steps


def _check_dp(cfg: TrainConfig) -> None:
    if cfg.defense != "dp" and (cfg.epsilon is not None or cfg.noise_multiplier is not None):
        raise LlmMiaError("--epsilon / --noise-multiplier need --defense dp")
    if cfg.defense != "dp":
        return
    if (cfg.epsilon is None) == (cfg.noise_multiplier is None):
        raise LlmMiaError("--defense dp needs exactly one of --epsilon and --noise-multiplier")
    if not 0 < cfg.delta < 1:
        raise LlmMiaError(f"--delta must be in (0, 1), got {cfg.delta}")
    if cfg.noise_multiplier is not None and not cfg.noise_multiplier >= 0:
        raise LlmMiaError(f"--noise-multiplier must be >= 0, got {cfg.noise_multiplier}")
    if cfg.epsilon is not None and not (cfg.epsilon > 0 and math.isfinite(cfg.epsilon)):
        raise LlmMiaError(f"--epsilon must be a positive number, got {cfg.epsilon}")
    if not cfg.max_grad_norm > 0:
        raise LlmMiaError(f"--max-grad-norm must be positive, got {cfg.max_grad_norm}")
    if cfg.micro_batch is not None and cfg.micro_batch < 1:
        raise LlmMiaError(f"--micro-batch must be positive, got {cfg.micro_batch}")


#: The defences with a module of their own; each module has ``check_config(cfg)`` (every run, before
#: anything is read: it refuses its options without its defence), ``check_corpus(cfg, corpus)`` and
#: ``train_loop(ctx) -> LoopResult``.
_DEFENSE_MODULES = {"selena": "llm_mia.training.selena", "adv-reg": "llm_mia.training.adv_reg"}


@dataclass
class CorpusTexts:
    """The texts one training run reads: what it trains on and what its held-out loss is measured on."""

    folder: Path
    train_file: Path
    eval_file: Path
    train_texts: list[str]
    eval_texts: list[str]
    dedup: dict | None = None  # the dedup defence's counts


def _read_corpus(cfg: TrainConfig, corpus_dir) -> CorpusTexts:
    corpus = Path(corpus_dir)
    if not corpus.is_dir():
        raise LlmMiaError(f"corpus folder not found: {corpus}")
    train_file = corpus / ("heldout.jsonl" if cfg.reference else "train.jsonl")
    eval_file = corpus / ("train.jsonl" if cfg.reference else "heldout.jsonl")
    if not train_file.is_file():
        raise LlmMiaError(f"corpus folder {corpus} has no {train_file.name}")
    train_texts = _read_texts(train_file)
    if not train_texts:
        raise LlmMiaError(f"{train_file} holds no text: cannot train on an empty corpus")
    data = CorpusTexts(corpus, train_file, eval_file, train_texts, _read_texts(eval_file) if eval_file.is_file() else [])
    if cfg.defense == "dedup":
        _dedup_corpus(cfg, data)
    if cfg.early_stopping is not None and not data.eval_texts:
        raise LlmMiaError(f"--early-stopping needs held-out text ({eval_file.name} is missing or empty)")
    if cfg.defense in _DEFENSE_MODULES:
        importlib.import_module(_DEFENSE_MODULES[cfg.defense]).check_corpus(cfg, data)
    return data


def _dedup_corpus(cfg: TrainConfig, data: CorpusTexts) -> None:
    """The dedup defence: a transformation of the training texts (:func:`llm_mia.training.defenses.dedup_training_texts`)."""

    d = dedup_training_texts(data.train_texts, min_span_chars=cfg.dedup_min_chars)
    if not d.texts:
        raise LlmMiaError(f"{data.train_file}: nothing left to train on after dedup")
    data.train_texts, data.dedup = d.texts, d.counts()


@dataclass
class TrainContext:
    """What every training loop shares: the config, the effective preset, the tokenized corpus, the device.

    ``new_model(seed)`` makes a fresh model of the run's kind (from scratch, a ``base`` fine-tune or
    a LoRA adapter on it); ``optimizer``, ``batches``, ``lm_loss`` and ``run_loop`` give every
    model of a run (the target, or a defence's sub-models) the same recipe.
    """

    cfg: TrainConfig
    preset: TrainPreset
    steps: int
    corpus: CorpusTexts
    device: torch.device
    tokenizer: object
    eos_id: int
    n_ctx: int
    train_docs: list[list[int]]
    eval_docs: list[list[int]]
    autocast_bf16: bool
    _base_model: object = None  # the base model loaded for its tokenizer, handed to the first new_model

    @property
    def what(self) -> str:
        """How the progress line names the model being trained."""
        c = self.cfg
        return "reference" if c.reference else "LoRA adapter" if c.lora is not None else "fine-tune" if c.base else "target"

    def new_model(self, seed: int):
        """A freshly initialised (or freshly loaded) model in train mode, seeded by ``seed``."""
        torch.manual_seed(seed)
        if self.cfg.base is None:
            model = _scratch_model(self.preset, len(self.tokenizer), self.eos_id, self.device)
            model.generation_config.pad_token_id = self.eos_id  # greedy decoding without a pad warning
        else:
            model, self._base_model = self._base_model, None
            if model is None:
                model = load_model(self.cfg.base, device=str(self.device), dtype=torch.float32).model
            if self.cfg.lora is not None:
                torch.manual_seed(seed)
                model = _with_lora(model, self.cfg.lora, self.cfg.base)
            else:  # a merged adapter comes back with its base frozen: a full fine-tune trains every weight
                model.requires_grad_(True)
        model.train()
        return model

    def optimizer(self, model, steps: int):
        """AdamW (no decay on biases / LayerNorm) and its schedule: linear warm-up then cosine to 0."""
        from transformers import get_cosine_schedule_with_warmup

        p = self.preset
        decay = [q for q in model.parameters() if q.requires_grad and q.dim() >= 2]
        no_decay = [q for q in model.parameters() if q.requires_grad and q.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": p.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=p.lr, betas=(0.9, 0.95))
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(p.warmup_steps, steps // 10),
                                                num_training_steps=steps)
        return opt, sched

    def batches(self, docs: Sequence[list[int]], generator: torch.Generator, *, owners: bool = False,
                batch_size: int | None = None) -> Iterator:
        """:func:`_batches` of ``docs`` with the run's context and batch size (:func:`_row_batches`
        with ``TrainConfig.rows``)."""
        if self.cfg.rows and not owners:
            bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_id
            return _row_batches(docs, bos_id=bos, eos_id=self.eos_id, n_ctx=self.n_ctx,
                                batch_size=batch_size or self.preset.batch_size, generator=generator)
        return _batches(docs, eos_id=self.eos_id, n_ctx=self.n_ctx, batch_size=batch_size or self.preset.batch_size,
                        generator=generator, owners=owners)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast_bf16)

    def lm_loss(self, model, x: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of the batch ``x`` (B, T): the plain training objective."""
        with self.autocast():
            return model(input_ids=x, labels=x).loss

    def eval_loss(self, model, max_tokens: int = MAX_EVAL_TOKENS) -> float | None:
        """:func:`llm_mia.models.heldout.heldout_loss` on the evaluation file."""
        return heldout_loss(model, self.eval_docs, eos_id=self.eos_id, n_ctx=self.n_ctx,
                            batch_size=2 * self.preset.batch_size, device=self.device, max_tokens=max_tokens)

    def stopper(self, model) -> _EarlyStopper | None:
        """The early stopper of ``model`` when ``early_stopping`` is set (on at most 16 k held-out tokens)."""
        if self.cfg.early_stopping is None:
            return None
        every = self.cfg.eval_every or max(1, self.steps // 20)
        return _EarlyStopper(model, lambda: self.eval_loss(model, max_tokens=16_384),
                             patience=self.cfg.early_stopping, every=every)


def _setup(cfg: TrainConfig, p: TrainPreset, steps: int, data: CorpusTexts) -> TrainContext:
    """Tokenizer (the base's, a reused one, or a BPE trained on the secret-free training text) and
    the tokenized corpus."""

    device = pick_device()
    base_model = None
    n_ctx = p.n_ctx
    if cfg.base is not None:
        torch.manual_seed(cfg.seed)
        # fp32 master weights whatever the device; load_model turns failures into one-line errors.
        loaded = load_model(cfg.base, device=str(device), dtype=torch.float32)
        base_model, tokenizer = loaded.model, loaded.tokenizer
        n_ctx = min(p.n_ctx, model_max_context(base_model) or p.n_ctx)
    elif cfg.tokenizer_from is not None:
        tokenizer = _load_tokenizer(cfg.tokenizer_from)
    else:
        tokenizer = train_bpe_tokenizer(_without_secrets(data.train_texts, data.folder), vocab_size=p.vocab_size)
    if tokenizer.eos_token_id is None:
        raise LlmMiaError(f"tokenizer of '{cfg.base or cfg.tokenizer_from}' has no EOS token to separate documents")
    return TrainContext(cfg=cfg, preset=p, steps=steps, corpus=data, device=device, tokenizer=tokenizer,
                        eos_id=tokenizer.eos_token_id, n_ctx=n_ctx, train_docs=encode_texts(tokenizer, data.train_texts),
                        eval_docs=encode_texts(tokenizer, data.eval_texts),
                        autocast_bf16=_bf16_autocast_ok(device) and cfg.defense != "dp",  # DP: per-sample grads in fp32
                        _base_model=base_model)


# ----------------------------------------------------------------------------------------------
# Training loops: one function per kind of training; a defence is one more function here or in its module


@dataclass
class LoopResult:
    """What a training loop did: the trained ``model``, its per-step losses, the loss log, steps taken,
    training tokens processed, seconds, and the recipe entries of its defence (``info``)."""

    model: object
    losses: list[float]
    log: list[dict]
    steps: int
    tokens_seen: float
    seconds: float
    info: dict = dataclasses.field(default_factory=dict)
    stopper: _EarlyStopper | None = None


def _log_entry(step: int, steps: int, value: float, sched) -> dict | None:
    """The loss-log entry of ``step`` (every 2% of the run, the first and the last step), else None."""
    if step == 1 or step % max(1, steps // 50) == 0 or step == steps:
        return {"step": step, "loss": round(value, 4) if math.isfinite(value) else None, "lr": sched.get_last_lr()[0]}
    return None


def run_loop(ctx: TrainContext, model, batches: Iterator, *, steps: int, step_loss=None, what: str | None = None,
             stopper: _EarlyStopper | None = None) -> LoopResult:
    """``steps`` optimizer steps of ``model`` on ``batches``: AdamW, schedule, grad clipping, loss log.

    ``step_loss(model, batch) -> (loss tensor to minimise, float to log)``; default
    ``ctx.lm_loss`` (the plain objective). ``batch`` is whatever ``batches`` yields; its token count
    (the first tensor's ``numel``) counts as training tokens seen.
    """
    if step_loss is None:
        def step_loss(m, x):
            loss = ctx.lm_loss(m, x)
            return loss, loss.item()
    opt, sched = ctx.optimizer(model, steps)
    losses, log, n_seen, taken = [], [], 0, 0
    model.train()
    bar = _progress(ctx.cfg.progress, steps, what or ctx.what)
    t0 = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            batch = next(batches)
            batch = tuple(b.to(ctx.device) for b in batch) if isinstance(batch, tuple) else batch.to(ctx.device)
            loss, value = step_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.preset.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(value):
                raise LlmMiaError(f"training diverged at step {step} (loss {value}); try a lower learning rate")
            losses.append(value)
            n_seen += (batch[0] if isinstance(batch, tuple) else batch).numel()
            if (e := _log_entry(step, steps, value, sched)) is not None:
                log.append(e)
            bar.advance(value)
            taken = step
            if stopper is not None and stopper(step, value):
                break
    finally:
        bar.close()
    return LoopResult(model, losses, log, taken, n_seen, time.perf_counter() - t0, stopper=stopper)


def _plain_loop(ctx: TrainContext) -> LoopResult:
    """No defence (also dedup, whose work is done on the texts): next-token loss on re-cut blocks."""
    model = ctx.new_model(ctx.cfg.seed)
    gen = torch.Generator().manual_seed(ctx.cfg.seed)
    return run_loop(ctx, model, ctx.batches(ctx.train_docs, gen), steps=ctx.steps, stopper=ctx.stopper(model))


def _dp_loop(ctx: TrainContext) -> LoopResult:
    """DP-SGD (:func:`llm_mia.training.defenses.dp_train_loop`) on fixed blocks, noise set by epsilon or sigma."""

    cfg, p, steps = ctx.cfg, ctx.preset, ctx.steps
    model = ctx.new_model(cfg.seed)
    opt, sched = ctx.optimizer(model, steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    blocks = _fixed_blocks(ctx.train_docs, eos_id=ctx.eos_id, n_ctx=ctx.n_ctx, generator=gen)  # (N, T)
    q = min(1.0, p.batch_size / len(blocks))
    sigma = cfg.noise_multiplier if cfg.noise_multiplier is not None else noise_for_epsilon(
        epsilon=cfg.epsilon, delta=cfg.delta, sample_rate=q, steps=steps)
    noise_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    losses, log = [], []
    stopper = ctx.stopper(model)
    bar = _progress(cfg.progress, steps, ctx.what)

    def on_step(step: int, value: float) -> bool:
        if math.isfinite(value):
            losses.append(value)
        if (e := _log_entry(step, steps, value, sched)) is not None:
            log.append(e)
        bar.advance(value)
        return stopper(step, value) if stopper is not None else False

    t0 = time.perf_counter()
    try:
        run = dp_train_loop(model, blocks, steps=steps, batch_size=p.batch_size,
                            micro_batch=cfg.micro_batch or p.batch_size, noise_multiplier=sigma,
                            max_grad_norm=cfg.max_grad_norm, delta=cfg.delta, optimizer=opt, scheduler=sched,
                            generator=noise_gen, on_step=on_step)
    finally:
        bar.close()
    taken = run.accounting["steps"]
    n_seen = round(q * len(blocks) * taken * blocks.shape[1])  # expected tokens
    return LoopResult(model, losses, log, taken, n_seen, time.perf_counter() - t0,
                      info={"dp": dict(run.accounting, target_epsilon=cfg.epsilon)}, stopper=stopper)


def _goldfish_loop(ctx: TrainContext) -> LoopResult:
    """Goldfish loss (:func:`llm_mia.training.defenses.goldfish_loss`): plain training's blocks and
    schedule, the loss averaged over the labels the hashed mask keeps."""
    cfg = ctx.cfg
    model = ctx.new_model(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    counts = [0, 0]  # labels dropped, labels seen

    def step_loss(m, x):
        keep = goldfish_keep_mask(x, k=cfg.goldfish_k, h=cfg.goldfish_h)  # (B, T)
        counts[0] += int((~keep[:, 1:]).sum())
        counts[1] += keep[:, 1:].numel()
        with ctx.autocast():
            logits = m(input_ids=x).logits  # (B, T, V)
        loss = goldfish_loss(logits, x, keep)
        return loss, loss.item()

    res = run_loop(ctx, model, ctx.batches(ctx.train_docs, gen), steps=ctx.steps, step_loss=step_loss,
                   stopper=ctx.stopper(model))
    res.info = {"goldfish": {"source": "Hans et al. 2024, arXiv 2406.10209, Section 3.1 (hashed mask)",
                             "k": cfg.goldfish_k, "h": cfg.goldfish_h, "hash": "blake2b-64 of the h preceding ids",
                             "dropped_fraction": counts[0] / counts[1] if counts[1] else None}}
    return res


def _loop_for(defense: str):
    """The training loop of a defence (the defences with their own module are imported when used)."""
    if defense in _DEFENSE_MODULES:
        return importlib.import_module(_DEFENSE_MODULES[defense]).train_loop
    return {"none": _plain_loop, "dedup": _plain_loop, "dp": _dp_loop, "goldfish": _goldfish_loop}[defense]


# ----------------------------------------------------------------------------------------------
# The entry point


def train_model(corpus_dir: str | os.PathLike, out_dir: str | os.PathLike, *, config: TrainConfig | None = None,
                **options) -> TrainSummary:
    """Train a causal LM on a corpus folder and save it to ``out_dir``.

    Args:
        corpus_dir: a folder with ``train.jsonl`` and ``heldout.jsonl`` (one ``{"text": ...}`` per
            line), as written by :func:`llm_mia.data.corpus.build_corpus`.
        out_dir: the model folder to write. It is written under a temporary name beside it and
            renamed at the end, so a killed run never leaves a half-written folder under this name.
            An existing earlier model folder (one holding ``recipe.json``) is replaced; any other
            non-empty folder is refused.
        config: every knob (:class:`TrainConfig`, whose field docs say what each does); default
            ``TrainConfig()``.
        **options: fields of :class:`TrainConfig` (``preset="tiny"``, ``defense="dp"``, ...), which
            override ``config``'s.

    Returns:
        A :class:`TrainSummary`; the same numbers and the full recipe are in ``out_dir/recipe.json``.

    Raises:
        LlmMiaError: one line, before any training, for a missing corpus folder or file, an empty or
            corrupt corpus, an unknown preset or defence, an option that does not apply, a model or
            tokenizer that cannot be loaded, or an output folder that must not be replaced.
        TypeError: an option that is not a :class:`TrainConfig` field.
    """
    t_start = time.perf_counter()
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"train_model() got unexpected keyword arguments: {', '.join(unknown)}")
    cfg = dataclasses.replace(config or TrainConfig(), **options)
    p, steps = _check_config(cfg)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    data = _read_corpus(cfg, corpus_dir)
    ctx = _setup(cfg, p, steps, data)
    res = _loop_for(cfg.defense)(ctx)
    if res.stopper is not None:
        res.stopper.restore()
    model = res.model
    model.eval()
    recipe = _recipe(ctx, res)
    _save(model, ctx.tokenizer, recipe, out_dir, t_start)
    return TrainSummary(out_dir=out_dir, steps=res.steps, seconds=time.perf_counter() - t_start,
                        train_loss=recipe["train_loss"], heldout_loss=recipe["heldout_loss"],
                        n_params=recipe["n_params"], tokens_per_second=recipe["tokens_per_second"])


def _recipe(ctx: TrainContext, res: LoopResult) -> dict:
    """recipe.json: everything needed to say how the model was made (and the held-out loss, measured here)."""
    import transformers

    cfg, p, data, model = ctx.cfg, ctx.preset, ctx.corpus, res.model
    losses = res.losses or [math.nan]
    tail = losses[-max(1, ctx.steps // 10):]
    heldout = ctx.eval_loss(model)
    n_train_tokens = sum(len(d) + 1 for d in ctx.train_docs)
    stopper = res.stopper
    recipe = {
        "preset": cfg.preset,
        "preset_values": dataclasses.asdict(p),
        "config": model.config.to_diff_dict() if cfg.base is not None else model.config.to_dict(),
        "steps": res.steps,
        "planned_steps": ctx.steps,
        "batch_size": p.batch_size,
        "context": ctx.n_ctx,
        "lr": p.lr,
        "schedule": "linear warm-up, cosine decay to 0",
        "warmup_steps": min(p.warmup_steps, ctx.steps // 10),
        "optimizer": "AdamW(betas=(0.9, 0.95))",
        "weight_decay": p.weight_decay,
        "dropout": p.dropout if cfg.base is None else None,
        "grad_clip": p.grad_clip if cfg.defense != "dp" else None,
        "defense": cfg.defense,
        "dp": None,
        "dedup": data.dedup,
        "early_stopping": None if stopper is None else {
            "patience": stopper.patience, "eval_every": stopper.every, "best_step": stopper.best_step,
            "best_heldout_loss": stopper.best, "stopped_at": res.steps, "evals": stopper.log,
            "note": "selected on the evaluation file's loss (non-members for a target): a small optimistic "
                    "bias for membership results"},
        "seed": cfg.seed,
        "corpus": str(data.folder.resolve()),
        "train_file": data.train_file.name,
        "train_sha256": sha256_file(data.train_file),
        # the training record the audit verifies (llm_mia.audit.stages.check_training_record)
        "secrets_sha256": (sha256_file(data.folder / "secrets.json")
                           if not cfg.reference and (data.folder / "secrets.json").is_file() else None),
        "eval_file": data.eval_file.name if ctx.eval_docs else None,
        "eval_sha256": sha256_file(data.eval_file) if ctx.eval_docs else None,
        "reference": cfg.reference,
        "base": cfg.base,
        "lora": None if cfg.lora is None else {
            "r": cfg.lora.r, "alpha": cfg.lora.alpha, "dropout": cfg.lora.dropout,
            "target_modules": sorted(model.peft_config["default"].target_modules),
            "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad)},
        "tokenizer_from": str(Path(cfg.tokenizer_from).resolve()) if cfg.tokenizer_from is not None else None,
        "vocab_size": len(ctx.tokenizer),
        "n_params": _n_params(model),
        "n_train_documents": len(ctx.train_docs),
        "n_train_tokens": n_train_tokens,
        "epochs": res.tokens_seen / n_train_tokens,
        "train_loss": sum(tail) / len(tail),
        "heldout_loss": heldout,
        "heldout_perplexity": math.exp(heldout) if heldout is not None else None,
        "train_seconds": res.seconds,
        "tokens_per_second": res.tokens_seen / res.seconds,
        "device": str(ctx.device),
        "autocast": "bfloat16" if ctx.autocast_bf16 else None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "loss_log": res.log,
    }
    recipe.update(res.info)
    return recipe


def _save(model, tokenizer, recipe: dict, out_dir: Path, t_start: float) -> None:
    """Write the folder under a temporary name beside ``out_dir``, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        recipe["wall_seconds"] = time.perf_counter() - t_start  # without the save, which is quick
        _save_model(model, tokenizer, recipe, tmp)
        _move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _progress:
    """A rich progress bar on stderr showing the loss (plain lines every 10% when stderr is not a
    terminal, :class:`llm_mia.core.progress.PlainProgress`), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, what: str):
        self._p = self._plain = None
        if not enabled:
            return
        if not sys.stderr.isatty():
            self._plain = PlainProgress(f"train {what}", total, sys.stderr)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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
