"""GPU check: llm_mia's scoring and extraction on one GPU as a percentage of its matmul peak, in minutes.

Prepared for the first session lent a GPU (issue 23, item 5); never a test dependency. In one run,
under a time budget (default 450 s; a section that would start past it is skipped with a note):

1. the GPU's matmul peak, measured here: the best of ``torch.mm`` on square bf16 and fp32 (TF32 off)
   matrices of 4,096 and 8,192 (``--cpu-smoke``: 256);
2. for each shape, GPT-2 124M (12 x 768, 50,257 ids) and a 1B Llama (16 x 2,048, GQA 32/8 heads,
   MLP 8,192, 32,000 ids), random weights, in bf16 and fp32, with the HF engine:
   - scoring: ``LoadedModel.token_stats`` (Min-K%++ moments included) of N random sequences of L
     tokens at each batch size of the sweep;
   - extraction: ``llm_mia.extraction.extract.extract`` (top-k 40, no reference), one batch of
     B samples x the new tokens, at each batch size of the sweep;
   - the two-pass vs generation-pass cross-check: max |log p| difference between the log-probs
     recorded while sampling and a fresh scoring pass over the same ids;
3. with the vLLM engine (bf16; skipped with a note where ``vllm`` is not importable): scoring by
   ``prompt_logprobs`` and extraction, and the HF vs vLLM cross-check (max |log p| difference per
   token over the same ids).

Every throughput is given as useful FLOPs per second (2 x parameters that multiply, embeddings
excluded and a tied head counted once, + attention 4 x layers x width x (position + 1); see
``roofline.py``) and as a percentage of the bf16 and the fp32 peak of the same run. Results go to
``$OUT`` if set, else ``./gpu_check_out``: ``gpu_check.json`` (rewritten after every section, so an
interrupted run keeps what it measured) and ``gpu_check.md``.

    bash benchmarks/gpu_check.sh                        # on the GPU machine, at most ~8 minutes
    python benchmarks/gpu_check.py --cpu-smoke          # tiny shapes on the CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from roofline import pass_flops  # noqa: E402  (this folder's module)

SHAPES = {  # name: (architecture, layers, width, heads, kv heads, MLP width, vocabulary)
    "gpt2-124m": ("gpt2", 12, 768, 12, 12, 3072, 50257),
    "llama-1b": ("llama", 16, 2048, 32, 8, 8192, 32000),
}
SMOKE = {"gpt2-tiny": ("gpt2", 2, 64, 2, 2, 256, 512), "llama-tiny": ("llama", 2, 64, 4, 2, 128, 512)}


class Budget:
    """Seconds left of the run's budget; ``ok(need)`` says whether a section needing ``need`` s may start."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)

    def ok(self, need: float) -> bool:
        return self.left() > need


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev: torch.device, reps: int = 1) -> float:
    """Best wall time of ``reps`` calls of ``fn`` (device synchronised)."""
    best = float("inf")
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(dev: torch.device, dtype: torch.dtype, sizes: tuple[int, ...]) -> float:
    """Best FLOP/s of ``torch.mm`` on square ``dtype`` matrices (TF32 off for fp32)."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
        torch.mm(a, b)
        best = max(best, 2 * n**3 / timed(lambda a=a, b=b: torch.mm(a, b), dev, reps=5))
    return best


def build(shape: tuple, dtype: torch.dtype, dev: torch.device, tok):
    """A random-weight model of ``shape`` on ``dev`` in ``dtype``, wrapped with ``tok``, and its FLOP parameters."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    from llm_mia.models.hf import from_objects

    arch, layers, width, heads, kv, mlp, vocab = shape
    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_inner=mlp, vocab_size=vocab, n_positions=1024,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        cls = GPT2LMHeadModel
    else:
        cfg = LlamaConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
                          num_key_value_heads=kv, intermediate_size=mlp, vocab_size=vocab,
                          max_position_embeddings=2048, tie_word_embeddings=False,
                          bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        cls = LlamaForCausalLM
    with torch.device(dev):
        model = cls(cfg).to(dtype).eval()
    head = model.get_output_embeddings().weight
    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.weight is not head}
    n_flop_params = sum(p.numel() for p in model.parameters() if id(p) not in emb)
    return from_objects(model, tok, fused_activations=True), (n_flop_params, layers, width)


