"""Model spec: PEFT adapters, --model-args, pickle refusal, offline behaviour (T3-18, T2-09 a)."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.hub import parse_model_args
from llm_mia.models.loading import load_model
from tests.conftest import make_tiny_gpt2


def _lora_adapter(base, tok, folder, seed=1):
    """A LoRA adapter on c_attn with non-zero B (so it changes the logits), saved with peft."""
    import copy

    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0))
    for n, p in pm.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    pm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return pm.eval()


@pytest.fixture(scope="module")
def gpt2_with_adapter(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    base = make_tiny_gpt2(len(tiny_tokenizer), n_positions=64)
    base.save_pretrained(d / "base")
    tiny_tokenizer.save_pretrained(d / "base")
    pm = _lora_adapter(base, tiny_tokenizer, d / "adapter")
    cfg = json.loads((d / "adapter" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(d / "base")
    (d / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    return d, base, pm


def test_t3_18_lora_adapter_folder_loads_on_its_base(gpt2_with_adapter, tiny_tokenizer):
    d, base, pm = gpt2_with_adapter
    lm = load_model(str(d / "adapter"), device="cpu")
    assert lm.base == str(d / "base") and lm.adapter == str(d / "adapter")
    ids = torch.tensor([tiny_tokenizer("The quick brown fox jumps")["input_ids"]])
    with torch.no_grad():
        want = pm(input_ids=ids).logits  # peft's own unmerged forward pass
        plain = base(input_ids=ids).logits
        got = lm.model(input_ids=ids).logits
    assert not torch.allclose(want, plain, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_t3_18_model_args_pretrained_and_peft(gpt2_with_adapter, tiny_tokenizer):
    d, _, pm = gpt2_with_adapter
    lm = load_model(None, device="cpu", model_args=f"pretrained={d / 'base'},peft={d / 'adapter'}")
    lm2 = load_model(str(d / "base"), device="cpu", model_args=f"peft={d / 'adapter'}")
    ids = torch.tensor([tiny_tokenizer("Hello world")["input_ids"]])
    with torch.no_grad():
        want = pm(input_ids=ids).logits
        torch.testing.assert_close(lm.model(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lm2.model(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4)
    assert lm.base == lm2.base == str(d / "base")
    with pytest.raises(LlmMiaError, match="name two models"):
        load_model(str(d / "base"), device="cpu", model_args=f"pretrained={d / 'adapter'}")


def test_t3_18_adapter_with_missing_base_is_one_line_error(gpt2_with_adapter, tmp_path):
    d, _, _ = gpt2_with_adapter
    import shutil

    shutil.copytree(d / "adapter", tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlmMiaError) as e:
        load_model(str(tmp_path / "a"), device="cpu")
    msg = str(e.value)
    assert "PEFT adapter for" in msg and "gone" in msg and "\n" not in msg


def test_pickle_only_checkpoint_refused_unless_allowed(tiny_tokenizer, tmp_path):
    m = make_tiny_gpt2(len(tiny_tokenizer), n_positions=32)
    m.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()  # a pickle-only checkpoint, as older tools write
    torch.save(m.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    assert not list((tmp_path / "m").glob("*.safetensors"))
    with pytest.raises(LlmMiaError, match="pickle"):
        load_model(str(tmp_path / "m"), device="cpu")
    lm = load_model(str(tmp_path / "m"), device="cpu", model_args="allow_pickle=true")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, m(input_ids=ids).logits)


def test_parse_model_args():
    assert parse_model_args("pretrained=a/b,peft=./x,revision=main,dtype=bfloat16,trust_remote_code=True") == {
        "pretrained": "a/b", "peft": "./x", "revision": "main", "dtype": "bfloat16", "trust_remote_code": True}
    with pytest.raises(LlmMiaError, match="did you mean 'pretrained'"):
        parse_model_args("pretrianed=a")
    with pytest.raises(LlmMiaError, match="true or false"):
        parse_model_args("trust_remote_code=maybe")
    with pytest.raises(LlmMiaError, match="key=value"):
        parse_model_args("pretrained")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """T2-09 guard: record and refuse every connection attempt; an empty hub cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    attempts = []

    def refuse(*a, **k):
        attempts.append(a)
        raise OSError("network disabled")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.chdir(tmp_path)
    return attempts


