"""`llm-mia train`: train or fine-tune a GPT-2 on a corpus, optionally with a defence (:mod:`llm_mia.training`)."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_mia.core.errors import LlmMiaError
from llm_mia.training.config import LoraSpec, TrainConfig

_TC = TrainConfig  # `llm-mia train` reads every default from TrainConfig / LoraSpec (llm_mia.training.config)


def train(
    corpus: Path = typer.Option(..., "--corpus", help="Corpus folder from `llm-mia corpus build`."),
    out: Path = typer.Option(..., "--out", help="Output model folder (safetensors, tokenizer, recipe.json)."),
    base: str | None = typer.Option(_TC.base, "--base",
                                    help="Fine-tune this HF model id or folder instead of training from scratch."),
    preset: str = typer.Option(_TC.preset, "--preset", help="tiny | small | mini"),
    reference: bool = typer.Option(_TC.reference, "--reference",
                                   help="Train a reference model on the held-out split (no secrets)."),
    tokenizer_from: str | None = typer.Option(_TC.tokenizer_from, "--tokenizer-from",
                                              help="Reuse this model folder's tokenizer."),
    seed: int = typer.Option(_TC.seed, "--seed"),
    max_steps: int | None = typer.Option(_TC.max_steps, "--max-steps", help="Override the preset's number of steps."),
    defense: str = typer.Option(_TC.defense, "--defense", help="none | dp (DP-SGD) | dedup (training-data dedup) | "
                                "selena (Split-AI + self-distillation) | adv-reg (adversarial regularisation) | "
                                "goldfish (Goldfish loss)."),
    epsilon: float | None = typer.Option(_TC.epsilon, "--epsilon",
                                         help="DP target epsilon (sets the noise multiplier)."),
    delta: float = typer.Option(_TC.delta, "--delta", help="DP delta."),
    noise_multiplier: float | None = typer.Option(_TC.noise_multiplier, "--noise-multiplier",
                                                  help="DP sigma, instead of --epsilon."),
    max_grad_norm: float = typer.Option(_TC.max_grad_norm, "--max-grad-norm", help="DP per-record clipping norm."),
    micro_batch: int | None = typer.Option(_TC.micro_batch, "--micro-batch", help="DP records per forward pass."),
    weight_decay: float | None = typer.Option(_TC.weight_decay, "--weight-decay",
                                              help="Override the preset's AdamW weight decay."),
    dropout: float | None = typer.Option(_TC.dropout, "--dropout",
                                         help="Override the preset's dropout (from scratch only)."),
    early_stopping: int | None = typer.Option(_TC.early_stopping, "--early-stopping",
                                                 help="Patience (held-out evaluations without a new best)."),
    dedup_min_chars: int = typer.Option(_TC.dedup_min_chars, "--dedup-min-chars",
                                        help="--defense dedup: repeated-span length."),
    selena_k: int = typer.Option(_TC.selena_k, "--selena-k", help="--defense selena: Split-AI sub-models K."),
    selena_l: int = typer.Option(_TC.selena_l, "--selena-l",
                                 help="--defense selena: sub-models each document is left out of (L < K)."),
    selena_sub_steps: int | None = typer.Option(_TC.selena_sub_steps, "--selena-sub-steps",
                                                   help="--defense selena: steps of each sub-model (default: the "
                                                        "run's steps)."),
    adv_lambda: float = typer.Option(_TC.adv_lambda, "--adv-lambda",
                                     help="--defense adv-reg: weight of the adversary's gain."),
    adv_k: int = typer.Option(_TC.adv_k, "--adv-k", help="--defense adv-reg: adversary steps per model step."),
    reference_set: str | None = typer.Option(_TC.reference_set, "--reference-set",
                                                help="--defense adv-reg: JSONL of non-member texts for the adversary "
                                                     "(default: a seeded half of heldout.jsonl)."),
    goldfish_k: int = typer.Option(_TC.goldfish_k, "--goldfish-k",
                                   help="--defense goldfish: drop one label in k from the loss."),
    goldfish_h: int = typer.Option(_TC.goldfish_h, "--goldfish-h",
                                   help="--defense goldfish: preceding tokens hashed to choose the drops."),
    lora: bool = typer.Option(False, "--lora",
                              help="With --base: fine-tune LoRA matrices (peft) and save the adapter only."),
    lora_r: int = typer.Option(LoraSpec.r, "--lora-r", help="LoRA rank."),
    lora_alpha: float = typer.Option(LoraSpec.alpha, "--lora-alpha",
                                     help="LoRA scaling alpha (the update is scaled by alpha / r)."),
    lora_dropout: float = typer.Option(LoraSpec.dropout, "--lora-dropout", help="Dropout on the LoRA input."),
    lora_targets: str | None = typer.Option(None, "--lora-targets", help="Comma-separated module names "
                                               "(default: c_attn,c_proj,c_fc for GPT-2, peft's default otherwise)."),
):
    """Train (or fine-tune) a GPT-2 on a corpus, optionally with a defence."""
    from llm_mia.core.io import check_output_dir
    from llm_mia.training.train import train_model

    check_output_dir(out)
    lora_defaults = (LoraSpec.r, LoraSpec.alpha, LoraSpec.dropout)
    if not lora and (lora_targets is not None or (lora_r, lora_alpha, lora_dropout) != lora_defaults):
        raise LlmMiaError("--lora-r/--lora-alpha/--lora-dropout/--lora-targets go with --lora")
    targets = tuple(x.strip() for x in lora_targets.split(",") if x.strip()) if lora_targets else None
    spec = LoraSpec(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=targets) if lora else None
    cfg = TrainConfig(base=base, preset=preset, reference=reference, tokenizer_from=tokenizer_from, seed=seed,
                      max_steps=max_steps, defense=defense, epsilon=epsilon, delta=delta,
                      noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, micro_batch=micro_batch,
                      weight_decay=weight_decay, dropout=dropout, early_stopping=early_stopping,
                      dedup_min_chars=dedup_min_chars, lora=spec, selena_k=selena_k, selena_l=selena_l,
                      selena_sub_steps=selena_sub_steps, adv_lambda=adv_lambda, adv_k=adv_k,
                      reference_set=reference_set, goldfish_k=goldfish_k, goldfish_h=goldfish_h)
    s = train_model(corpus, out, config=cfg)
    typer.echo(f"trained {s.steps} steps in {s.seconds:.0f} s: train loss {s.train_loss:.3f}, "
               f"held-out loss {s.heldout_loss:.3f} -> {out}")
