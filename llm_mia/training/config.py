"""Every knob of a training run and its default, in one place: the presets, :class:`LoraSpec` and
:class:`TrainConfig`. Importing this module does not import torch, so the command line can read its
defaults from here."""

from __future__ import annotations

from dataclasses import dataclass

from llm_mia.core.errors import LlmMiaError

__all__ = ["GPT2_LORA_TARGETS", "PRESETS", "LoraSpec", "TrainConfig", "TrainPreset"]


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
    # For the demo's full fine-tune (llm_mia.audit.demo): "small" with 8 blocks a step instead of 16. Measured
    # on an idle core: 1,000 steps of a full fine-tune of the demo's base (173 s) extract 5 of 8 secrets
    # inserted 16+ times and give Min-K% AUC 1.000 on 102 vs 102 documents.
    "demo": TrainPreset(n_layer=4, n_embd=256, n_head=4, n_ctx=128, vocab_size=4096, steps=1000, batch_size=8,
                        lr=3e-3, warmup_steps=30, weight_decay=0.0, grad_clip=1.0, dropout=0.0),
    # For the full `llm-mia defenses` (compare.DEMO_PLAN): about 20 models (defences,
    # SELENA's sub-models, 8 shadow models) must train in half an hour on one CPU thread.
    "mini": TrainPreset(n_layer=2, n_embd=128, n_head=2, n_ctx=128, vocab_size=2048, steps=400, batch_size=16,
                        lr=3e-3, warmup_steps=20, weight_decay=0.0, grad_clip=1.0, dropout=0.0),
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


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of one :func:`train_model` call, with its default (``llm-mia train`` reads its
    defaults from here).

    Attributes:
        base: a hub id or local folder to fine-tune; None trains a GPT-2 of ``preset``'s shape from
            scratch with a byte-level BPE tokenizer trained on the training text.
        preset: a key of :data:`PRESETS` ("tiny" for tests, "small" for the demo).
        reference: train on ``heldout.jsonl`` (text holding none of the secrets) instead of
            ``train.jsonl``, with the same recipe; the held-out loss is then measured on ``train.jsonl``.
        tokenizer_from: a model folder whose tokenizer to reuse instead of training one (the audit
            trains the reference with the target's tokenizer, so per-token losses compare). Not
            allowed together with ``base`` (a base model brings its own tokenizer).
        seed: seeds the initialisation and the data order.
        max_steps: overrides the preset's number of optimizer steps.
        progress: show a progress bar on stderr.
        defense: a value of :data:`llm_mia.training.defenses.DEFENSES`: "none", "dp" (DP-SGD, see
            :mod:`llm_mia.training.defenses`), "dedup" (exact, near and repeated-span dedup of the training
            documents before training; counts in the recipe), "selena" (:mod:`llm_mia.training.selena`),
            "adv-reg" (:mod:`llm_mia.training.adv_reg`) or "goldfish" (Goldfish loss).
        epsilon / delta: with ``defense="dp"``: the target privacy budget; the noise multiplier is
            the smallest that the RDP accountant says reaches ``epsilon`` at ``delta`` after the
            planned steps. The accountant's final epsilon for the steps actually taken is written to
            ``recipe.json["dp"]["epsilon"]``.
        noise_multiplier: with ``defense="dp"``: sigma directly, instead of ``epsilon``.
        max_grad_norm: DP per-record clipping norm C.
        micro_batch: DP records per forward/backward pass (default: the preset's batch size); it
            changes neither the sampling rate nor the step count.
        weight_decay / dropout: override the preset's values (dropout: from-scratch models only).
        lr: overrides the preset's peak learning rate (the audit's positive-control twin sets it).
        rows: each document its own row from BOS (EOS-padded), instead of the packed stream re-cut
            every epoch: the audit's positive-control twin, whose documents are the secrets' sentences
            (plain and dedup training only).
        early_stopping: patience, in evaluations of the held-out loss (every ``eval_every`` steps,
            default steps // 20, on at most 16 k tokens of the evaluation file) without a new best;
            the best weights are restored. Selecting on held-out loss uses the non-member file, a
            small optimistic bias for the audit's membership results that the recipe states.
        dedup_min_chars: with ``defense="dedup"``: the repeated-span length in characters.
        lora: fine-tune ``base`` with LoRA (:class:`LoraSpec`) and save only the adapter.
        selena_k / selena_l / selena_sub_steps: with ``defense="selena"`` (:mod:`llm_mia.training.selena`):
            K Split-AI sub-models, each training document left out of exactly L of them (the paper
            uses K = 25, L = 10; K = 4 keeps a CPU run to a few times an undefended one), and each
            sub-model's steps (None: the run's steps).
        adv_lambda / adv_k / reference_set: with ``defense="adv-reg"`` (:mod:`llm_mia.training.adv_reg`): the
            weight lambda of the inference gain, the adversary steps per model step, and a JSONL
            file of the defender's non-member texts (None: a seeded half of the evaluation file).
        goldfish_k / goldfish_h: with ``defense="goldfish"`` (Goldfish loss, Hans et al. 2024,
            :mod:`llm_mia.training.defenses`): one label in ``k`` left out of the loss, chosen by a
            hash of the ``h`` preceding tokens (the paper's k = 4, h = 13).
    """

    base: str | None = None
    preset: str = "small"
    reference: bool = False
    tokenizer_from: str | None = None
    seed: int = 0
    max_steps: int | None = None
    progress: bool = True
    defense: str = "none"
    epsilon: float | None = None
    delta: float = 1e-5
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    micro_batch: int | None = None
    weight_decay: float | None = None
    dropout: float | None = None
    early_stopping: int | None = None
    eval_every: int | None = None
    dedup_min_chars: int = 30
    lora: LoraSpec | None = None
    selena_k: int = 4
    selena_l: int = 2
    selena_sub_steps: int | None = None
    adv_lambda: float = 1.0
    adv_k: int = 1
    reference_set: str | None = None
    lr: float | None = None
    rows: bool = False
    goldfish_k: int = 4
    goldfish_h: int = 13


def options_only_with(cfg: TrainConfig, defense: str, names: tuple[str, ...]) -> bool:
    """Whether ``cfg.defense`` is ``defense``; when it is not, refuse any of the options ``names``
    (TrainConfig fields) set away from their defaults.

    Raises:
        LlmMiaError: e.g. "--selena-k/--selena-l need --defense selena".
    """
    if cfg.defense == defense:
        return True
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(cfg, n) != getattr(TrainConfig, n)]
    if given:
        raise LlmMiaError(f"{'/'.join(given)} need --defense {defense}")
    return False

