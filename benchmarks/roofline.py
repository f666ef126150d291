"""Roofline: llm_mia's scoring and extraction throughput as a percentage of this machine's GEMM peak.

The peak is the best ``torch.mm`` of the run (fp32, the body's shapes: rows x 768 x 3072 and the head's
rows x 768 x 50257), measured in the same process just before the workloads. Useful FLOPs per token
of one forward pass: 2 x (parameters without the position embeddings; the tied output head counted
once) + attention 4 x layers x width x (position + 1) (QK^T and AV, causal half). Nothing else counts
(sampling, softmax, vocabulary moments, tokenization, I/O are overheads).

- scoring: ``llm_mia.membership.scoring.score`` over N texts with a reference model and every signal
  those inputs allow (loss, zlib, lowercase, reference, reference_diff, Min-K%, Min-K%++, window,
  EZ-MIA, WBC); useful work = one target pass over each text, one over its lowercase form and one
  reference pass over the text.
- scoring baseline: a lean one-text-at-a-time loop (HF model called on each text alone, then on its
  lowercase form, then the reference on the text; log-softmax and gather only), the same useful
  work. (The public tools' loop runs one pass per statistic, 7-8 per text: ``score_bench.py``.)
- extraction: ``llm_mia.extraction.extract.extract`` (top-k, with the reference, no training corpus;
  ``--batch`` samples a step, default the CLI's 64 or ``--samples`` if fewer);
  useful work = one forward per generated token (KV cache), one lowercase pass per sample (the
  ranking needs it wherever lowercasing changes the ids: with random weights, nearly every sample)
  and one reference pass per sample; a second target pass over the samples is not useful work.
- extraction baseline: the public extraction loop (as in ``extract_bench.py``: HF ``generate`` in
  batches of 10, then each sample scored alone by the target, the target on its lowercase form and
  the reference), the same useful work plus the target pass it repeats.

Model: GPT-2 124M shape (12 x 768, 50,257-token vocabulary, random weights), reference 6 x 768 of
the same vocabulary (``--no-reference``: none); ``--small``: 2 x 128 (reference 1 x 128) and a
4,096-token vocabulary, for a quick run. fp32, one thread unless ``--threads``; glibc's malloc keeps
freed memory as the CLI sets it (``llm_mia.core.allocator``) unless ``--default-malloc``. ``--profile`` adds
a cProfile breakdown of one scoring and one extraction run (the functions with most own time).
``--cpu-time`` times everything (the GEMM peak included) in CPU seconds of this process and its
children instead of wall seconds: on cores shared with other jobs, the FLOPs per CPU-second this
process was given, which time-sharing does not dilute (cache and memory-bandwidth contention still
count).

    python benchmarks/roofline.py --small
    python benchmarks/roofline.py --texts 64 --samples 32
    python benchmarks/roofline.py --samples 128 --batch 128 --loop-reps 1
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # this checkout's llm_mia


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the ``llm-mia score`` subprocess)."""
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


#: the clock of every measurement: wall time, or with ``--cpu-time`` the CPU time of this process
#: (and its children), which other jobs sharing the cores do not inflate
CLOCK = [time.perf_counter]
#: the best GEMM FLOP/s measured so far in the run
PEAKS: list[float] = [0.0]


