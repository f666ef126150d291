"""Benchmark: CPU thread settings of ``llm-mia extract`` and ``llm-mia score``, run as a user runs them.

Every run is a fresh ``python -m llm_mia.cli.root`` process (start-up, model loading and all), timed by
wall clock, with one of these settings:

- ``1 thread``: ``OMP_NUM_THREADS=1``;
- ``all cores``: ``OMP_NUM_THREADS=<cores>`` (torch's own default without the policy of
  ``llm_mia/core/threads.py``);
- ``2 proc x 1``: two processes of one thread each: ``accelerate launch --multi_gpu
  --num_processes 2`` for extract (the sample indices split between the processes), and for score
  the input split in two halves scored by two ``llm-mia score`` processes at once;
- ``policy``: no thread variable at all (the CLI's default, :data:`llm_mia.core.threads.DEFAULT_THREADS`).

Settings alternate within each round (the order rotates from round to round) so a change in the
machine's load hits all of them alike; the load average is printed before each run. Same output
check: every setting's samples (token ids) and scores are compared with the first setting's
(scores within 1e-4 relative; the samples must be identical).

Model: a GPT-2 of the ``small`` preset's shape (4 layers, width 256, vocabulary 4096, 128 positions),
random weights, and a reference model (a second draw); the training corpus for verification is
300 k characters of python-docs (as ``extract_bench.py``). Scoring texts: random python-docs word
sequences of 64-128 tokens (as ``score_bench.py``).

    python benchmarks/threads_bench.py                                 # extract 256 x 64 and score 256 texts, 2 rounds
    python benchmarks/threads_bench.py --task extract --rounds 3 --num-samples 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SETTINGS = ("1 thread", "all cores", "2 proc x 1", "policy")


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(d: Path, n_texts: int, seed: int) -> None:
    """Write the model, reference, corpus and scoring texts under ``d``."""
    import score_bench
    from extract_bench import build

    from llm_mia.core import io

    model, ref, tok, docs = build(seed)
    for name, m in (("model", model), ("ref", ref)):
        m.save_pretrained(d / name)
        tok.save_pretrained(d / name)
    (d / "corpus").mkdir()
    io.write_jsonl(d / "corpus" / "train.jsonl", ({"text": t} for t in docs))
    score_bench.MIN_TOK, score_bench.MAX_TOK = 64, 120  # 128 positions
    texts = score_bench.make_texts(tok, docs, n_texts, seed)
    for name, part in (("texts.jsonl", texts), ("texts.a.jsonl", texts[::2]), ("texts.b.jsonl", texts[1::2])):
        io.write_jsonl(d / name, ({"text": t} for t in part))


def _env(setting: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if setting in ("1 thread", "2 proc x 1"):
        env["OMP_NUM_THREADS"] = "1"
    elif setting == "all cores":
        env["OMP_NUM_THREADS"] = str(cores())
    return env


def _launch(port: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", "llm_mia.cli.root"]


def run_once(task: str, setting: str, d: Path, out: Path, args, port: int) -> float:
    cli = [sys.executable, "-m", "llm_mia.cli.root"]
    env = _env(setting)
    t0 = time.perf_counter()
    if task == "extract":
        cmd = ["extract", "--model", str(d / "model"), "--reference", str(d / "ref"), "--corpus", str(d / "corpus"),
               "--num-samples", str(args.num_samples), "--length", str(args.length), "--seed", str(args.seed),
               "--out", str(out)]
        proc = subprocess.run((_launch(port) if setting == "2 proc x 1" else cli) + cmd, env=env,
                              capture_output=True, text=True)
        procs = [proc]
    else:
        def cmd(inp, outp):
            return cli + ["score", "--model", str(d / "model"), "--reference", str(d / "ref"), "--input", str(inp),
                          "--output", str(outp)]
        if setting == "2 proc x 1":
            out.mkdir()
            ps = [subprocess.Popen(cmd(d / f"texts.{h}.jsonl", out / f"{h}.jsonl"), env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for h in "ab"]
            procs = []
            for p in ps:
                o, e = p.communicate()
                procs.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
        else:
            out.mkdir()
            procs = [subprocess.run(cmd(d / "texts.jsonl", out / "all.jsonl"), env=env, capture_output=True, text=True)]
    dt = time.perf_counter() - t0
    for p in procs:
        if p.returncode != 0:
            raise SystemExit(f"{task} / {setting} failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}")
    return dt


def load_output(task: str, out: Path) -> list[tuple[object, dict]]:
    """(identity, scores) per sample / text, in a canonical order."""
    if task == "extract":
        rows = [json.loads(x) for x in (out / "private" / "samples.jsonl").read_text().splitlines()]
        return [((r["strategy"], r["index"], tuple(r["token_ids"])), r["scores"]) for r in rows]
    if (out / "all.jsonl").exists():
        rows = [json.loads(x) for x in (out / "all.jsonl").read_text().splitlines()]
    else:  # the halves, interleaved back into input order
        a, b = ([json.loads(x) for x in (out / f"{h}.jsonl").read_text().splitlines()] for h in "ab")
        rows = [r for pair in zip(a, b) for r in pair] + a[len(b):]
    return [(k, r["scores"]) for k, r in enumerate(rows)]


def compare(a, b) -> tuple[int, float]:
    """(rows whose identity differs, max relative score difference over matching rows)."""
    diff, worst = 0, 0.0
    for (ia, sa), (ib, sb) in zip(a, b):
        if ia != ib:
            diff += 1
            continue
        for k, v in sa.items():
            w = sb.get(k)
            if isinstance(v, float) and isinstance(w, float) and math.isfinite(v) and math.isfinite(w):
                worst = max(worst, abs(v - w) / max(abs(v), abs(w), 1e-12))
    return diff + abs(len(a) - len(b)), worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="extract,score", help="extract, score or both (default both)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from: {', '.join(SETTINGS)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=256, help="extract: samples (default 256)")
    ap.add_argument("--length", type=int, default=64, help="extract: new tokens per sample (default 64)")
    ap.add_argument("--texts", type=int, default=256, help="score: texts (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.task.split(",") if t.strip()]
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if unknown := [s for s in settings if s not in SETTINGS]:
        ap.error(f"unknown settings {unknown}")
    print(f"{cores()} cores; load average at start {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        prepare(d, args.texts, args.seed)
        for task in tasks:
            times: dict[str, list[float]] = {s: [] for s in settings}
            loads: list[float] = []
            first = None
            for r in range(args.rounds):
                order = settings[r % len(settings):] + settings[:r % len(settings)]
                for s in order:
                    out = d / f"{task}-{r}-{settings.index(s)}"
                    load = os.getloadavg()[0]
                    loads.append(load)
                    dt = run_once(task, s, d, out, args, 29500 + 10 * r + settings.index(s))
                    times[s].append(dt)
                    res = load_output(task, out)
                    first = first or res
                    nd, worst = compare(first, res)
                    print(f"{task:7s} round {r} {s:10s}: {dt:6.1f} s (load {load:.2f}); vs first run: {nd} rows "
                          f"differ, max rel. score diff {worst:.1e}", flush=True)
                    if nd:
                        print(f"warning: {nd} {task} rows differ from the first run", flush=True)
            best = min(min(v) for v in times.values())
            print(f"{task}: load average {min(loads):.2f}-{max(loads):.2f} during the runs")
            for s, v in times.items():
                print(f"  {s:10s}: " + ", ".join(f"{x:.1f}" for x in v) + f" s; best {min(v):.1f} s = "
                      f"{min(v) / best:.2f}x the fastest", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