def random_ids(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (n, length), generator=g).tolist()


def rate(flops: float, seconds: float, peaks: dict) -> dict:
    """Seconds, TFLOP/s and % of each peak of one measurement."""
    out = {"seconds": round(seconds, 4), "tflops": round(flops / seconds / 1e12, 4)}
    for k, p in peaks.items():
        out[f"pct_of_{k}_peak"] = round(100 * flops / seconds / p, 2)
    return out


def scoring_sweep(lm, fp, cfg, peaks, dev) -> list[dict]:
    """token_stats (with moments) of N random sequences of L tokens at each batch size."""
    seqs = random_ids(cfg.n_seqs, cfg.seq_len, lm.vocab_size, seed=1)
    flops = sum(pass_flops(*fp, len(s)) for s in seqs)
    lm.token_stats(seqs[:2], batch_size=2)  # warm-up (kernels, allocator)
    rows = []
    for b in cfg.batches:
        t = timed(lambda b=b: lm.token_stats(seqs, batch_size=b), dev)
        rows.append({"batch_size": b, "n_seqs": len(seqs), "seq_len": cfg.seq_len, **rate(flops, t, peaks)})
    return rows


def extraction_sweep(lm, fp, cfg, peaks, dev) -> list[dict]:
    """extract() of one batch of B samples x the new tokens (top-k 40, no reference) at each batch size."""
    from llm_mia.extraction.extract import ExtractConfig, extract, read_clear

    with tempfile.TemporaryDirectory() as d:  # warm-up (kernels, allocator, the first generate call)
        extract(lm, d, cfg=ExtractConfig(num_samples=2, max_new_tokens=4, batch_size=2, seed=0, progress=False))
    rows = []
    for b in cfg.batches:
        with tempfile.TemporaryDirectory() as d:
            ec = ExtractConfig(num_samples=b, max_new_tokens=cfg.new_tokens, batch_size=b, seed=1, progress=False)
            t = timed(lambda d=d, ec=ec: extract(lm, d, cfg=ec), dev)
            samples = read_clear(d, "samples.jsonl")
        flops = b * pass_flops(*fp, cfg.new_tokens + 1)
        for r in samples:  # the lowercase pass is useful work where lowercasing changes the ids
            x, low = (lm.encode([v], prepend_bos=True)[0][0] for v in (r["text"], r["text"].lower()))
            flops += pass_flops(*fp, len(low)) if low != x else 0
        rows.append({"batch_size": b, "new_tokens": cfg.new_tokens, **rate(flops, t, peaks)})
    return rows


def generation_crosscheck(lm, cfg) -> dict:
    """Max |log p| difference: recorded while sampling vs a fresh scoring pass over the same ids."""
    from llm_mia.models.stats import compute_token_stats

    gens = lm.generate([[lm.bos_id]] * 8, max_new_tokens=min(cfg.new_tokens, 64), seeds=list(range(8)),
                       vocab_limit=lm.vocab_size)
    seqs = [g.prompt + g.new_ids for g in gens]
    st = compute_token_stats(lm.model, seqs, pad_id=lm.bos_id, moments=False)
    diff = max((float((torch.as_tensor(g.logprob) - st.token_logprob[i, :len(g.new_ids)]).abs().max())
                for i, g in enumerate(gens) if g.new_ids), default=float("nan"))
    return {"max_abs_diff_nats": diff, "tokens": int(st.n_scored.sum())}


