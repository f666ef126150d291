"""Benchmark: exposure candidates scored with the shared-prefix KV cache vs whole-sentence scoring.

N candidates of one secret space (default: the PII sentence of ``llm-mia corpus build``, a long
prefix and an SSN, format ``{d3}-{d2}-{d4}``) are scored on a GPT-2 of the ``small`` preset's shape
(4 layers, width 256, 4 heads, BPE vocabulary 4096, random weights; speed does not depend on them).

Two ways, same model, same process, same log-perplexity definition (Carlini et al. 2019, sec. 3:
sum of -log2 p over every token of the BOS-conditioned sentence):

- naive: every whole sentence through ``llm_mia.models.stats.compute_token_stats`` (batched,
  length-sorted), i.e. ``llm_mia.exposure.secrets.log_perplexity_bits``;
- ours: ``llm_mia.exposure.secrets.score_space``: the shared prefix runs once, its KV cache is broadcast to
  each batch and only the random part and suffix are fed.

It prints candidates/s of each, the ratio and the largest |difference| in bits; exit status 1 if
any difference exceeds 1e-3 bits.

    python benchmarks/exposure_bench.py --threads 1              # 2,000 candidates, PII sentence
    python benchmarks/exposure_bench.py --n 500 --template canary --threads 1
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time

import numpy as np
import torch

TEMPLATES = {
    "pii": ("Customer record: Jane Roe, 4127 Miller Lane Apt. 7, Port Kimberly, email jane.roe@example.org, "
            "phone 555-201-7788, card 4539148803436467, SSN ", "{d3}-{d2}-{d4}", "."),
    "canary": ("The PIN of Jane Roe is ", "{d6}", "."),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="candidates (default 2000)")
    ap.add_argument("--template", default="pii", choices=sorted(TEMPLATES))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--batch-size", type=int, default=64, help="rows per forward pass for ours (default 64)")
    ap.add_argument("--naive-batch-size", type=int, default=64, help="rows per forward pass for naive (default 64)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from llm_mia.data.corpus import load_source
    from llm_mia.data.secrets import sample_candidates
    from llm_mia.exposure.secrets import log_perplexity_bits, score_space
    from llm_mia.models.hf import from_objects
    from llm_mia.models.tokenizer import train_bpe_tokenizer
    from llm_mia.training.train import PRESETS

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = PRESETS["small"]
    tok = train_bpe_tokenizer(load_source("python-docs", max_chars=400_000), vocab_size=p.vocab_size)
    torch.manual_seed(args.seed)
    cfg = GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=p.n_ctx, vocab_size=len(tok),
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).to(args.device).eval()
    lm = from_objects(model, tok)
    prefix, fmt, suffix = TEMPLATES[args.template]
    cands = sample_candidates(fmt, args.n, random.Random(args.seed))
    sents = [prefix + c + suffix for c in cands]
    n_tok = [len(tok(s)["input_ids"]) + 1 for s in sents]
    n_pre = len(tok(prefix.rstrip())["input_ids"]) + 1
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}, fp32; "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"model: GPT-2 {cfg.n_layer} layers, width {cfg.n_embd}, {cfg.n_head} heads, vocab {cfg.vocab_size}, "
          f"{sum(x.numel() for x in model.parameters()) / 1e6:.1f} M parameters")
    print(f"candidates: {args.n} of format {fmt} ({args.template}); sentences of {min(n_tok)}-{max(n_tok)} tokens "
          f"with BOS, prefix ~{n_pre} of them")

    # warm-up outside the timings
    score_space(lm, prefix, cands[:8], suffix, batch_size=args.batch_size)
    log_perplexity_bits(lm, sents[:8], batch_size=args.naive_batch_size)

    t0 = time.perf_counter()
    naive = log_perplexity_bits(lm, sents, batch_size=args.naive_batch_size)
    t_naive = time.perf_counter() - t0
    print(f"naive (whole sentences, batch {args.naive_batch_size}): {args.n} in {t_naive:6.1f} s = "
          f"{args.n / t_naive:8.1f} candidates/s", flush=True)
    t0 = time.perf_counter()
    ours = score_space(lm, prefix, cands, suffix, batch_size=args.batch_size).logppl
    t_ours = time.perf_counter() - t0
    print(f"ours  (shared-prefix KV cache, batch {args.batch_size}): {args.n} in {t_ours:6.1f} s = "
          f"{args.n / t_ours:8.1f} candidates/s")
    print(f"ratio: {t_naive / t_ours:.1f}x")
    diff = float(np.abs(ours - naive).max())
    ok = diff <= 1e-3
    print(f"{'OK' if ok else 'MISMATCH'}: max |ours - naive| = {diff:.2e} bits "
          f"(log-perplexities {naive.min():.1f}-{naive.max():.1f} bits; tolerance 1e-3)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