def test_t2_09_mistyped_folder_makes_no_network_attempt(no_network):
    for name in ("modle", "./modle", "runs/x/modle"):
        with pytest.raises(LlmMiaError, match="model folder not found"):
            load_model(name, device="cpu")
    assert no_network == []


def test_t2_09_uncached_hub_id_offline_makes_no_attempt(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LlmMiaError, match="not in the local Hugging Face cache.*hf download"):
        load_model("sshleifer/tiny-gpt2", device="cpu")
    assert no_network == []


def test_t2_09_uncached_hub_id_online_is_tried_once(no_network):
    with pytest.raises(LlmMiaError, match="to work offline"):
        load_model("sshleifer/tiny-gpt2", device="cpu")
    hosts = [a[0] for a in no_network if a and isinstance(a[0], str)]
    assert 1 <= len(no_network) <= 2 and set(hosts) <= {"huggingface.co"}


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_t3_17_sharded_checkpoint_digest_covers_every_shard(tiny_tokenizer, tmp_path):
    import hashlib

    from llm_mia.core.io import weights_sha256

    m = make_tiny_gpt2(400, n_positions=32, n_embd=32)
    m.save_pretrained(tmp_path / "whole")
    m.save_pretrained(tmp_path / "sharded", max_shard_size="60KB")
    tiny_tokenizer.save_pretrained(tmp_path / "sharded")
    files = sorted(p for p in (tmp_path / "sharded").iterdir() if p.name.endswith((".safetensors", ".index.json")))
    assert len(files) >= 3 and (tmp_path / "sharded" / "model.safetensors.index.json") in files
    listing = "".join(f"{_sha(p)}  {p.name}\n" for p in files)  # sha256sum's output, sorted by name
    assert weights_sha256(tmp_path / "sharded") == hashlib.sha256(listing.encode()).hexdigest()
    assert weights_sha256(tmp_path / "whole") == _sha(tmp_path / "whole" / "model.safetensors")
    lm = load_model(str(tmp_path / "sharded"), device="cpu")  # the sharded checkpoint loads
    assert lm.weights_sha256 == weights_sha256(tmp_path / "sharded")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, m(input_ids=ids).logits)
    # a changed shard changes the digest; a missing one is an error, never a silent partial digest
    shard = files[0] if files[0].suffix == ".safetensors" else files[1]
    before = weights_sha256(tmp_path / "sharded")
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x00")
    assert weights_sha256(tmp_path / "sharded") != before
    shard.unlink()
    with pytest.raises(LlmMiaError, match="missing"):
        weights_sha256(tmp_path / "sharded")
    assert weights_sha256(tmp_path / "nothing") is None and weights_sha256(None) is None


def test_adapter_digest_is_adapter_weights_plus_base(gpt2_with_adapter):
    import hashlib

    from llm_mia.core.io import weights_sha256

    d, _, _ = gpt2_with_adapter
    base = _sha(d / "base" / "model.safetensors")
    want = hashlib.sha256(f"{_sha(d / 'adapter' / 'adapter_model.safetensors')}  adapter_model.safetensors\n"
                          f"{base}  base\n".encode()).hexdigest()
    assert weights_sha256(d / "adapter") == want
    assert load_model(str(d / "adapter"), device="cpu").weights_sha256 == want