def vllm_section(lm, fp, cfg, peaks, dev) -> dict:
    """vLLM (bf16) scoring and extraction timings and the HF vs vLLM cross-check."""
    from llm_mia.models.vllm_engine import VllmModel

    t0 = time.perf_counter()
    vm = VllmModel.from_loaded(lm, check=False, enforce_eager=True, gpu_memory_utilization=cfg.vllm_mem)
    out = {"startup_s": round(time.perf_counter() - t0, 1)}
    try:
        seqs = random_ids(cfg.n_seqs, cfg.seq_len, lm.vocab_size, seed=2)
        flops = sum(pass_flops(*fp, len(s)) for s in seqs)
        vm.token_stats(seqs[:2], moments=False)
        out["scoring"] = {"n_seqs": len(seqs), "seq_len": cfg.seq_len,
                          **rate(flops, timed(lambda: vm.token_stats(seqs, moments=False), dev), peaks)}
        few = seqs[:16]
        a, b = vm.token_stats(few, moments=False), lm.token_stats(few, moments=False)
        out["crosscheck_hf_vs_vllm"] = {"max_abs_diff_nats": float((a.token_logprob - b.token_logprob)[a.mask].abs()
                                                                   .max()), "tokens": int(a.n_scored.sum())}
        out["extraction"] = extraction_sweep(vm, fp, cfg, peaks, dev)
    finally:
        vm.close()
    return out


