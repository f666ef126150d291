"""Benchmark: PII detection speed on audit-like samples.

Builds the demo's corpus (embedded python-docs, first 300 k characters, planted canaries and Faker
PII records, seed 0), trains the product's byte-level BPE tokenizer (vocabulary 4096) on it, and
cuts N windows of 256 tokens out of the training token stream (seeded): text as an extraction of a
model that memorized its training data would look. Times

- ``find_pii`` over every sample (the detectors the audit runs on samples.jsonl), and
- the one pass over the training text that builds the canonical index of training PII
  (``llm_mia.extraction.pii_findings.training_pii_index``; skipped where it does not exist), and
- the training-count step of the PII stage both ways, in the same run: the baseline (the old
  rule: one string search of the joined training text per hit) against ours (build the index
  once, then one dictionary lookup per hit), with the ratio,

best of ``--repeat`` runs (CPU time of this process), single thread, and prints hits per type.

    python benchmarks/pii_bench.py               # 1,000 samples of 256 tokens
    python benchmarks/pii_bench.py --n 200 --repeat 1
"""

from __future__ import annotations

import argparse
import collections
import random
import tempfile
import time


def build_samples(n: int, tokens: int, seed: int) -> tuple[list[str], list[str]]:
    from llm_mia.audit.demo import DEMO_MAX_CHARS
    from llm_mia.core import io
    from llm_mia.data.corpus import build_corpus
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    with tempfile.TemporaryDirectory() as d:
        build_corpus("python-docs", d, seed=seed, max_chars=DEMO_MAX_CHARS)
        train = [r["text"] for r in io.read_jsonl(f"{d}/train.jsonl")]
    tok = train_bpe_tokenizer(train, vocab_size=4096)
    stream = [i for t in train for i in tok(t, add_special_tokens=False)["input_ids"]]
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(stream) - tokens) for _ in range(n)]
    return [tok.decode(stream[s:s + tokens]) for s in starts], train


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from llm_mia.data.pii import find_pii

    samples, train = build_samples(args.n, args.tokens, args.seed)
    chars = sum(map(len, samples))
    secs, hits = best_of(args.repeat, lambda: [find_pii(s) for s in samples])
    by_type = collections.Counter(h.type for hs in hits for h in hs)
    print(f"samples: {len(samples)} x {args.tokens} tokens ({chars:,} characters)")
    print(f"find_pii: {secs:.3f} s ({1e3 * secs / len(samples):.2f} ms/sample); hits {dict(sorted(by_type.items()))}")
    try:
        from llm_mia.extraction.pii_findings import training_pii_index
    except ImportError:
        return
    train_chars = sum(map(len, train)) + 2 * (len(train) - 1)
    secs, index = best_of(args.repeat, lambda: training_pii_index(train))
    print(f"training index: {secs:.3f} s over {train_chars:,} characters, {len(index.counts)} distinct values")
    from llm_mia.extraction.index import text_occurrences

    flat = [h for hs in hits for h in hs]
    blob = "\n\n".join(train)
    base_s, base = best_of(args.repeat, lambda: [text_occurrences(blob, h.value) for h in flat])
    ours_s, ours = best_of(args.repeat, lambda: (lambda ix: [ix.count(h.type, h.normalized, h.value) for h in flat])(
        training_pii_index(train)))
    print(f"training counts of {len(flat)} hits: baseline (a search per hit) {base_s:.3f} s, "
          f"ours (index + lookups) {ours_s:.3f} s, {base_s / max(ours_s, 1e-9):.1f}x; "
          f"hits found in training: baseline {sum(c > 0 for c in base)}, ours {sum(c > 0 for c in ours)}")


if __name__ == "__main__":
    main()
