"""The Python API tour of the docs (tests/test_docs.py runs it in a temporary folder with examples/).

Toy sizes (the tiny preset, a few dozen steps): the mechanics, not a finding. Every name comes from
``llm_mia`` itself (``llm_mia.__all__``), resolved on first use.
"""

import json

from llm_mia import (
    AuditConfig,
    ExtractConfig,
    build_corpus,
    extract,
    gate_report,
    load_model,
    load_policy,
    load_secrets,
    roc_metrics,
    run_audit,
    score_texts,
    secret_exposure,
    train_model,
)

# members, held-out documents and planted secrets; a target model and a reference model
build_corpus("python-docs", "corpus", max_chars=40_000, repeats=(2, 8, 32))
secrets = load_secrets("corpus/secrets.json")
train_model("corpus", "model", preset="tiny", max_steps=30, progress=False)
train_model("corpus", "reference", preset="tiny", reference=True, tokenizer_from="model", max_steps=10, progress=False)
model, reference = load_model("model"), load_model("reference")


def texts(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


members, heldout = texts("corpus/train.jsonl"), texts("corpus/heldout.jsonl")

# membership: one column per signal, higher = more likely a member
scores = score_texts(model, members + heldout, reference=reference)
labels = [1] * len(members) + [0] * len(heldout)
print({s: round(roc_metrics(labels, scores[s])["auc"], 3) for s in ("loss", "zlib", "min_k", "reference")})

# extraction (Carlini et al. 2021) and exposure of the planted secrets (Carlini et al. 2019)
summary = extract(model, "extract", reference=reference, train_texts=members, secrets=secrets,
                  cfg=ExtractConfig(num_samples=8, max_new_tokens=32, progress=False))
print(summary["memorized_total"], "memorized samples")
exposure = secret_exposure(model, secrets, n_references=64, exact_limit=0)
print([(r["id"], r["count"], round(r["exposure_rank"], 2)) for r in exposure.rows])

# the whole audit, gated by a policy; the gate again on the saved report, as a CI step would
report = run_audit("corpus", "model", "audit", reference_path="reference",
                   cfg=AuditConfig(num_samples=8, max_new_tokens=32, n_candidates=64, exact_limit=0,
                                   discoverable_samples=4, progress=False),
                   policy=load_policy("examples/policy.toml"))
print(report["verdict"]["line"])
verdict = gate_report("audit/report.json", "examples/policy.toml")
print(verdict.status, "exit", verdict.exit_code)