def shape_section(name, shape, dtype, cfg, peaks, dev, tok, budget, result) -> None:
    """Every HF measurement of one shape and dtype (and vLLM in bf16), written into ``result``."""
    key = f"{name}/{str(dtype).removeprefix('torch.')}"
    res = result["runs"].setdefault(key, {})
    lm, fp = build(shape, dtype, dev, tok)
    res["flop_params"] = fp[0]
    res["scoring_hf"] = scoring_sweep(lm, fp, cfg, peaks, dev)
    save(result, cfg.out)
    if budget.ok(cfg.need_s):
        res["extraction_hf"] = extraction_sweep(lm, fp, cfg, peaks, dev)
        res["crosscheck_two_pass_vs_generation"] = generation_crosscheck(lm, cfg)
    else:
        res["extraction_hf"] = f"skipped: {budget.left():.0f} s of the budget left"
    save(result, cfg.out)
    if dtype == torch.bfloat16 or dev.type == "cpu":
        if result["vllm"] is not None:
            res["vllm"] = result["vllm"]
        elif not budget.ok(cfg.need_s + 60):
            res["vllm"] = f"skipped: {budget.left():.0f} s of the budget left"
        else:
            try:
                res["vllm"] = vllm_section(lm, fp, cfg, peaks, dev)
            except Exception as e:  # vLLM fails in many ways (memory, architecture): note it, go on
                res["vllm"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    del lm
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    save(result, cfg.out)


def save(result: dict, out: Path) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` under ``out`` (rewritten after every section)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_check.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    """The figures as markdown tables (one per shape and dtype), for docs/benchmarks.md."""
    env = result["env"]
    peaks = ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in result["peaks"].items())
    lines = [f"# GPU check ({env['device']}, torch {env['torch']}, {result['when']})", "",
             f"Matmul peak measured in this run: {peaks}. Total {result.get('seconds', 0):.0f} s.", ""]
    for key, res in result["runs"].items():
        lines += [f"## {key} ({res.get('flop_params', 0) / 1e6:.0f} M parameters that multiply)", "",
                  "| workload | batch | seconds | TFLOP/s | % bf16 peak | % fp32 peak |", "|---|---|---|---|---|---|"]
        for label, rows in (("HF scoring", res.get("scoring_hf")), ("HF extraction", res.get("extraction_hf")),
                            ("vLLM scoring", [res["vllm"]["scoring"]] if isinstance(res.get("vllm"), dict)
                             and "scoring" in res["vllm"] else None),
                            ("vLLM extraction", res["vllm"].get("extraction") if isinstance(res.get("vllm"), dict)
                             else None)):
            if isinstance(rows, str):
                lines.append(f"| {label} | {rows} | | | | |")
            for r in rows if isinstance(rows, list) else []:
                lines.append(f"| {label} | {r.get('batch_size', '-')} | {r['seconds']} | {r['tflops']} | "
                             f"{r.get('pct_of_bf16_peak', '-')} | {r.get('pct_of_fp32_peak', '-')} |")
        for c in ("crosscheck_two_pass_vs_generation",):
            if c in res:
                lines.append(f"\n{c}: max |diff| {res[c]['max_abs_diff_nats']:.3g} nats over {res[c]['tokens']} tokens")
        v = res.get("vllm")
        if isinstance(v, dict) and "crosscheck_hf_vs_vllm" in v:
            x = v["crosscheck_hf_vs_vllm"]
            lines.append(f"\nHF vs vLLM: max |diff| {x['max_abs_diff_nats']:.3g} nats over {x['tokens']} tokens; "
                         f"vLLM start-up {v['startup_s']} s")
        elif isinstance(v, str):
            lines.append(f"\nvLLM: {v}")
        lines.append("")
    lines += [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def options(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU (< 1 minute): checks the script")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting sections past this (default 450)")
    ap.add_argument("--shapes", default=None, help="comma-separated subset of " + ", ".join(SHAPES))
    ap.add_argument("--no-vllm", action="store_true")
    a = ap.parse_args(argv)
    a.out = Path(os.environ.get("OUT") or "gpu_check_out")
    smoke = a.cpu_smoke
    a.shape_table = SMOKE if smoke else {k: v for k, v in SHAPES.items() if a.shapes is None or k in a.shapes.split(",")}
    a.batches = (2, 4) if smoke else (16, 64, 256)
    a.n_seqs, a.seq_len, a.new_tokens = (8, 32, 8) if smoke else (256, 512, 128)
    a.need_s = 5 if smoke else 60  # the least budget a section needs to be started
    a.vllm_mem = 0.4
    return a


def main(argv=None) -> int:
    cfg = options(argv)
    budget = Budget(cfg.budget_s)
    dev = torch.device("cpu" if cfg.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if dev.type == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from llm_mia.models.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["The quick brown Fox jumps over the lazy dog. Hello World, Alice and Bob. " * 50],
                              vocab_size=512, min_frequency=1)
    notes = ["random weights: speed does not depend on them; the texts are random ids (scoring) and "
             "samples over the tokenizer's 512 ids (extraction: the head still spans the whole vocabulary)"]
    if dev.type == "cpu" and not cfg.cpu_smoke:
        notes.append("no CUDA device: ran on the CPU")
    vllm_note = None
    if cfg.no_vllm:
        vllm_note = "skipped: --no-vllm"
    elif importlib.util.find_spec("vllm") is None:
        vllm_note = "skipped: vllm is not importable in this Python"
    env = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "cpu_smoke": cfg.cpu_smoke}
    sizes = (256,) if cfg.cpu_smoke else (4096, 8192)
    peaks = {"bf16": matmul_peak(dev, torch.bfloat16, sizes), "fp32": matmul_peak(dev, torch.float32, sizes)}
    result = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "env": env, "peaks": peaks, "runs": {},
              "vllm": vllm_note, "notes": notes}
    save(result, cfg.out)
    for name, shape in cfg.shape_table.items():
        for dtype in (torch.bfloat16, torch.float32):
            if not budget.ok(cfg.need_s):
                result["runs"][f"{name}/{str(dtype).removeprefix('torch.')}"] = {}
                notes.append(f"{name} {dtype}: skipped, {budget.left():.0f} s of the budget left")
                continue
            shape_section(name, shape, dtype, cfg, peaks, dev, tok, budget, result)
    result["seconds"] = round(time.perf_counter() - budget.t0, 1)
    save(result, cfg.out)
    print((cfg.out / "gpu_check.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
