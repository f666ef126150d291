"""Benchmark: llm_mia's batched scoring vs the one-text-at-a-time loop of the public MIA tools.

Scores N texts of 64-256 tokens with every signal that needs no extra input (loss, zlib,
lowercase, min_k, min_k_plus_plus, window) on a GPT-2 of the ``small`` preset's shape (4 layers,
width 256, 4 heads, BPE vocabulary of 4096) with 256 positions, so no text needs a sliding context.
The weights are random (speed does not depend on them); the tokenizer is trained on the embedded
python-docs corpus and the texts are random word sequences from it, all seeded.

Two ways, same model, same process:

- ours: ``llm_mia.membership.scoring.score`` -- one batched, length-sorted forward pass per view of the texts
  (the text, its lowercase), every statistic (log p, mu, sigma) read from that pass;
- baseline: the loop the public tools use -- one text at a time, and each attack computes its own
  statistic with its own forward pass: LOSS (HF ``labels=`` loss), zlib (loss again), lowercase
  (loss of the text and of its lowercase), Min-K% (log-softmax), Min-K%++ (log-softmax, mu, sigma),
  window (token log-probs, then every 50-token window): 7 forward passes per text.

It prints texts/s of each, the speed ratio, and the largest |difference| of every signal between the
two (they must agree: same definitions, independent code).

    python benchmarks/score_bench.py                # 2,000 texts, batch sizes 4 and 32
    python benchmarks/score_bench.py --n 200 --threads 1 --batch-size 8
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # this checkout's llm_mia

SIGNALS = ["loss", "zlib", "lowercase", "min_k", "min_k_plus_plus", "window"]
MIN_TOK, MAX_TOK = 64, 256


# ----------------------------------------------------------------------------------------- setup

def build_model_and_tokenizer(seed: int, device: str, dtype: torch.dtype):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_mia.data.corpus import load_source
    from llm_mia.models.tokenizer import train_bpe_tokenizer
    from llm_mia.training.train import PRESETS

    p = PRESETS["small"]
    docs = load_source("python-docs", max_chars=400_000)
    tok = train_bpe_tokenizer(docs, vocab_size=p.vocab_size)
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=MAX_TOK + 16,
                     vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).eval()
    return model, tok, docs


def make_texts(tok, docs: list[str], n: int, seed: int) -> list[str]:
    """N random word sequences whose text and lowercase text both have 64-256 tokens (seeded)."""
    words = sorted({w for d in docs for w in d.split() if w.isprintable()})
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:
        target = rng.randint(MIN_TOK, MAX_TOK)
        ws: list[str] = []
        # words carry ~1.5-3 tokens each here; grow in chunks, then trim to the target length
        while True:
            ws.extend(rng.choice(words) for _ in range(8))
            if len(tok(" ".join(ws))["input_ids"]) >= target:
                break
        while len(ws) > 1 and max(len(tok(t)["input_ids"]) for t in (" ".join(ws), " ".join(ws).lower())) > target:
            ws.pop()
        text = " ".join(ws)
        lens = (len(tok(text)["input_ids"]), len(tok(text.lower())["input_ids"]))
        if MIN_TOK <= min(lens) and max(lens) <= MAX_TOK:
            texts.append(text)
    return texts


# ----------------------------------------------------------------------------------------- baseline

@torch.inference_mode()
def _forward(model, ids: list[int]) -> torch.Tensor:
    dev = next(model.parameters()).device
    return model(input_ids=torch.tensor([ids], device=dev)).logits[0].float()  # (T, V)


def _hf_loss(model, ids: list[int]) -> float:
    dev = next(model.parameters()).device
    with torch.inference_mode():
        x = torch.tensor([ids], device=dev)
        return float(model(input_ids=x, labels=x).loss)


def _token_logprobs(model, ids: list[int]) -> torch.Tensor:
    logp = torch.log_softmax(_forward(model, ids)[:-1], dim=-1)
    return logp.gather(-1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0]


def _lowest_k(v: torch.Tensor, k: float = 0.2) -> float:
    m = max(1, int(math.floor(k * len(v))))
    return float(torch.sort(v).values[:m].mean())


def baseline_scores(model, tok, text: str) -> dict[str, float]:
    """Each attack on its own, one text, one forward pass per statistic (as in the public repos)."""
    ids = tok(text)["input_ids"]
    out = {}
    out["loss"] = -_hf_loss(model, ids)  # LOSS attack
    out["zlib"] = len(zlib.compress(text.encode("utf-8"))) / _hf_loss(model, ids)  # zlib attack
    out["lowercase"] = _hf_loss(model, tok(text.lower())["input_ids"]) / _hf_loss(model, ids)  # lowercase attack
    out["min_k"] = _lowest_k(_token_logprobs(model, ids))  # Min-K% Prob
    logits = _forward(model, ids)[:-1]  # Min-K%++
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    # centred form: the E[x^2] - mu^2 form of the paper's code loses ~1e-3 relative in fp32 here
    sigma = (p * (logp - mu[:, None]).square()).sum(-1).sqrt()
    tgt = logp.gather(-1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0]
    out["min_k_plus_plus"] = _lowest_k((tgt - mu) / sigma)
    lp = _token_logprobs(model, ids)  # window attack: every 50-token window of the token NLLs
    w = min(50, len(lp))
    out["window"] = -min(float(-lp[s:s + w].mean()) for s in range(len(lp) - w + 1))
    return out


# ----------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="number of texts (default 2000)")
    ap.add_argument("--baseline-n", type=int, default=None,
                    help="score only the first N texts with the baseline loop (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, the CLI's default)")
    ap.add_argument("--batch-size", default="auto,32",
                    help="comma-separated batch sizes for ours; 'auto' = the library default, a per-device "
                         "token budget (default: auto,32)")
    ap.add_argument("--engine", default="hf,vllm", help="engines of ours, comma-separated (default hf,vllm; "
                    "vllm is skipped with a note where it is not importable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from engines import engine_notes, load_engine
    from transformers.utils import logging as hf_logging

    from llm_mia.membership.scoring import score

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # vLLM's CPU worker: this many threads, unpinned
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tok, docs = build_model_and_tokenizer(args.seed, args.device, dtype)
    texts = make_texts(tok, docs, args.n, args.seed)
    nb = len(texts) if args.baseline_n is None else min(args.baseline_n, len(texts))
    n_tok = [len(tok(t)["input_ids"]) for t in texts]
    notes = engine_notes([e.strip() for e in args.engine.split(",") if e.strip()])
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}, "
          f"{args.dtype}; torch {torch.__version__}, python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"model: GPT-2 {model.config.n_layer} layers, width {model.config.n_embd}, {model.config.n_head} heads, "
          f"vocab {model.config.vocab_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    print(f"texts: {len(texts)}, {min(n_tok)}-{max(n_tok)} tokens (mean {sum(n_tok) / len(n_tok):.0f}); "
          f"signals: {', '.join(SIGNALS)}")

    batch_sizes = [None if x.strip() == "auto" else int(x) for x in str(args.batch_size).split(",") if x.strip()]
    baseline_scores(model, tok, texts[0])  # warm-up
    runs = {}
    with tempfile.TemporaryDirectory() as d:
        # ours gets the model as the CLI loads it (HF: load_model's fused tanh GELU, the same formula in
        # one kernel); the baseline keeps the model as transformers builds it. Same weights.
        model.save_pretrained(d)
        tok.save_pretrained(d)
        for engine, note in notes.items():
            if note:
                print(f"{engine}: {note}")
                continue
            lm = load_engine(engine, d, device=args.device, dtype=args.dtype)
            # vLLM returns the log-prob of the token only, not the distribution Min-K%++ needs
            sigs = [s for s in SIGNALS if engine == "hf" or s != "min_k_plus_plus"]
            for bs in batch_sizes if engine == "hf" else [None]:
                score(lm, texts[:4], signals=sigs, batch_size=bs)  # warm-up (allocator, kernels)
                t0 = time.perf_counter()
                rows = score(lm, texts, signals=sigs, batch_size=bs).rows
                runs[engine, bs] = (rows, time.perf_counter() - t0)
                print(f"ours {engine:4s} (batched, batch size {bs or 'auto':>4}, 2 forward passes per text): "
                      f"{len(texts)} texts in {runs[engine, bs][1]:7.1f} s = {len(texts) / runs[engine, bs][1]:7.1f} "
                      f"texts/s (load {os.getloadavg()[0]:.2f})", flush=True)
            del lm

    t0 = time.perf_counter()
    base = [baseline_scores(model, tok, t) for t in texts[:nb]]
    t_base = time.perf_counter() - t0
    r_base = nb / t_base
    print(f"baseline (one text at a time, 7 forward passes per text):    "
          f"{nb} texts in {t_base:7.1f} s = {r_base:7.1f} texts/s")
    for (engine, bs), (_, t) in runs.items():
        print(f"ratio {engine} (batch size {bs or 'auto'}) / baseline: {len(texts) / t / r_base:.1f}x")

    print("\nagreement on the texts both scored (max |ours - baseline| over every batch size, max relative difference):")
    worst = 0.0
    for s in SIGNALS:
        b = torch.tensor([r[s] for r in base], dtype=torch.float64)
        d = torch.stack([(torch.tensor([r["scores"][s] for r in rows[:nb]], dtype=torch.float64) - b).abs()
                         for rows, _ in runs.values() if s in rows[0]["scores"]])
        rel = float((d / b.abs().clamp_min(1e-12)).max())
        worst = max(worst, rel)
        print(f"  {s:16s} {float(d.max()):.2e}  {rel:.2e}")
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    ok = worst <= tol
    print(f"{'OK' if ok else 'MISMATCH'}: largest relative difference {worst:.2e} (tolerance {tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
