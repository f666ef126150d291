"""The openai:URL endpoint (llm_mia.models.endpoint) against a real local HTTP server.

The server is Python's http.server in a thread, speaking the OpenAI completions API over TCP; the
client side is the real ``openai`` library with its real retries. Its "model" is the step model
over a vocabulary of V ids: after id a, logit 2.0 for (a + 1) mod V and 0 elsewhere, so every
log-prob is known by hand: log p(next) = 2 - log(e^2 + V - 1), log p(other) = -log(e^2 + V - 1).
The real vLLM server is tested in tests/with_vllm/test_endpoint_vllm.py.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.endpoint import QueryBudgetExceeded
from llm_mia.models.loading import load_model
from tests.conftest import run_cli

V = 300  # len(tiny_tokenizer)
LIKELY = 2 - math.log(math.e ** 2 + V - 1)
OTHER = -math.log(math.e ** 2 + V - 1)
KEY = "sk-test-do-not-leak-7f3a9"


def step_logprob(prev: int, tok: int) -> float:
    return LIKELY if tok == (prev + 1) % V else OTHER


class StepServer:
    """A real HTTP server: ``fail`` holds the statuses the next /completions calls answer first."""

    def __init__(self, *, key: str | None = None, served=("step",), owned_by: str = "test"):
        self.key, self.served, self.fail, self.seen = key, list(served), [], []
        self.raw = []  # (status, content type, body bytes) the next POSTs answer, whatever the path
        self.post_status = None  # a status every POST answers (a broken server)
        self.edit_logprobs = None  # a function over each prompt's token_logprobs list
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, body, headers=()):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self):
                if outer.key is not None and self.headers.get("authorization") != f"Bearer {outer.key}":
                    self._send(401, {"error": {"message": "Unauthorized", "type": "auth", "code": 401}})
                    return False
                return True

            def do_GET(self):
                if not self._authorised():
                    return
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                                  "owned_by": owned_by} for n in outer.served]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.seen.append((self.path, body))
                if not self._authorised():
                    return
                if outer.raw or outer.post_status:
                    code, ctype, data = outer.raw.pop(0) if outer.raw else (
                        outer.post_status, "application/json", json.dumps({"error": {"message": "boom"}}).encode())
                    self.send_response(code)
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(data)))
                    self.send_header("retry-after", "0")
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if not self.path.endswith("/completions") or "chat" in self.path:
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if outer.fail:
                    code = outer.fail.pop(0)
                    self._send(code, {"error": {"message": f"status {code}", "code": code}},
                               headers=[("retry-after", "0")])
                    return
                prompts = body["prompt"]
                choices = []
                for i, p in enumerate(prompts):
                    lps = [None] + [step_logprob(a, b) for a, b in zip(p, p[1:])]
                    if outer.edit_logprobs is not None:
                        lps = outer.edit_logprobs(lps)
                    tops = [None] + [{str((a + 1) % V): LIKELY} for a in p[:-1]]
                    choices.append({"index": i, "text": "", "finish_reason": "length",
                                    "logprobs": {"tokens": [str(t) for t in p], "token_logprobs": lps,
                                                 "top_logprobs": tops, "text_offset": list(range(len(p)))}})
                n_tok = sum(map(len, prompts))
                self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": body["model"],
                                 "choices": choices,
                                 "usage": {"prompt_tokens": n_tok, "completion_tokens": 0, "total_tokens": n_tok}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def completions(self):
        return [b for p, b in self.seen if p.endswith("/completions")]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tok_dir(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


@pytest.fixture
def server():
    s = StepServer()
    yield s
    s.close()


def _connect(server, tok_dir, **extra):
    args = ",".join([f"tokenizer={tok_dir}", "api=completions", *[f"{k}={v}" for k, v in extra.items()]])
    return load_model(f"openai:{server.url}", model_args=args)


def test_prompt_logprobs_match_the_step_model_by_hand(server, tok_dir):
    m = _connect(server, tok_dir, batch=2, concurrency=1)
    seqs = [[0, 1, 2, 7], [5, 6], [9], [3, 4, 5, 6, 100]]
    st = m.token_stats(seqs, context_lens=1, moments=False)
    want = [[LIKELY, LIKELY, OTHER], [LIKELY], [], [LIKELY, LIKELY, LIKELY, OTHER]]
    assert st.n_scored.tolist() == [3, 1, 0, 4]
    for i, w in enumerate(want):
        got = st.token_logprob[i, :len(w)].tolist()
        assert got == pytest.approx(w, abs=1e-6)
        assert st.token_is_top1[i, :len(w)].tolist() == [x == LIKELY for x in w]
        assert st.token_id[i, :len(w)].tolist() == seqs[i][1:]
    # 3 prompts (a one-token sequence has nothing to score), 2 per request, sent as token ids exactly
    assert m.usage.queries == 2 and m.usage.prompts == 3 and m.usage.retries == 0
    assert [b["prompt"] for b in server.completions()] == [seqs[:2], seqs[3:]]
    assert all(b["echo"] is True and b["max_tokens"] == 0 for b in server.completions())
    with pytest.raises(LlmMiaError, match="Min-K%\\+\\+ needs mu and sigma"):
        m.token_stats(seqs, moments=True)


def test_retry_with_backoff_on_429_and_503_then_200(server, tok_dir):
    m = _connect(server, tok_dir, max_retries=3)
    server.fail = [429, 503]
    st = m.token_stats([[0, 1, 3]], moments=False)
    assert st.token_logprob[0, :2].tolist() == pytest.approx([LIKELY, OTHER], abs=1e-6)
    assert len(server.completions()) == 3  # two refused attempts, then the answer
    assert m.usage.queries == 1 and m.usage.retries == 2


def test_rate_limited_past_the_retries_is_one_line_error(server, tok_dir):
    m = _connect(server, tok_dir, max_retries=1)
    server.fail = [429, 429, 429]
    with pytest.raises(LlmMiaError, match="answered 429 after the client's retries") as e:
        m.token_stats([[0, 1]], moments=False)
    assert "\n" not in str(e.value) and len(server.completions()) == 2


def test_max_queries_stops_before_the_call_that_passes_it(server, tok_dir):
    m = _connect(server, tok_dir, batch=1, concurrency=1)
    m.max_queries = 2
    with pytest.raises(QueryBudgetExceeded, match="--max-queries 2 reached after 2 queries"):
        m.token_stats([[0, 1], [1, 2], [2, 3]], moments=False)
    assert len(server.completions()) == 2 and m.usage.queries == 2


def test_api_detected_as_completions_with_one_counted_probe(server, tok_dir):
    m = load_model(f"openai:{server.url}", model_args=f"tokenizer={tok_dir}")
    assert m.api == "completions" and m.mode.name == "topk:1"
    assert m.usage.queries == 1 and m.usage.by_stage == {"api detection": 1}


def test_unauthorised_key_is_one_line_error_without_the_key(tok_dir, monkeypatch):
    s = StepServer(key="sk-right")
    try:
        monkeypatch.setenv("LLM_MIA_API_KEY", KEY)
        with pytest.raises(LlmMiaError, match="refused the API key \\(401\\): set LLM_MIA_API_KEY") as e:
            load_model(f"openai:{s.url}", model_args=f"tokenizer={tok_dir}")
        assert KEY not in str(e.value)
        monkeypatch.setenv("LLM_MIA_API_KEY", "sk-right")
        assert load_model(f"openai:{s.url}", model_args=f"tokenizer={tok_dir},api=completions").name == "step"
    finally:
        s.close()


def test_model_not_served_lists_the_served_names(server, tok_dir):
    with pytest.raises(LlmMiaError, match="does not serve the model 'gpt-9' \\(served: step\\)"):
        load_model(f"openai:{server.url}", model_args=f"tokenizer={tok_dir},name=gpt-9")


def test_unreachable_endpoint_and_bad_specs(tok_dir):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(LlmMiaError, match=f"cannot reach the endpoint http://127.0.0.1:{port}/v1"):
        load_model(f"openai:http://127.0.0.1:{port}/v1", model_args=f"tokenizer={tok_dir}")
    with pytest.raises(LlmMiaError, match="give the endpoint's base URL"):
        load_model("openai:127.0.0.1:8000")
    with pytest.raises(LlmMiaError, match="api must be one of completions, chat, text"):
        load_model("openai:http://127.0.0.1:1/v1", model_args="api=grpc")
    with pytest.raises(LlmMiaError, match="peft does not apply to an openai: endpoint"):
        load_model("openai:http://127.0.0.1:1/v1", model_args="peft=x")
    with pytest.raises(LlmMiaError, match="api applies to an openai:URL endpoint"):
        load_model(str(tok_dir), model_args="api=completions")


def test_cli_audit_unreachable_and_max_queries_exit_2(tok_dir, tmp_path, capsys, leak_models):
    d, _ = leak_models
    server = StepServer(owned_by="vllm")  # sampling with top-k needs vLLM's extensions
    code, _, err = run_cli(["audit", "--model", "openai:http://127.0.0.1:9/v1", "--model-args", f"tokenizer={tok_dir}",
                            "--corpus", d / "corpus", "--out", tmp_path / "a"], capsys)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "cannot reach the endpoint" in err
    # the API probe is query 1; the first extraction call would be query 2
    code, _, err = run_cli(["audit", "--model", f"openai:{server.url}", "--model-args", f"tokenizer={tok_dir}",
                            "--corpus", d / "corpus", "--out", tmp_path / "b", "--max-queries", "1",
                            "--strategy", "top-k", "--num-samples", "2"], capsys)
    assert code == 2 and "error: --max-queries 1 reached after 1 queries" in err and "(during extraction)" in err
    code, _, err = run_cli(["audit", "--model", str(d / "leaky"), "--corpus", d / "corpus", "--out", tmp_path / "c",
                            "--max-queries", "5"], capsys)
    assert code == 2 and "--max-queries bounds the queries to an openai:URL endpoint" in err
    server.close()


def test_cli_score_through_the_endpoint_matches_the_step_model(server, tok_dir, tiny_tokenizer, tmp_path, capsys):
    texts = ["The quick brown fox jumps over the lazy dog.", "Alpha beta gamma delta epsilon. 0123456789"]
    (tmp_path / "x.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, _, err = run_cli(["score", "--model", f"openai:{server.url}", "--model-args",
                            f"tokenizer={tok_dir},api=completions", "--input", tmp_path / "x.txt",
                            "--output", tmp_path / "o.jsonl", "--prepend-bos"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    for t, r in zip(texts, rows):
        ids = [tiny_tokenizer.eos_token_id] + tiny_tokenizer(t, add_special_tokens=False)["input_ids"]
        want = -sum(step_logprob(a, b) for a, b in zip(ids, ids[1:])) / (len(ids) - 1)
        assert r["n_scored_tokens"] == len(ids) - 1 and r["nll"] == pytest.approx(want, abs=1e-6)
        assert "min_k_plus_plus" not in r["scores"] and "min_k" in r["scores"]  # no mu / sigma over an API


@pytest.mark.parametrize("edit, shown", [
    (lambda lps: [lps[0], float("nan"), *lps[2:]], "log-prob +nan at prompt position 1"),
    (lambda lps: [lps[0], 3.0, *lps[2:]], "log-prob +3 at prompt position 1"),
    (lambda lps: [lps[0], lps[1], float("-inf"), *lps[3:]], "log-prob -inf at prompt position 2"),
    (lambda lps: [lps[0], lps[1], None, *lps[3:]], "log-prob null at prompt position 2"),
], ids=["nan", "positive", "minus_inf", "null_mid_prompt"])
def test_b4_13_endpoint_logprobs_must_be_finite_and_at_most_0(server, tok_dir, edit, shown):
    m = _connect(server, tok_dir)
    server.edit_logprobs = edit
    with pytest.raises(LlmMiaError) as e:
        m.token_stats([[0, 1, 2, 3]], moments=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"the endpoint {server.url} returned {shown}"), msg
    # rounding noise just above 0 is clamped, a real log-prob passes unchanged
    server.edit_logprobs = lambda lps: [lps[0], 1e-7, *lps[2:]]
    st = m.token_stats([[0, 1, 2]], moments=False)
    assert st.token_logprob[0, :2].tolist() == pytest.approx([0.0, LIKELY], abs=1e-6)


@pytest.mark.parametrize("code, ctype, body, want", [
    (200, "text/html", b"<html><body>Login</body></html>", "answered 200 with an HTML page instead of an OpenAI"),
    (200, "application/json", b'{"id": "c", "choices": [{"ind', "answered 200 with JSON it cut short or broke"),
], ids=["html_200", "truncated_json"])
def test_b4_13_endpoint_non_api_replies_are_named(server, tok_dir, code, ctype, body, want):
    m = _connect(server, tok_dir)
    server.raw = [(code, ctype, body)]
    with pytest.raises(LlmMiaError) as e:
        m.token_stats([[0, 1, 2]], moments=False)
    assert str(e.value).startswith(f"the endpoint {server.url} {want}") and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("status, want", [
    (500, "answered 500 after the client's retries with backoff: boom (while probing /v1/completions"),
    (400, "turned down every API probe: /v1/completions with echo + logprobs: the endpoint"),
])
def test_b4_14_api_detection_reports_server_errors_as_such(server, tok_dir, status, want):
    server.post_status = status
    with pytest.raises(LlmMiaError) as e:
        load_model(f"openai:{server.url}", model_args=f"tokenizer={tok_dir},max_retries=0")
    msg = str(e.value)
    assert want in msg and server.url in msg and "api=text" not in msg and "\n" not in msg, msg
    if status == 400:  # each of the three probes named with its status
        assert msg.count("answered 400") == 3


def test_b4_14_text_only_server_is_still_detected_as_text(server, tok_dir):
    """A server refusing echo + logprobs (400) and chat (404) but answering plain completions is label-only."""
    ok = json.dumps({"id": "c", "object": "text_completion", "created": 0, "model": "step",
                     "choices": [{"index": 0, "text": "x", "finish_reason": "length", "logprobs": None}]}).encode()
    server.raw = [(400, "application/json", b'{"error": {"message": "echo not supported"}}'),
                  (404, "application/json", b'{"error": {"message": "not found"}}'),
                  (200, "application/json", ok)]
    m = load_model(f"openai:{server.url}", model_args=f"tokenizer={tok_dir},max_retries=0")
    assert m.api == "text" and m.usage.queries == 3