def gemm_peak(width: int, vocab: int, rows: int = 512, reps: int = 5) -> float:
    """Best FLOP/s of ``torch.mm`` over the body's and the head's shapes (fp32), also kept in ``PEAKS``."""
    best = 0.0
    for k, n in ((width, 4 * width), (width, vocab)):
        a, b = torch.randn(rows, k), torch.randn(k, n)
        torch.mm(a, b)
        for _ in range(reps):
            t = CLOCK[0]()
            torch.mm(a, b)
            best = max(best, 2 * rows * k * n / (CLOCK[0]() - t))
    PEAKS[0] = max(PEAKS[0], best)
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

    def gpt2(n_layer):
        cfg = GPT2Config(n_layer=n_layer, n_embd=width, n_head=max(2, width // 64), n_positions=1024,
                         vocab_size=vocab, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        model = GPT2LMHeadModel(cfg).eval()
        return model, sum(p.numel() for n, p in model.named_parameters() if "wpe" not in n)

    model, n_params = gpt2(layers)
    ref, ref_params = gpt2(max(1, layers // 2))
    # fused GELU as the CLI's load_model does (the baselines run on the same modules)
    return (from_objects(model, tok, fused_activations=True), text, (n_params, layers, width, vocab),
            (from_objects(ref, tok, fused_activations=True), (ref_params, max(1, layers // 2), width, vocab)))


#: (width, vocab) of the run's GEMM shapes, for the peak measured around each repetition
SHAPE: list[int] = []
#: smallest seconds x (GEMM peak measured just before and after, the larger) of the last best_of call
PAIRED: list[float] = []


def best_of(fn, reps: int) -> float:
    """Best seconds of ``reps`` calls of ``fn``; with ``SHAPE`` set, also records in ``PAIRED`` the best
    seconds x local peak (the GEMM peak measured just before and just after that call, the larger):
    on a machine shared with other jobs, useful FLOPs / PAIRED is the fraction of the peak the
    machine offered at that moment."""
    best, paired = float("inf"), float("inf")
    for _ in range(reps):
        p0 = gemm_peak(*SHAPE, reps=2) if SHAPE else 0.0
        t = CLOCK[0]()
        fn()
        dt = CLOCK[0]() - t
        best = min(best, dt)
        if SHAPE:
            paired = min(paired, dt * max(p0, gemm_peak(*SHAPE, reps=2)))
    PAIRED[:] = [paired]
    return best


def top_own_time(fn, n: int = 12) -> list[str]:
    """cProfile of one call of ``fn``: the ``n`` functions with the most own time, as lines."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [f"    {100 * v[2] / total:5.1f}%  {v[2]:6.2f} s  {Path(k[0]).name}:{k[1]} {k[2]}" for k, v in rows]


def scoring_runs(lm, ref, texts, shapes, reps):
    """(seconds of score(), seconds of the lean loop, useful FLOPs, the score call) on ``texts``."""
    from llm_mia.membership.scoring import score

    ids = [lm.encode([t])[0][0] for t in texts]
    lids = [lm.encode([t.lower()])[0][0] for t in texts]
    tgt, rsh = shapes
    useful = sum(pass_flops(*tgt[:3], len(x)) for x in ids + lids)
    if ref is not None:
        useful += sum(pass_flops(*rsh[:3], len(x)) for x in ids)

    def loop():
        with torch.inference_mode():
            for x, y in zip(ids, lids):
                for m, seq in ((lm.model, x), (lm.model, y)) + (((ref.model, x),) if ref is not None else ()):
                    t = torch.tensor([seq])
                    lp = torch.log_softmax(m(input_ids=t).logits[0, :-1].float(), -1)
                    lp.gather(1, t[0, 1:, None])

    def ours():
        score(lm, texts, reference=ref, warn=False)

    t_ours = best_of(ours, reps)
    paired = PAIRED[0]
    t_loop = best_of(loop, reps)
    return (t_ours, paired), (t_loop, PAIRED[0]), useful, ours


def process_run(lm, ref, texts, reps: int) -> tuple[float, float]:
    """Best wall time (and ``PAIRED``) of the whole ``llm-mia score`` process (start-up, loading, scoring, writing) on
    ``texts`` with the models saved to a temporary folder, as a user runs it."""
    import subprocess

    with tempfile.TemporaryDirectory() as d:
        for name, m in (("target", lm), ("reference", ref)):
            if m is not None:
                m.model.save_pretrained(f"{d}/{name}")
                m.tokenizer.save_pretrained(f"{d}/{name}")
        Path(d, "in.txt").write_text("\n".join(texts) + "\n")
        cmd = [sys.executable, "-c", "from llm_mia.cli.root import main; main()", "score", "--model", f"{d}/target",
               "--input", f"{d}/in.txt", "--output", f"{d}/out.jsonl"] + (["--reference", f"{d}/reference"] if ref
                                                                         else [])
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
        return best_of(lambda: subprocess.run(cmd, env=env, check=True, capture_output=True), reps), PAIRED[0]


@torch.inference_mode()
def public_extraction_loop(lm, ref, n: int, length: int, seed: int) -> None:
    """The public extraction code's loop (LM_Memorization's ``extraction.py``, as in ``extract_bench.py``):
    HF ``generate`` in batches of 10 (top-k 40), decode, then each sample scored alone by the target,
    the target on its lowercase form and the reference (BOS prepended, so no input is empty)."""
    torch.manual_seed(seed)
    bos = lm.bos_id
    samples = []
    for b0 in range(0, n, 10):
        k = min(10, n - b0)
        out = lm.model.generate(input_ids=torch.full((k, 1), bos), attention_mask=torch.ones(k, 1, dtype=torch.long),
                                do_sample=True, top_k=40, top_p=1.0, max_new_tokens=length, min_new_tokens=length,
                                pad_token_id=bos)
        samples.extend(lm.decode(x[1:]) for x in out.tolist())
    for text in samples:
        for m, t in ((lm, text), (lm, text.lower())) + (((ref, text),) if ref is not None else ()):
            ids = torch.tensor([m.encode([t], prepend_bos=True)[0][0]])
            out = m.model(input_ids=ids, labels=ids)
            torch.log_softmax(out.logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])


def extraction_batch(a) -> int:
    """Samples generated per step: ``--batch``, else the CLI's default batch size (64), at most ``--samples``."""
    from llm_mia.extraction.extract import ExtractConfig

    return a.batch or min(a.samples, ExtractConfig().batch_size)


def extraction_runs(lm, ref, shapes, a):
    """(seconds of extract(), seconds of the public loop, useful FLOPs, the extract call)."""
    from llm_mia.extraction.extract import ExtractConfig, extract, read_clear

    holder = {}

    def ours():
        lm._gen_cache.clear()
        with tempfile.TemporaryDirectory() as d:
            extract(lm, d, reference=ref, cfg=ExtractConfig(num_samples=a.samples, max_new_tokens=a.new_tokens,
                                                            batch_size=extraction_batch(a), seed=1, progress=False))
            holder["rows"] = read_clear(d, "samples.jsonl")

    t_ext = (best_of(ours, a.reps), PAIRED[0])
    t_loop = (best_of(lambda: public_extraction_loop(lm, ref, a.samples, a.new_tokens, 1), a.loop_reps), PAIRED[0]) \
        if a.loop_reps else (float("nan"), float("nan"))
    tgt, rsh = shapes
    useful = a.samples * pass_flops(*tgt[:3], a.new_tokens + 1)
    for r in holder["rows"]:
        x = lm.encode([r["text"]], prepend_bos=True)[0][0]
        low = lm.encode([r["text"].lower()], prepend_bos=True)[0][0]
        useful += pass_flops(*tgt[:3], len(low)) if low != x else 0
        useful += pass_flops(*rsh[:3], len(x)) if ref is not None else 0
    return t_ext, t_loop, useful, ours


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128, help="tokens per scored text (about)")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None,
                    help="samples generated per step (default: the CLI's --batch-size default, 64, at most --samples)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loop-reps", type=int, default=1, help="runs of the extraction baseline (0: skip it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="measure CPU seconds of this process, not wall time (on a machine shared with other jobs)")
    ap.add_argument("--process", action="store_true", help="also time the whole `llm-mia score` process")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc at its defaults (the CLI keeps freed memory: llm_mia.core.allocator)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not a.default_malloc:
        from llm_mia.core.allocator import keep_freed_memory

        keep_freed_memory()  # as the llm-mia entry point does
    if a.cpu_time:
        CLOCK[0] = _cpu_seconds
    lm, text, tgt, (ref, rsh) = build(a.small)
    ref = None if a.no_reference else ref
    words = text.split()
    texts = [" ".join(words[i:i + a.tokens // 2]) for i in range(0, a.texts * 7, 7)][:a.texts]
    peak = gemm_peak(tgt[2], tgt[3])
    SHAPE[:] = [tgt[2], tgt[3]]
    t_score, t_sloop, useful, score_once = scoring_runs(lm, ref, texts, (tgt, rsh), a.reps)
    peak = max(peak, gemm_peak(tgt[2], tgt[3]), PEAKS[0])
    t_ext, t_eloop, ext_useful, extract_once = extraction_runs(lm, ref, (tgt, rsh), a)
    peak = max(peak, gemm_peak(tgt[2], tgt[3]), PEAKS[0])
    t_proc = process_run(lm, ref, texts, a.reps) if a.process else None
    peak = max(peak, PEAKS[0])
    shape = "2 x 128, vocab 4,096" if a.small else "12 x 768, vocab 50,257 (GPT-2 124M)"
    refs = "no reference" if ref is None else f"reference {rsh[1]} x {rsh[2]}"
    print(f"model {shape}, {refs}; {torch.get_num_threads()} thread(s); GEMM peak {peak / 1e9:.1f} GFLOP/s "
          f"(the best of every measurement in the run); load average {os.getloadavg()[0]:.1f}; "
          f"{'CPU' if a.cpu_time else 'wall'} time")
    def pct(flops, tp):
        return (f"{tp[0]:.2f} s = {flops / tp[0] / 1e9:.1f} GFLOP/s = {100 * flops / tp[0] / peak:.1f}% of the run's "
                f"peak, {100 * flops / tp[1]:.1f}% of the peak around it")

    print(f"scoring    {a.texts} texts: {pct(useful, t_score)}")
    print(f"  loop     one text at a time: {pct(useful, t_sloop)} (ours {t_sloop[0] / t_score[0]:.2f}x)")
    if a.process:
        print(f"  process  `llm-mia score` start to end: {pct(useful, t_proc)}")
    print(f"extraction {a.samples} x {a.new_tokens}, {extraction_batch(a)} a step: {pct(ext_useful, t_ext)}")
    if a.loop_reps:
        print(f"  loop     generate by 10, each sample scored alone: {pct(ext_useful, t_eloop)} "
              f"(ours {t_eloop[0] / t_ext[0]:.2f}x)")
    if a.profile:
        for name, fn in (("scoring", score_once), ("extraction", extract_once)):
            print(f"profile of one {name} run (own time):")
            print("\n".join(top_own_time(fn)))


if __name__ == "__main__":
    main()
