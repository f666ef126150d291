"""Roofline: llm_mia's scoring and extraction throughput as a percentage of this machine's GEMM peak.

The peak is the best ``torch.mm`` of the run (fp32, the body's shapes: rows x 768 x 3072 and the head's
rows x 768 x 50257), measured in the same process just before the workloads. Useful FLOPs per token
of one forward pass: 2 x (parameters without the position embeddings; the tied output head counted
once) + attention 4 x layers x width x (position + 1) (QK^T and AV, causal half). Nothing else counts
(sampling, softmax, vocabulary moments, tokenization, I/O are overheads).

- scoring: ``llm_mia.membership.scoring.score`` over N texts with the signals loss, zlib, lowercase,
  Min-K% and window; useful work = one pass over each text and one over its lowercase form.
- baseline: the public one-text-at-a-time loop (HF model called on each text alone, then on its
  lowercase form), the same useful work.
- extraction: ``llm_mia.extraction.extract.extract`` (top-k, no reference, no training corpus);
  useful work = one forward per generated token (KV cache) and one lowercase pass per sample (the
  ranking needs it wherever lowercasing changes the ids: with random weights, nearly every sample);
  a second target pass over the samples is not useful work.

Model: GPT-2 124M shape (12 x 768, 50,257-token vocabulary, random weights); ``--small``: 2 x 128 and
a 4,096-token vocabulary, for a quick run. fp32, one thread unless ``--threads``.

    python benchmarks/roofline.py --small
    python benchmarks/roofline.py --texts 64 --samples 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # this checkout's llm_mia


def gemm_peak(width: int, vocab: int, rows: int = 512, reps: int = 5) -> float:
    """Best FLOP/s of ``torch.mm`` over the body's and the head's shapes (fp32)."""
    best = 0.0
    for k, n in ((width, 4 * width), (width, vocab)):
        a, b = torch.randn(rows, k), torch.randn(k, n)
        torch.mm(a, b)
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * rows * k * n / (time.perf_counter() - t))
    return best


def pass_flops(n_params: int, layers: int, width: int, length: int) -> float:
    """Useful FLOPs of one forward pass over ``length`` tokens (see the module docstring)."""
    return 2.0 * n_params * length + sum(4.0 * layers * width * (p + 1) for p in range(length))


def build(small: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_mia.models.hf import from_objects
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    text = ("The quick brown Fox jumps over the lazy dog. Python is a programming Language; Hello World. "
            "Alice met Bob in Paris on Monday, 3 May 2021, and they talked about machine learning. ") * 40
    vocab = 4096 if small else 50257
    tok = train_bpe_tokenizer([text] * 20, vocab_size=min(vocab, 2048), min_frequency=1)
    torch.manual_seed(0)
    layers, width = (2, 128) if small else (12, 768)
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=max(2, width // 64), n_positions=1024, vocab_size=vocab,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(cfg).eval()
    n_params = sum(p.numel() for n, p in model.named_parameters() if "wpe" not in n)
    return from_objects(model, tok), text, n_params, layers, width, vocab


def best_of(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per scored text (about)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from llm_mia.extraction.extract import ExtractConfig, extract
    from llm_mia.membership.scoring import score

    lm, text, n_params, layers, width, vocab = build(a.small)
    words = text.split()
    texts = [" ".join(words[i:i + a.tokens // 2]) for i in range(0, a.texts * 7, 7)][:a.texts]
    ids = [lm.encode([t])[0][0] for t in texts]
    lids = [lm.encode([t.lower()])[0][0] for t in texts]
    useful = sum(pass_flops(n_params, layers, width, len(x)) for x in ids + lids)
    sigs = ["loss", "zlib", "lowercase", "min_k", "window"]

    def loop():
        with torch.inference_mode():
            for x, y in zip(ids, lids):
                for seq in (x, y):
                    t = torch.tensor([seq])
                    lp = torch.log_softmax(lm.model(input_ids=t).logits[0, :-1].float(), -1)
                    lp.gather(1, t[0, 1:, None])

    peak = gemm_peak(width, vocab)
    t_score = best_of(lambda: score(lm, texts, signals=sigs, warn=False), a.reps)
    t_loop = best_of(loop, a.reps)
    holder = {}

    def run_extract():
        lm._gen_cache.clear()
        with tempfile.TemporaryDirectory() as d:
            extract(lm, d, cfg=ExtractConfig(num_samples=a.samples, max_new_tokens=a.new_tokens, batch_size=a.samples,
                                             seed=1, progress=False))
            from llm_mia.extraction.extract import read_clear
            holder["rows"] = read_clear(d, "samples.jsonl")

    lm.gen_reused = 0
    t_ext = best_of(run_extract, a.reps)
    gen_flops = a.samples * (pass_flops(n_params, layers, width, a.new_tokens + 1))
    low = [lm.encode([r["text"].lower()], prepend_bos=True)[0][0] for r in holder["rows"]]
    ext_useful = gen_flops + sum(pass_flops(n_params, layers, width, len(x)) for x in low)
    shape = "2 x 128, vocab 4,096" if a.small else "12 x 768, vocab 50,257 (GPT-2 124M)"
    print(f"model {shape}; {torch.get_num_threads()} thread(s); GEMM peak {peak / 1e9:.1f} GFLOP/s")
    print(f"scoring   {a.texts} texts: {t_score:.2f} s = {useful / t_score / 1e9:.1f} GFLOP/s = "
          f"{100 * useful / t_score / peak:.1f}% of peak")
    print(f"baseline  one text at a time: {t_loop:.2f} s = {100 * useful / t_loop / peak:.1f}% of peak "
          f"(ours {t_loop / t_score:.2f}x)")
    print(f"extraction {a.samples} x {a.new_tokens}: {t_ext:.2f} s = {100 * ext_useful / t_ext / peak:.1f}% of peak")


if __name__ == "__main__":
    main()
