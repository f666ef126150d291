"""Benchmark: llm_mia's whole extraction vs the public reference loop (Carlini et al. 2021 code style).

Both sides do the same work on the same model, reference model, seed and training corpus:
sample N top-k (k = 40) samples of L new tokens from the start token, score every sample with the
paper's rankings (perplexity, zlib, lowercase, reference, window), dedup, and verify every sample
against the training corpus (longest verbatim match).

- ours: ``llm_mia.extraction.extract.extract`` with each engine (``--engine``: ``hf`` = the transformers
  engine of ``llm_mia.models.loading``; ``vllm`` = ``llm_mia.models.vllm_engine``, skipped with a
  note where vLLM is not importable), on the models saved to a folder and loaded as the CLI loads
  them -- batched generation (``--batch-size`` rows, one seeded
  generator per sample), the generated ids scored directly in length-sorted batches (one pass per
  model and view), dedup and suffix-array verification.
- baseline: the loop of the public extraction code (LM_Memorization's ``extraction.py``) -- HF ``generate`` in batches of 10 (global
  seed), decode, then each sample scored alone: one forward pass of the target on the text, one of
  the target on the lowercase text, one of the reference (window read from the target pass's token
  losses, zlib from the text). Dedup and verification then use llm_mia's own functions (the public
  code has neither), so the comparison measures sampling and scoring, and the totals include the
  same dedup and verification cost on both sides.

Model: a GPT-2 of the ``small`` preset's shape (4 layers, width 256, BPE vocabulary 4096) with 128
positions; random weights (speed does not depend on them), the reference a second random draw. The
training corpus for verification is the demo's (300 k characters of python-docs).

    python benchmarks/extract_bench.py                                  # N = 64, 256, 1024; baseline at 64, 256
    /work/vllm-venv/bin/python benchmarks/extract_bench.py --engine hf,vllm   # with the vLLM engine
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # this checkout's llm_mia

LENGTH = 64


def build(seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_mia.data.corpus import load_source
    from llm_mia.models.tokenizer import train_bpe_tokenizer
    from llm_mia.training.train import PRESETS

    p = PRESETS["small"]
    docs = load_source("python-docs", max_chars=300_000)
    tok = train_bpe_tokenizer(docs, vocab_size=p.vocab_size)

    def model(s):
        torch.manual_seed(s)
        cfg = GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=128, vocab_size=len(tok),
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(cfg).eval()

    return model(seed), model(seed + 1), tok, docs


# ----------------------------------------------------------------------------------------- baseline

@torch.inference_mode()
def _ppl(model, tok, text: str):
    ids = torch.tensor([tok(text)["input_ids"]])
    out = model(input_ids=ids, labels=ids)
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(torch.exp(out.loss)), -logp


def baseline(model, ref, tok, train: list[str], n: int, length: int, seed: int) -> tuple[list[dict], dict]:
    from llm_mia.data.dedup import dedup
    from llm_mia.extraction.index import CorpusIndex

    t = {}
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    bos = tok.eos_token_id
    samples = []
    with torch.inference_mode():
        for b0 in range(0, n, 10):
            k = min(10, n - b0)
            out = model.generate(input_ids=torch.full((k, 1), bos), attention_mask=torch.ones(k, 1, dtype=torch.long),
                                 do_sample=True, top_k=40, top_p=1.0, max_new_tokens=length, min_new_tokens=length,
                                 pad_token_id=bos)
            samples.extend(tok.decode(x[1:]) for x in out.tolist())
    t["sample_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = []
    for text in samples:
        p, nll = _ppl(model, tok, text)
        p_low, _ = _ppl(model, tok, text.lower())
        p_ref, _ = _ppl(ref, tok, text)
        w = min(50, len(nll))
        win = max(float(nll[s:s + w].mean()) for s in range(len(nll) - w + 1)) if len(nll) else float("nan")
        rows.append({"text": text, "perplexity": p, "lower": p_low, "ref": p_ref, "window": win,
                     "zlib": len(zlib.compress(text.encode("utf-8")))})
    t["score_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    dd = dedup([r["text"] for r in rows])
    index = CorpusIndex.from_texts(train, tok)
    for r in rows:
        r["longest_match"] = index.longest_match(tok(r["text"])["input_ids"]).length
    t["dedup_verify_s"] = time.perf_counter() - t2
    t["total_s"] = time.perf_counter() - t0
    t["unique"] = len(rows) - len(dd.dropped)
    return rows, t


# ----------------------------------------------------------------------------------------- ours

def ours(target, reference, train: list[str], n: int, length: int, seed: int, batch_size: int) -> dict:
    from llm_mia.extraction.extract import ExtractConfig, extract

    with tempfile.TemporaryDirectory() as d:
        cfg = ExtractConfig(num_samples=n, seed=seed, max_new_tokens=length, batch_size=batch_size, progress=False)
        t0 = time.perf_counter()
        s = extract(target, d, reference=reference, train_texts=train, cfg=cfg)
        total = time.perf_counter() - t0
    return {"total_s": total, "unique": s["unique_samples"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="64,256,1024", help="comma-separated sample counts for ours (default 64,256,1024)")
    ap.add_argument("--baseline-n", default="64,256", help="comma-separated sample counts for the baseline (default 64,256)")
    ap.add_argument("--engine", default="hf,vllm", help="engines of ours, comma-separated (default hf,vllm; "
                    "vllm is skipped with a note where it is not importable)")
    ap.add_argument("--length", type=int, default=LENGTH, help=f"new tokens per sample (default {LENGTH})")
    ap.add_argument("--batch-size", type=int, default=64, help="our generation batch size (default 64)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, the CLI's default)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best of them is reported (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import os

    from engines import engine_notes, load_engine
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # vLLM's CPU worker: this many threads, unpinned
    model, ref, tok, docs = build(args.seed)
    ns = [int(x) for x in args.n.split(",") if x.strip()]
    nbs = [int(x) for x in args.baseline_n.split(",") if x.strip()]
    notes = engine_notes([e.strip() for e in args.engine.split(",") if e.strip()])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"model: GPT-2 {model.config.n_layer} layers, width {model.config.n_embd}, vocab {model.config.vocab_size}, "
          f"{n_params / 1e6:.2f} M parameters; {args.length} new tokens per sample; training corpus {len(docs)} documents")
    best: dict[tuple[str, int], float] = {}  # (method, N) -> best samples/s over the rounds
    with tempfile.TemporaryDirectory() as d:
        for name, m in (("model", model), ("ref", ref)):
            m.save_pretrained(f"{d}/{name}")
            tok.save_pretrained(f"{d}/{name}")
        loaded = {}
        for engine, note in notes.items():
            if note:
                print(f"{engine}: {note}")
                continue
            loaded[engine] = load_engine(engine, f"{d}/model"), load_engine(engine, f"{d}/ref")
            ours(*loaded[engine], docs, 8, args.length, args.seed, args.batch_size)  # warm-up
        methods = ["baseline", *loaded]
        for r in range(args.rounds):  # alternating, the order rotating, so a change of load hits every method
            for n in sorted(set(ns) | set(nbs)):
                order = methods[r % len(methods):] + methods[:r % len(methods)]
                for m in order:
                    if n not in (nbs if m == "baseline" else ns):
                        continue
                    load = os.getloadavg()[0]
                    if m == "baseline":
                        _, t = baseline(model, ref, tok, docs, n, args.length, args.seed)
                        extra = (f"sampling {t['sample_s']:.1f} s, scoring {t['score_s']:.1f} s, dedup + "
                                 f"verification {t['dedup_verify_s']:.1f} s")
                    else:
                        t = ours(*loaded[m], docs, n, args.length, args.seed, args.batch_size)
                        extra = ""
                    rate = n / t["total_s"]
                    best[m, n] = max(best.get((m, n), 0.0), rate)
                    print(f"round {r} {m:8s} N={n:5d}: {t['total_s']:7.1f} s = {rate:6.1f} samples/s ({t['unique']} "
                          f"unique; load {load:.2f}{'; ' + extra if extra else ''})", flush=True)
    print(f"best of {args.rounds} round(s):")
    for (m, n), rate in sorted(best.items()):
        ratio = f", {rate / best['baseline', n]:.2f}x the baseline" if m != "baseline" and ("baseline", n) in best else ""
        print(f"  {m:8s} N={n:5d}: {rate:6.1f} samples/s = {1e6 / (rate * args.length):5.0f} us per generated "
              f"token for the whole extraction{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
