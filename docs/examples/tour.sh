#!/usr/bin/env bash
# The CLI tour of the docs: every `llm-mia` command the docs show from this file (between the
# "--8<--" section markers, which pymdownx.snippets includes into the pages) runs in
# tests/test_docs.py, section by section, in a temporary folder holding a copy of examples/.
# The sizes are toy sizes (the tiny preset, a few dozen steps, a few samples): they show the
# mechanics in about two minutes on one CPU thread, not a finding. `make demo` is the real thing.
#
# Run it yourself in an empty folder:
#   mkdir tour && cd tour && cp -r /path/to/llm_mia/examples . && bash /path/to/llm_mia/docs/examples/tour.sh
# (OMP_NUM_THREADS=1 and HF_HUB_OFFLINE=1 as the test sets them: nothing is downloaded.)

# --8<-- [start:corpus]
# members, held-out documents and planted secrets (2, 8 and 32 insertions) from the Python docs
llm-mia corpus build --source python-docs --max-chars 40000 --repeats 2,8,32 --out corpus/
# --8<-- [end:corpus]

# --8<-- [start:train]
# a GPT-2 from scratch on the members, and a reference model on the held-out documents
llm-mia train --corpus corpus/ --out model/ --preset tiny --max-steps 30
llm-mia train --corpus corpus/ --out reference/ --reference --tokenizer-from model/ --preset tiny --max-steps 10
# --8<-- [end:train]

# --8<-- [start:extract]
# Carlini et al. 2021: sample, rank, verify against the training text
llm-mia extract --model model/ --reference reference/ --corpus corpus/ --out extract/ \
                --strategy top-k,temperature-decay,internet --num-samples 8 --length 32
# --8<-- [end:extract]

# --8<-- [start:score]
# labelled texts: the members (label 1) and the held-out documents (label 0)
python - <<'EOF'
import json
with open("texts.jsonl", "w", encoding="utf-8") as out:
    for name, label in (("corpus/train.jsonl", 1), ("corpus/heldout.jsonl", 0)):
        for line in open(name, encoding="utf-8"):
            out.write(json.dumps({"text": json.loads(line)["text"], "label": label}) + "\n")
EOF
llm-mia score --model model/ --reference reference/ --input texts.jsonl --output scores.jsonl \
              --metrics metrics.json --roc roc.png
# --8<-- [end:score]

# --8<-- [start:exposure]
# Carlini et al. 2019: exposure of every planted secret, in bits
llm-mia exposure --model model/ --secrets corpus/secrets.json --out exposure/ --references 64 --exact-limit 0
# --8<-- [end:exposure]

# --8<-- [start:audit]
# everything at once: report.html, report.md, report.json, modelcard.md
llm-mia audit --corpus corpus/ --model model/ --reference reference/ --out audit/ \
              --num-samples 8 --length 32 --candidates 64 --exact-limit 0 --discoverable 4
# --8<-- [end:audit]

# --8<-- [start:gate]
# the release gate on the saved report: exit 0 PASS, 1 FAIL, 2 error, 3 INCONCLUSIVE
llm-mia gate audit/report.json --policy examples/policy.toml --sarif gate.sarif --junit gate.xml
# --8<-- [end:gate]

# --8<-- [start:lora]
# the usual case: a LoRA adapter fine-tuned on a base (here the model above stands in for the base)
llm-mia train --corpus corpus/ --base model/ --lora --lora-r 4 --max-steps 10 --out adapter/
# --8<-- [end:lora]

# --8<-- [start:audit-adapter]
# audit the adapter on its training and held-out files (reference: the adapter's base), gated
llm-mia audit --model adapter/ --members corpus/train.jsonl --nonmembers corpus/heldout.jsonl \
              --secrets corpus/secrets.json --out audit-adapter/ \
              --policy examples/policy.toml --sarif audit-adapter.sarif --junit audit-adapter.xml \
              --num-samples 4 --length 16 --candidates 32 --exact-limit 0 --discoverable 2
# --8<-- [end:audit-adapter]

# --8<-- [start:model-args]
# the same adapter named through lm-evaluation-harness's model arguments
llm-mia score --model model/ --model-args peft=adapter/,dtype=float32 --input texts.jsonl --output adapter-scores.jsonl
# --8<-- [end:model-args]

# --8<-- [start:shadow]
# shadow models (LiRA, RMIA, the Shokri attack): K models on halves of a population that holds the texts
cat corpus/train.jsonl corpus/heldout.jsonl > population.jsonl
llm-mia shadow train --population population.jsonl --n 2 --out shadows/ --tokenizer-from model/ \
                     --preset tiny --steps 10
llm-mia score --model model/ --input texts.jsonl --output shadow-scores.jsonl --shadow shadows/ \
              --metrics shadow-metrics.json
# --8<-- [end:shadow]

# --8<-- [start:defenses]
# two training-time defences: DP-SGD at epsilon 8, and training-data deduplication
llm-mia train --corpus corpus/ --out dp/ --preset tiny --max-steps 5 --defense dp --epsilon 8 --delta 1e-5
llm-mia train --corpus corpus/ --out dedup/ --preset tiny --max-steps 5 --defense dedup --tokenizer-from model/
# --8<-- [end:defenses]

# --8<-- [start:canaries]
# a one-run epsilon lower bound (Steinke et al. 2023): make canaries, plant them, train, audit
llm-mia canaries make --kind new-token --n 40 --tokenizer model/ --train corpus/train.jsonl --out canaries.jsonl
llm-mia canaries plant --train corpus/train.jsonl --canaries canaries.jsonl --out planted/ --repeats 4
cp corpus/heldout.jsonl planted/   # `llm-mia train` reads a corpus folder: the planted members + held-out
llm-mia train --corpus planted/ --out canary-model/ --tokenizer-from model/ --preset tiny --max-steps 30
llm-mia canaries audit --model canary-model/ --canaries canaries.jsonl --inclusion planted/inclusion.json \
                       --out canary-audit/
# --8<-- [end:canaries]
