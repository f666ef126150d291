"""`--engine hf|vllm` in the main environment (no vLLM here: its tests live in tests/with_vllm)."""

from __future__ import annotations

import importlib.util

import pytest

from llm_mia.core.errors import LlmMiaError
from llm_mia.models.loading import load_model
from tests.conftest import run_cli

_spec = importlib.util.find_spec("vllm")
no_vllm = pytest.mark.skipif(_spec is not None and _spec.origin is not None, reason="vLLM is installed here")


@no_vllm
@pytest.mark.parametrize("cmd", [["extract", "--out", "o"], ["score", "--input", "i.txt", "--output", "o.jsonl"],
                                 ["exposure", "--secrets", "s.json", "--out", "o"], ["audit", "--out", "o"]])
def test_engine_vllm_without_vllm_says_how_to_install(cmd, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([*cmd, "--model", "m", "--engine", "vllm"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: --engine vllm needs vLLM") and "pip install 'llm_mia[vllm]'" in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_unknown_engine_is_one_line_error(tmp_path, capsys):
    code, _, err = run_cli(["score", "--model", "m", "--input", "i.txt", "--output", tmp_path / "o.jsonl",
                            "--engine", "tpu"], capsys)
    assert code == 2 and err == "error: --engine must be hf or vllm, got 'tpu'\n"
    with pytest.raises(LlmMiaError, match="unknown engine 'tpu'"):
        load_model("m", engine="tpu")


def test_hf_engine_records_itself(tiny_model, tiny_tokenizer):
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    assert lm.engine == "hf" and lm.engine_info == {"engine": "hf"}
