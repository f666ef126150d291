"""Canary audit, measured: a non-DP and a DP-SGD tiny GPT-2 trained on python-docs with planted
random and new-token canaries; TPR at 1% FPR and the epsilon lower bounds per canary kind.

    python benchmarks/canary_audit_bench.py OUT [--canaries 500] [--steps 400] [--repeats 4]

Writes OUT/table.md (and each model's canary-audit.json). One tokenizer, trained on the members and
the held-out documents, is shared by both models, so tokens that only the held-out split uses are
"new" tokens: in the vocabulary, never in the training data.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from llm_mia.core import io
from llm_mia.data.canaries import make_canaries, plant_canaries
from llm_mia.data.corpus import build_corpus
from llm_mia.membership.metrics import roc_metrics
from llm_mia.models.tokenizer import train_bpe_tokenizer
from llm_mia.privacy.bounds import one_run_bound, threshold_bound
from llm_mia.privacy.canary_audit import audit_canaries
from llm_mia.training.train import train_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--canaries", type=int, default=500, help="per kind")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--max-chars", type=int, default=60_000)
    ap.add_argument("--epsilon", type=float, default=8.0)
    a = ap.parse_args()
    d = a.out
    t0 = time.time()
    build_corpus("python-docs", d / "corpus", seed=0, max_chars=a.max_chars, repeats=(1,), heldout_fraction=0.5)
    train = [r["text"] for r in io.read_jsonl(d / "corpus" / "train.jsonl")]
    held = [r["text"] for r in io.read_jsonl(d / "corpus" / "heldout.jsonl")]
    tok = train_bpe_tokenizer(train + held, vocab_size=512)
    tok.save_pretrained(d / "tok")
    rows = (make_canaries("random", a.canaries, seed=0)
            + make_canaries("new-token", a.canaries, seed=0, tokenizer=tok, train_texts=train))
    io.write_jsonl(d / "canaries.jsonl", rows)
    plant_canaries(d / "corpus" / "train.jsonl", d / "canaries.jsonl", d / "plant", repeats=a.repeats, seed=0)
    (d / "planted").mkdir(exist_ok=True)
    shutil.copy(d / "plant" / "train.jsonl", d / "planted" / "train.jsonl")
    for f in ("heldout.jsonl", "secrets.json"):
        shutil.copy(d / "corpus" / f, d / "planted" / f)
    lines = [f"{a.canaries} random + {a.canaries} new-token canaries, each planted {a.repeats}x with probability 1/2 "
             f"into {len(train)} python-docs documents ({a.max_chars} chars); tiny preset, {a.steps} steps; "
             "signal LOSS (no reference); bounds at delta 1e-5, 95% confidence.", "",
             "| model | trained eps | canaries | TPR@1%FPR | AUC | one-run eps | Gaussian-DP eps | Clopper-Pearson eps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, kw in (("no-dp", {}), (f"dp-eps{a.epsilon:g}", {"defense": "dp", "epsilon": a.epsilon, "delta": 1e-5})):
        t = time.time()
        train_model(d / "planted", d / name, preset="tiny", max_steps=a.steps, tokenizer_from=str(d / "tok"),
                    progress=False, **kw)
        res = audit_canaries(str(d / name), d / "canaries.jsonl", d / "plant" / "inclusion.json", d / name, delta=1e-5)
        print(f"{name}: trained and audited in {time.time() - t:.0f} s", flush=True)
        for kind in ("all", "random", "new-token"):
            cs = [c for c in res["canaries"] if kind == "all" or c["kind"] == kind]
            s, y = [c["score"] for c in cs], [c["included"] for c in cs]
            roc = roc_metrics([int(v) for v in y], s)
            b1 = one_run_bound(s, y, delta=1e-5)["epsilon"]
            b2 = threshold_bound(s, y, kind="gaussian_dp", delta=1e-5)["epsilon"]
            b3 = threshold_bound(s, y, kind="clopper_pearson", delta=1e-5)["epsilon"]
            lines.append(f"| {name} | {kw.get('epsilon', '-')} | {kind} ({len(cs)}) | "
                         f"{roc['tpr_at_fpr']['0.01']['tpr']:.3f} | {roc['auc']:.3f} | {b1:.3f} | {b2:.3f} | {b3:.3f} |")
    lines += ["", f"Total wall time {time.time() - t0:.0f} s."]
    io.write_text(d / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
