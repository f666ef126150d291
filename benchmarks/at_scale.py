"""Audits at scale, on paper: the arithmetic of docs/at-scale.md (FLOPs per token x tokens / (MFU x peak)).

Nothing is measured here: change the assumptions below (or pass ``--decode-mfu`` / ``--score-mfu``)
and the times follow. FLOPs per token = 2 x parameters that multiply (embeddings are lookups; a tied
head counted once) + attention 4 x layers x width x (position + 1), averaged over the positions.

    python benchmarks/at_scale.py
    python benchmarks/at_scale.py --decode-mfu 0.1 --score-mfu 0.2
"""

from __future__ import annotations

import argparse

H200_BF16_DENSE = 989e12  # FLOP/s, without sparsity


def per_token(params: float, layers: int, width: int, length: int) -> float:
    """FLOPs of one token averaged over positions 0..length-1."""
    return 2 * params + 4 * layers * width * (length + 1) / 2


def carlini(gen_rate: float, score_rate: float) -> dict:
    """Carlini et al. 2021: 600,000 x 256 tokens from GPT-2 XL; lowercase pass and a GPT-2 small reference."""
    xl = 48 * 12 * 1600**2 + 50257 * 1600
    small = 12 * 12 * 768**2 + 50257 * 768
    tokens = 600_000 * 256
    gen = tokens * per_token(xl, 48, 1600, 256)
    score = tokens * per_token(xl, 48, 1600, 256) + tokens * per_token(small, 12, 768, 256)
    return {"generation": gen / gen_rate, "scoring": score / score_rate, "flops": gen + score}


def lora_7b(gen_rate: float, score_rate: float) -> dict:
    """A Llama-2-7B-shaped LoRA audit with its base as reference (docs/at-scale.md states each workload)."""
    layers, width, mlp, vocab = 32, 4096, 11008, 32000
    p = layers * (4 * width * width + 3 * width * mlp) + vocab * width
    sec_scored = 2 * 10_000 * (64 + 101 * 16) * per_token(p, layers, width, 80)
    sec_greedy = 10_000 * 16 * per_token(p, layers, width, 80)
    member = 3 * 10_000 * 512 * per_token(p, layers, width, 512)
    gen = 100_000 * 256 * per_token(p, layers, width, 256)
    return {"secrets": sec_scored / score_rate + sec_greedy / gen_rate, "membership": member / score_rate,
            "extraction generation": gen / gen_rate, "extraction scoring": 2 * gen / score_rate,
            "flops": sec_scored + sec_greedy + member + 3 * gen}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode-mfu", type=float, default=0.40)
    ap.add_argument("--score-mfu", type=float, default=0.60)
    ap.add_argument("--peak", type=float, default=H200_BF16_DENSE)
    a = ap.parse_args(argv)
    rates = (a.decode_mfu * a.peak, a.score_mfu * a.peak)
    for name, parts in (("Carlini et al. 2021 full run", carlini(*rates)), ("7B LoRA audit", lora_7b(*rates))):
        flops = parts.pop("flops")
        total = sum(parts.values())
        print(f"{name}: {flops:.3g} FLOPs; one GPU {total / 60:.1f} min, eight {total / 8 / 60:.1f} min")
        for k, v in parts.items():
            print(f"  {k}: {v / 60:.1f} min ({v / 8 / 60:.2f} on eight)")


if __name__ == "__main__":
    main()
