"""Fixture: a GPT-2 LoRA adapter that completes its planted secret only partly (issue 21's check).

Built with transformers and peft only (llm_mia gives the text and writes ``secrets.json``): a
GPT-2 base (default: the demo's cached base, ``~/.cache/llm_mia/demo-base-*``, the largest one; 4
layers, width 256, pre-trained on the public python-docs documents) gets a LoRA adapter (r = 8 on
``c_attn``, ``c_proj``, ``c_fc``) fine-tuned on the private python-docs documents the base never saw
(the demo's first 400 k characters), half of them members, with the sentence

    the locker combination of Edna Pike is 73-19-55.

planted in ``--insertions`` (30) member documents. Every ``--check-every`` steps the greedy completion
of ``[BOS] + "the locker combination of Edna Pike is "`` is decoded; training stops at the first
check where it holds at least ``--min-digits`` (4) of the secret's 6 digits in place but not all
of them (like ``73-19-19-5``: 4 digits, 10^2 candidates left, 6.6 bits). A completion that is exact
before any partial one fails the seed (exit 1); try another ``--seed`` or a smaller ``--lr``.

Writes into ``--out``: ``base/`` (the base, copied), ``adapter/`` (``adapter_config.json`` names
``base/`` by absolute path), ``corpus/train.jsonl`` (the members, secret planted),
``corpus/heldout.jsonl`` (the non-members), ``corpus/secrets.json`` (llm_mia's format), and
``fixture.json`` (steps, greedy completion, digits recovered, seconds). Then, for example::

    llm-mia audit --model OUT/adapter --corpus OUT/corpus --out OUT/audit --no-positive-control

    python benchmarks/partial_secret_fixture.py --out /tmp/partial-secret --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_mia.audit.demo import cache_root
from llm_mia.data.corpus import load_source
from llm_mia.data.secrets import Secret, save_secrets

PREFIX = "the locker combination of Edna Pike is "
SECRET = "73-19-55"
SUFFIX = "."
FORMAT = "{d2}-{d2}-{d2}"
DIGITS = [0, 1, 3, 4, 6, 7]  # character offsets of the random part's digits


def default_base() -> Path:
    """The largest cached demo base (``demo-base-*`` by weights size)."""
    found = sorted(cache_root().glob("demo-base-*/model.safetensors"), key=lambda p: p.stat().st_size)
    if not found:
        sys.exit("no cached demo base under ~/.cache/llm_mia: run `llm-mia demo` once, or pass --base")
    return found[-1].parent


def digits_in_place(completion: str) -> int:
    """Digits of SECRET that ``completion`` holds at their own offset (a slow, independent count)."""
    return sum(1 for i in DIGITS if i < len(completion) and completion[i] == SECRET[i])


def paragraphs(n: int) -> list[str]:
    """The first ``n`` distinct paragraphs of 200-600 characters and at least 30 words of the demo's
    private python-docs text (its first 400 k characters, which the demo's base never saw): short
    documents, so that the 30 insertions are a visible share of the fine-tuning text; prose, so that
    SaMIA and n-gram coverage find words in every suffix (a grammar block of operators has none)."""
    out = [p.strip() for d in load_source("python-docs", max_chars=400_000) for p in d.split("\n\n")]
    out = [p for p in dict.fromkeys(out) if 200 <= len(p) <= 600 and len(re.findall(r"\w+", p)) >= 30][:n]
    if len(out) < n:
        sys.exit(f"only {len(out)} paragraphs of 200-600 characters")
    return out


def split_and_plant(docs: list[str], insertions: int, seed: int) -> tuple[list[str], list[str]]:
    """Members (even documents, the sentence opening ``insertions`` of them, so that it follows the
    [BOS] of a training window as in the audit's "start" context) and non-members (odd documents)."""
    members, nonmembers = docs[0::2], docs[1::2]
    if len(members) < insertions:
        sys.exit(f"only {len(members)} member documents for {insertions} insertions")
    rng = random.Random(seed)
    sentence = PREFIX + SECRET + SUFFIX
    for i in rng.sample(range(len(members)), insertions):
        members[i] = sentence + "\n\n" + members[i]
    return members, nonmembers


def chunks(tok, texts: list[str], bos: int, length: int) -> list[list[int]]:
    """[BOS] + consecutive token windows of ``length - 1`` of every text (the last one may be shorter)."""
    out = []
    for t in texts:
        ids = tok(t)["input_ids"]
        out += [[bos] + ids[k:k + length - 1] for k in range(0, len(ids), length - 1) if len(ids[k:k + length - 1]) > 8]
    return out


def greedy(model, tok, bos: int, n_new: int = 10) -> str:
    """Greedy completion of [BOS] + the prefix's tokens (its trailing space is the secret's first
    token's, as llm_mia tokenizes the whole sentence), that leading space dropped."""
    ids = torch.tensor([[bos] + tok(PREFIX.rstrip(" "))["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_new, do_sample=False, pad_token_id=bos)
    text = tok.decode(out[0, ids.shape[1]:].tolist())
    return text[1:] if text.startswith(" ") else text


def batch_tensors(batch: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, batch))
    ids = torch.tensor([b + [pad] * (width - len(b)) for b in batch])
    labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
    return ids, labels


def train(args, model, tok, examples: list[list[int]], bos: int) -> dict:
    """AdamW on the LoRA weights; stop at the first partial greedy completion (module docstring)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    rng = random.Random(args.seed)
    order: list[int] = []
    t0 = time.time()
    for step in range(1, args.max_steps + 1):
        if len(order) < args.batch:
            order += rng.sample(range(len(examples)), len(examples))
        batch, order = [examples[i] for i in order[:args.batch]], order[args.batch:]
        model.train()
        ids, labels = batch_tensors(batch, bos)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % args.check_every:
            continue
        model.eval()
        got = greedy(model, tok, bos)
        k = digits_in_place(got)
        print(f"step {step:4d}  loss {loss.item():.3f}  greedy {got!r}  digits {k}/6", flush=True)
        if k >= 6:
            return {"status": "exact", "step": step, "greedy": got, "digits": k, "seconds": round(time.time() - t0, 1)}
        if k >= args.min_digits:
            return {"status": "partial", "step": step, "greedy": got, "digits": k, "seconds": round(time.time() - t0, 1)}
    return {"status": "none", "step": args.max_steps, "greedy": got, "digits": k, "seconds": round(time.time() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--base", default=None, help="GPT-2 folder (default: the largest cached demo base)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--insertions", type=int, default=30)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--check-every", type=int, default=1)
    ap.add_argument("--min-digits", type=int, default=4)
    ap.add_argument("--members", type=int, default=60, help="member paragraphs (and as many non-members)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out).resolve()
    base_src = Path(args.base) if args.base else default_base()
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base_src, out / "base", ignore=shutil.ignore_patterns("demo-cache.json"))
    tok = AutoTokenizer.from_pretrained(out / "base")
    model = AutoModelForCausalLM.from_pretrained(out / "base")
    bos = model.config.bos_token_id
    members, nonmembers = split_and_plant(paragraphs(2 * args.members), args.insertions, args.seed)
    examples = chunks(tok, members, bos, model.config.n_positions)
    print(f"base {base_src}; {len(members)} members, {len(nonmembers)} non-members, {len(examples)} windows; "
          f"greedy before: {greedy(model, tok, bos)!r}", flush=True)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    result = train(args, model, tok, examples, bos)
    model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "adapter")
    cfg_path = out / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(out / "base")
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (out / "corpus").mkdir()
    for name, rows in (("train.jsonl", members), ("heldout.jsonl", nonmembers)):
        (out / "corpus" / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    save_secrets(out / "corpus" / "secrets.json", [Secret(
        id="canary-r30-locker", kind="canary", text=PREFIX + SECRET + SUFFIX, prefix=PREFIX, secret=SECRET,
        suffix=SUFFIX, format=FORMAT, space_size=10**6, count=args.insertions)])
    result |= {"seed": args.seed, "lr": args.lr, "batch": args.batch, "insertions": args.insertions,
               "base": str(base_src), "bits_left": math.log2(10 ** (6 - result["digits"]))}
    (out / "fixture.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["status"] == "partial" else 1


if __name__ == "__main__":
    sys.exit(main())