def test_t3_18_cli_scores_an_adapter_folder_and_checks_model_args(gpt2_with_adapter, tmp_path, capsys):
    from tests.conftest import run_cli

    d, _, _ = gpt2_with_adapter
    (tmp_path / "x.txt").write_text("The quick brown fox\nHello world\n", encoding="utf-8")
    code, out, err = run_cli(["score", "--model", d / "adapter", "--input", tmp_path / "x.txt",
                              "--output", tmp_path / "o.jsonl", "--signals", "loss"], capsys)
    assert code == 0, err
    code2, _, _ = run_cli(["score", "--model", d / "base", "--model-args", f"peft={d / 'adapter'}", "--input",
                           tmp_path / "x.txt", "--output", tmp_path / "o2.jsonl", "--signals", "loss"], capsys)
    assert code2 == 0
    a, b = (tmp_path / "o.jsonl").read_text(), (tmp_path / "o2.jsonl").read_text()
    assert [json.loads(x)["nll"] for x in a.splitlines()] == pytest.approx([json.loads(x)["nll"] for x in b.splitlines()])
    for cmd in (["score", "--input", tmp_path / "x.txt", "--output", tmp_path / "o3.jsonl"],
                ["exposure", "--secrets", tmp_path / "s.json", "--out", tmp_path / "e"],
                ["extract", "--out", tmp_path / "e"]):
        code, _, err = run_cli([*cmd, "--model", d / "base", "--model-args", "pretrianed=x"], capsys)
        assert code == 2 and "did you mean 'pretrained'" in err, (cmd, err)
    assert not (tmp_path / "o3.jsonl").exists()


