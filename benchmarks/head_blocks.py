"""The output head's block sizes: the fused head (``llm_mia.models.stats.head_stats``) against ``torch.mm``.

For a head of width d and vocabulary V (random weights), M predictions are run through the fused
head (GEMM + log p(target), Min-K%++ moments and top-1, per block of ``rows`` x ``vocab_block``)
for each block size of the grid, and through the old path (the head on 128 rows at a time, then
``vocab_stats`` over the (128, V) logits), each as a percentage of the best ``torch.mm`` of the same
(M, d) x (d, V) shape measured in the same run. How ``HEAD_BLOCK_ROWS`` and ``HEAD_VOCAB_BLOCK``
were chosen (docs/benchmarks.md). fp32, one thread unless ``--threads``; every time is CPU time of
this process (the best of ``--reps``), so jobs sharing the cores dilute none of the figures.

    python benchmarks/head_blocks.py                    # GPT-2 124M's head (768 x 50,257) and a 1B Llama's (2,048 x 32,000)
    python benchmarks/head_blocks.py --shapes 768x50257 --rows 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # this checkout's llm_mia


def best_of(fn, reps: int) -> float:
    """Best CPU seconds of this process over ``reps`` calls (other jobs on shared cores do not inflate it)."""
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def main(argv=None) -> None:
    from llm_mia.models.stats import head_stats, vocab_stats

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="768x50257,2048x32000", help="comma-separated WIDTHxVOCAB")
    ap.add_argument("--rows", type=int, default=1024, help="predictions M")
    ap.add_argument("--block-rows", default="128,256,512,1024")
    ap.add_argument("--vocab-blocks", default="1024,2048,4096,8192")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    for shape in a.shapes.split(","):
        d, V = (int(x) for x in shape.split("x"))
        w, h = torch.randn(V, d, generator=g) * 0.02, torch.randn(a.rows, d, generator=g)
        tg = torch.randint(0, V, (a.rows,), generator=g)
        flops = 2.0 * a.rows * d * V
        torch.mm(h, w.T)
        peak = flops / best_of(lambda: torch.mm(h, w.T), a.reps + 1)  # noqa: B023  (called at once)

        def old():
            for c in range(0, a.rows, 128):
                vocab_stats(torch.nn.functional.linear(h[c:c + 128], w), tg[c:c + 128])  # noqa: B023

        t_old = best_of(old, a.reps)
        print(f"head {d} x {V}, M = {a.rows}: torch.mm {peak / 1e9:.1f} GFLOP/s; old path (128 rows, full-vocab "
              f"vocab_stats) {flops / t_old / 1e9:.1f} GFLOP/s = {100 * flops / t_old / peak:.1f}%")
        print("  fused, % of torch.mm: rows \\ vocab block " + " ".join(f"{v:>7}" for v in a.vocab_blocks.split(",")))
        for r in (int(x) for x in a.block_rows.split(",")):
            cells = []
            for vb in (int(x) for x in a.vocab_blocks.split(",")):
                def fused(r=r, vb=vb):
                    for c in range(0, a.rows, r):
                        head_stats(h[c:c + r], w, None, tg[c:c + r], vocab_block=vb)  # noqa: B023

                cells.append(f"{100 * flops / best_of(fused, a.reps) / peak:6.1f}%")
            print(f"  {r:>38} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
