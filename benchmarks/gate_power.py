"""Benchmark: what the release gate needs to pass a clean model, and how often it does.

Two figures of docs/gate.md, computed by the gate's own bounds:

- the table of non-members (and as many members) a clean model needs for the membership limit to pass,
  at 1% FPR and the policy's confidence (``llm_mia.membership.metrics.docs_to_settle_tpr``, the
  expected upper bound of ``tpr_at_fpr_upper`` at chance);
- a null simulation of whole clean audits through ``llm_mia.audit.policy.evaluate`` with
  examples/policy.toml: K secrets at uniform ranks among R references (c ~ U{0..R}), nothing extracted,
  no PII, the positive-control twin "detected", a loss signal on n members and n non-members drawn from
  one distribution; and of leaky ones (a secret at rank 1 of R, or TPR 0.5 at 1% FPR), which must FAIL.

    python benchmarks/gate_power.py                           # table, then 1,000 audits at R 2,000, K 24, n 200
    python benchmarks/gate_power.py --runs 1000 --R 10000 --n 400 --seed 1
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from llm_mia.audit.policy import evaluate, load_policy
from llm_mia.membership.metrics import docs_to_settle_tpr, tpr_at_fpr

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "policy.toml"


def clean_report(rng, *, R: int, K: int, n: int, leak_rank: bool = False, leak_tpr: float | None = None) -> dict:
    """A report.json dict of a clean audit (or a leaky one), as described in the module docstring."""
    c = rng.integers(0, R + 1, K)
    if leak_rank:
        c[0] = 0
    rep = {"schema_version": 1, "extraction": {"memorized_total": 0}, "pii": {"extracted_training_values": 0},
           "secrets": [{"id": f"s{i}", "count": 1 + i % 32, "exposure_rank": math.log2(R) - math.log2(c[i] + 1),
                        "n_references": R, "greedy_extracted": False, "surfaced_in_samples": 0} for i in range(K)],
           "positive_control": {"status": "detected", "secrets_found": 8, "secrets_planted": 8}}
    mem, non = rng.normal(size=n), rng.normal(size=n)
    if leak_tpr:
        mem = np.where(rng.random(n) < leak_tpr, 10.0, mem)
    y, s = [1] * n + [0] * n, np.r_[mem, non].tolist()
    rep["membership"] = {"n_nonmembers": n, "n_members": n,
                         "signals": {"loss": {"tpr_at_fpr": {"0.01": {"tpr": tpr_at_fpr(y, s, 0.01).tpr}}}},
                         "per_doc": {"labels": y, "scores": {"loss": s}}}
    return rep


def outcomes(reports, policy) -> dict[str, int]:
    out = {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0}
    for r in reports:
        out[evaluate(r, policy).status] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--R", type=int, default=2000, help="references per secret")
    ap.add_argument("--K", type=int, default=24, help="secrets")
    ap.add_argument("--n", type=int, default=200, help="members and non-members")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-table", action="store_true")
    a = ap.parse_args()
    policy = load_policy(EXAMPLE)
    if not a.no_table:
        lims = (0.2, 0.1, 0.05, 0.03, 0.02)
        need = [docs_to_settle_tpr(lim, tpr_at=lambda q: q, alpha=policy.alpha) for lim in lims]
        print("| limit on TPR at 1% FPR | " + " | ".join(f"{x:g}" for x in lims) + " |")
        print("|---" * (len(lims) + 1) + "|")
        print("| non-members and members | " + " | ".join(f"{x:,}" if x else "-" for x in need) + " |", flush=True)
    rng = np.random.default_rng(a.seed)
    t = time.perf_counter()
    clean = outcomes((clean_report(rng, R=a.R, K=a.K, n=a.n) for _ in range(a.runs)), policy)
    print(f"clean audits (R {a.R}, K {a.K}, n {a.n}, seed {a.seed}): {clean} "
          f"({time.perf_counter() - t:.0f} s)", flush=True)
    leaky = max(100, a.runs // 10)
    by_rank = outcomes((clean_report(rng, R=a.R, K=a.K, n=a.n, leak_rank=True) for _ in range(leaky)), policy)
    by_tpr = outcomes((clean_report(rng, R=a.R, K=a.K, n=a.n, leak_tpr=0.5) for _ in range(leaky)), policy)
    print(f"leaky audits: a secret at rank 1 of {a.R}: {by_rank}; TPR 0.5 at 1% FPR: {by_tpr}")


if __name__ == "__main__":
    main()