def test_t3_17_and_bug_21a_audit_of_sharded_model_with_itself_as_reference(leak_models, tmp_path, capsys):
    """A sharded checkpoint gets its digest in the report; --reference equal to --model is warned
    about (stderr, observations) and its signals are left out of the rankings and the membership."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_mia.core.io import weights_sha256
    from tests.conftest import run_cli

    d, _ = leak_models
    AutoModelForCausalLM.from_pretrained(d / "leaky").save_pretrained(tmp_path / "m", max_shard_size="60KB")
    AutoTokenizer.from_pretrained(d / "leaky").save_pretrained(tmp_path / "m")
    assert len(list((tmp_path / "m").glob("*.safetensors"))) > 1
    code, _, err = run_cli(["audit", "--corpus", d / "corpus", "--model", tmp_path / "m", "--reference", tmp_path / "m",
                            "--out", tmp_path / "a", "--num-samples", 4, "--length", 12, "--candidates", 10,
                            "--exact-limit", 0, "--membership-docs", 6, "--strategy", "top-k"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    prov = rep["provenance"]
    assert prov["model_weights_sha256"] == weights_sha256(tmp_path / "m") is not None
    assert prov["reference_weights_sha256"] == prov["model_weights_sha256"] and prov["reference_excluded"]
    assert "warning: the reference model is the target" in err
    assert any(o.startswith("reference: the reference model is the target") for o in rep["observations"])
    assert "reference" not in rep["extraction"]["rankings"]
    assert not any(k.startswith("reference") for k in rep["membership"]["signals"])


def test_cached_hub_id_loads_from_the_cache_without_network(no_network, tiny_tokenizer, tmp_path):
    """A hub id already in the local cache (the hub's own layout: refs/main -> snapshots/<commit>)
    loads with zero connection attempts, offline flags unset."""
    from llm_mia.core.io import weights_sha256

    commit = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--acme--tiny"
    snap = repo / "snapshots" / commit
    m = make_tiny_gpt2(len(tiny_tokenizer), n_positions=32)
    m.save_pretrained(snap)
    tiny_tokenizer.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    lm = load_model("acme/tiny", device="cpu")
    assert no_network == [] and lm.folder == snap and lm.weights_sha256 == weights_sha256(snap) is not None


def test_b4_11_model_folder_without_tokenizer_is_refused(tiny_tokenizer, tmp_path, capsys):
    from tests.conftest import run_cli

    m = make_tiny_gpt2(len(tiny_tokenizer), n_positions=32)
    m.save_pretrained(tmp_path / "notok")  # config.json, model.safetensors, generation_config.json only
    assert not any(p.name.startswith(("tokenizer", "vocab")) for p in (tmp_path / "notok").iterdir())
    with pytest.raises(LlmMiaError, match=f"no tokenizer in {tmp_path / 'notok'}"):
        load_model(str(tmp_path / "notok"), device="cpu")
    (tmp_path / "one.txt").write_text("The quick brown fox jumps over the lazy dog.\n")
    capsys.readouterr()  # the shard writer's progress bar
    code, out, err = run_cli(["score", "--model", tmp_path / "notok", "--input", tmp_path / "one.txt",
                              "--output", tmp_path / "o.jsonl"], capsys)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and "no tokenizer in" in lines[0], (out, err)
    assert not (tmp_path / "o.jsonl").exists()
    # with the tokenizer files it loads and encodes text to tokens
    tiny_tokenizer.save_pretrained(tmp_path / "notok")
    assert len(load_model(str(tmp_path / "notok"), device="cpu").tokenizer("The quick")["input_ids"]) > 0


def test_vllm_parallel_model_args_are_checked():
    """tensor/pipeline/data parallel sizes parse to positive ints; the executor is one vLLM knows."""
    assert parse_model_args("tensor_parallel_size=2,pipeline_parallel_size=1,data_parallel_size=4,"
                            "distributed_executor_backend=ray") == {
        "tensor_parallel_size": 2, "pipeline_parallel_size": 1, "data_parallel_size": 4,
        "distributed_executor_backend": "ray"}
    for bad in ("tensor_parallel_size=0", "tensor_parallel_size=-2", "pipeline_parallel_size=two",
                "data_parallel_size=1.5"):
        with pytest.raises(LlmMiaError, match=r"must be a positive int, got") as e:
            parse_model_args(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(LlmMiaError, match="must be one of mp, ray, uni, external_launcher, got 'slurm'"):
        parse_model_args("distributed_executor_backend=slurm")
    with pytest.raises(LlmMiaError, match="did you mean 'tensor_parallel_size'"):
        parse_model_args("tensor_paralel_size=2")


def test_vllm_parallel_model_args_reach_vllm_llm(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """--model-args parallel settings are handed to vllm.LLM unchanged (a fake vLLM: the real one is
    not a dependency); without --engine vllm they are a one-line error before loading."""
    import sys
    import types

    import llm_mia.models.loading as L
    import llm_mia.models.vllm_engine as V

    tiny_model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    seen = {}

    class FakeLLM:
        def __init__(self, **kw):
            seen.update(kw)

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, __version__="fake"))
    monkeypatch.setitem(sys.modules, "llm_mia.models.vllm_logits", types.SimpleNamespace(TemperatureDecayProcessor=object))
    monkeypatch.setattr(L, "require_vllm", lambda: None)
    monkeypatch.setattr(V, "require_vllm", lambda: None)
    monkeypatch.setattr(V, "crosscheck", lambda *a, **k: {"skipped": "fake"})
    args = "tensor_parallel_size=2,pipeline_parallel_size=3,data_parallel_size=2,distributed_executor_backend=ray"
    lm = load_model(str(tmp_path / "m"), device="cpu", engine="vllm", model_args=args)
    V._LIVE.discard(lm.llm)
    assert (seen["tensor_parallel_size"], seen["pipeline_parallel_size"], seen["data_parallel_size"],
            seen["distributed_executor_backend"]) == (2, 3, 2, "ray")
    assert seen["model"] == str(tmp_path / "m")
    with pytest.raises(LlmMiaError, match=r"^--model-args tensor_parallel_size: vLLM settings, they need --engine vllm$"):
        load_model(str(tmp_path / "m"), device="cpu", model_args="tensor_parallel_size=2")
