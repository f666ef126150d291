"""Benchmark: ``llm-mia score`` as one process against two data-parallel processes (``accelerate launch``).

Both are run as a user runs them, each a fresh command timed by wall clock (start-up, model loading,
scoring and writing), one thread per process (``OMP_NUM_THREADS=1``):

- ``1 process``: ``python -m llm_mia.cli score ...``;
- ``2 processes``: ``accelerate launch --multi_gpu --num_processes 2 -m llm_mia.cli score ...`` (on a
  machine without a GPU the processes talk over gloo; accelerate 1.x's ``--cpu`` starts one process
  only). The texts are split by :func:`llm_mia.core.parallel.shard`, process 0 writes.

The two alternate within each round (the order swaps from round to round) so a change in the
machine's load hits both alike; the load average is printed before each run. The rows of every run
are compared with the first one-process run (same ids in the same order, scores within the printed
relative difference), and the output's ``num_processes`` (metrics JSON) is checked.

Model: the ``threads_bench.py`` set-up: a GPT-2 of the ``small`` preset's shape (4 layers, width
256, vocabulary 4096, 128 positions), random weights, with a reference model, scoring texts of
64-120 tokens of python-docs words.

    python benchmarks/scaleout.py                      # 300 texts, 2 rounds
    python benchmarks/scaleout.py --texts 600 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from threads_bench import _env, _launch, compare, cores, load_output, prepare  # noqa: E402

SETTINGS = ("1 process", "2 processes")


def run_once(setting: str, d: Path, out: Path, port: int) -> tuple[float, int]:
    """Wall seconds of one ``score`` run and the ``num_processes`` its metrics JSON records."""
    out.mkdir()
    cmd = ["score", "--model", str(d / "model"), "--reference", str(d / "ref"), "--input", str(d / "texts.jsonl"),
           "--output", str(out / "all.jsonl"), "--metrics", str(out / "metrics.json")]
    head = _launch(port) if setting == "2 processes" else [sys.executable, "-m", "llm_mia.cli.root"]
    t0 = time.perf_counter()
    p = subprocess.run(head + cmd, env=_env("1 thread"), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{setting} failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return dt, json.loads((out / "metrics.json").read_text())["num_processes"]


def labelled(d: Path) -> None:
    """Give every scoring text a 0/1 label (alternating), so ``--metrics`` (which records num_processes) runs."""
    rows = [json.loads(x) for x in (d / "texts.jsonl").read_text().splitlines()]
    (d / "texts.jsonl").write_text("".join(json.dumps({**r, "label": k % 2}) + "\n" for k, r in enumerate(rows)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=300, help="texts scored (default 300)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    la = os.getloadavg()
    print(f"{cores()} cores; load average at start {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}", flush=True)
    times: dict[str, list[float]] = {s: [] for s in SETTINGS}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        prepare(d, args.texts, args.seed)
        labelled(d)
        first = None
        for r in range(args.rounds):
            for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
                load = os.getloadavg()[0]
                dt, procs = run_once(s, d, d / f"{r}-{SETTINGS.index(s)}", 29500 + 10 * r)
                times[s].append(dt)
                res = load_output("score", d / f"{r}-{SETTINGS.index(s)}")
                first = first or res
                nd, worst = compare(first, res)
                ok &= nd == 0 and worst < 1e-4 and procs == SETTINGS.index(s) + 1
                print(f"round {r} {s:11s}: {dt:6.1f} s (load {load:.2f}); num_processes {procs}; vs first run: "
                      f"{nd} rows differ, max rel. score diff {worst:.1e}", flush=True)
    one, two = (times[s] for s in SETTINGS)
    print(f"{args.texts} texts; 1 process: " + ", ".join(f"{x:.1f}" for x in one) + " s; 2 processes: "
          + ", ".join(f"{x:.1f}" for x in two) + " s")
    print(f"ratio 2 processes / 1 process: best {min(two) / min(one):.2f}, median "
          f"{statistics.median(two) / statistics.median(one):.2f} (goal <= 0.85); rows match: {'yes' if ok else 'NO'}")
    la = os.getloadavg()
    print(f"load average at end {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
