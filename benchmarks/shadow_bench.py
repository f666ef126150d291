"""Do the shadow-model attacks (LiRA, RMIA with K references, Shokri) beat LOSS? Leave-one-out on
K + 1 models trained on balanced halves of one population (Carlini et al. 2022, sec. VI's protocol):
each model in turn is the target, the other K are its shadow models, and every population text is a
candidate (a member of the target or not). ROC metrics are pooled over the K + 1 targets, and also
computed per target and averaged (pooling mixes targets whose overall loss levels differ).
Models already trained in --out are kept (resume), so a rerun only rescores.

    python benchmarks/shadow_bench.py --n-docs 512 --models 9 --steps 150 --preset tiny
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SIGNALS = ("loss", "zlib", "min_k", "min_k_plus_plus", "lira_online", "lira_offline", "lira_token_online",
           "lira_token_offline", "rmia_online", "rmia_offline", "shokri")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-docs", type=int, default=512)
    ap.add_argument("--doc-chars", type=int, default=400)
    ap.add_argument("--models", type=int, default=9)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--out", default="shadow-bench")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from llm_mia.core import io
    from llm_mia.data.corpus import load_source
    from llm_mia.membership import signals as S
    from llm_mia.membership.metrics import roc_metrics
    from llm_mia.membership.shadow import load_shadows, train_shadows
    from llm_mia.membership.signals.shadow import (
        ShadowInputs,
        fit_attack_classifier,
        membership_features,
        token_logprob_matrix,
    )
    from llm_mia.models.loading import load_model
    from llm_mia.models.tokenizer import train_bpe_tokenizer
    from llm_mia.training.train import PRESETS

    out = Path(a.out)
    docs = list(dict.fromkeys(d[: a.doc_chars] for d in load_source("python-docs", max_chars=a.n_docs * 3000)))
    docs = [d for d in docs if len(d) >= a.doc_chars // 2][: a.n_docs]
    io.write_jsonl(out / "population.jsonl", [{"text": t} for t in docs])
    if not (out / "tokenizer" / "tokenizer.json").is_file():
        train_bpe_tokenizer(docs, vocab_size=PRESETS[a.preset].vocab_size).save_pretrained(out / "tokenizer")
    t0 = time.time()
    train_shadows(out / "population.jsonl", out / "models", n_models=a.models, preset=a.preset,
                  tokenizer_from=str(out / "tokenizer"), max_steps=a.steps, seed=a.seed, progress=False, echo=print)
    t_train = time.time() - t0
    sh = load_shadows(out / "models")
    texts, K1 = sh.texts, sh.n_models
    t0 = time.time()
    stats, lp, feats, tok = [], [], [], []
    for mdir in sh.model_dirs:
        m = load_model(str(mdir), device=a.device)
        ids, ctx = m.encode(texts, prepend_bos=True)
        st = m.token_stats(ids, context_lens=ctx, moments=True)
        stats.append(st)
        lp.append(-S.mean_nll(st).double().numpy())
        feats.append(membership_features(st, texts))
        tok.append(token_logprob_matrix(st))
    t_score = time.time() - t0
    lp = np.stack(lp, 1)  # (N, K + 1)
    width = max(t.shape[1] for t in tok)
    tok = np.stack([np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=np.nan) for t in tok], 1)
    y_all, s_all, per_target = [], {k: [] for k in SIGNALS}, {k: [] for k in SIGNALS}
    for j in range(K1):
        others = [k for k in range(K1) if k != j]
        x_in = sh.keep[others].T
        X = np.concatenate([feats[k] for k in others])
        clf = fit_attack_classifier(X, sh.keep[others].reshape(-1).astype(int), seed=a.seed)
        inp = S.SignalInputs(target=stats[j], texts=texts)
        inp.shadow = ShadowInputs(x_logprob=lp[:, others], x_in=x_in, z_target=lp[:, j], z_logprob=lp[:, others],
                                  z_in=x_in, classifier=clf, n_models=K1 - 1,
                                  x_token_logprob=tok[:, others], z_token_logprob=tok[:, others])
        y_all += sh.keep[j].astype(int).tolist()
        for k in SIGNALS:
            v = torch.as_tensor(S.REGISTRY[k].fn(inp)).double().tolist()
            s_all[k] += v
            m = roc_metrics(sh.keep[j].astype(int).tolist(), v)
            per_target[k].append((m["auc"], m["tpr_at_fpr"]["0.01"]["tpr"]))
    res = {}
    for k in SIGNALS:
        m = roc_metrics(y_all, s_all[k])
        pt = np.array(per_target[k])
        res[k] = {"auc": round(m["auc"], 4), "tpr_at_0.1%": round(m["tpr_at_fpr"]["0.001"]["tpr"], 4),
                  "tpr_at_1%": round(m["tpr_at_fpr"]["0.01"]["tpr"], 4),
                  "per_target_mean_auc": round(float(pt[:, 0].mean()), 4),
                  "per_target_mean_tpr_at_1%": round(float(pt[:, 1].mean()), 4)}
        print(f"{k:16s} pooled AUC {res[k]['auc']:.3f}  TPR@0.1% {res[k]['tpr_at_0.1%']:.3f}  TPR@1% {res[k]['tpr_at_1%']:.3f}"
              f" | per target: mean AUC {res[k]['per_target_mean_auc']:.3f}  mean TPR@1% {res[k]['per_target_mean_tpr_at_1%']:.3f}")
    summary = {"n_docs": len(texts), "models": K1, "shadows_per_target": K1 - 1, "steps": a.steps, "preset": a.preset,
               "n_points": len(y_all), "train_s": round(t_train, 1), "score_s": round(t_score, 1),
               "heldout_loss": [io.read_json(d / "recipe.json")["heldout_loss"] for d in sh.model_dirs],
               "train_loss": [io.read_json(d / "recipe.json")["train_loss"] for d in sh.model_dirs], "signals": res}
    io.write_json(out / "results.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "signals"}))


if __name__ == "__main__":
    main()
