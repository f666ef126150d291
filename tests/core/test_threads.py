"""The CPU thread policy (llm_mia/core/threads.py) and the CLI's --threads option."""

import os

import pytest
import torch

from llm_mia.core.errors import LlmMiaError
from llm_mia.core.threads import DEFAULT_THREADS, apply_threads, resolve_threads


def test_env_set_is_respected():
    assert resolve_threads(env={"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    assert resolve_threads(env={"OMP_NUM_THREADS": " 2,1 "}) == (2, "OMP_NUM_THREADS")  # OpenMP nesting list
    assert resolve_threads(env={"MKL_NUM_THREADS": "4"}) == (4, "MKL_NUM_THREADS")
    assert resolve_threads(env={"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "5"}) == (2, "OMP_NUM_THREADS")


def test_unset_gives_the_measured_default():
    assert DEFAULT_THREADS == 1
    assert resolve_threads(env={}) == (1, "default")
    assert resolve_threads(env={"OMP_NUM_THREADS": ""}) == (1, "default")  # empty = unset


def test_cli_value_wins_over_env():
    assert resolve_threads(2, env={"OMP_NUM_THREADS": "1"}) == (2, "--threads")


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", ","])
def test_invalid_env_value_is_a_one_line_error(value):
    with pytest.raises(LlmMiaError, match="OMP_NUM_THREADS must be a positive integer") as e:
        resolve_threads(env={"OMP_NUM_THREADS": value})
    assert "\n" not in str(e.value) and f"got '{value}'" in str(e.value)


@pytest.mark.parametrize("value", [0, -2, True, 1.0])
def test_invalid_cli_value(value):
    with pytest.raises(LlmMiaError, match="--threads must be a positive integer"):
        resolve_threads(value, env={})


def test_apply_sets_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    try:
        assert apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert os.environ["OMP_NUM_THREADS"] == "2"  # exported: vLLM's CPU worker and children follow it
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert apply_threads() == DEFAULT_THREADS and torch.get_num_threads() == DEFAULT_THREADS
        assert os.environ["OMP_NUM_THREADS"] == str(DEFAULT_THREADS)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_and_bad_env(monkeypatch, capsys):
    from conftest import run_cli

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        code, _, err = run_cli(["--threads", "2", "corpus", "build", "--help"], capsys)
        assert code == 0, err
        assert torch.get_num_threads() == 2
        code, _, err = run_cli(["--threads", "0", "corpus", "build", "--out", "x"], capsys)
        assert code == 2 and "--threads" in err
        monkeypatch.setenv("OMP_NUM_THREADS", "many")
        code, _, err = run_cli(["corpus", "build", "--out", "x"], capsys)
        assert code == 2
        assert err.strip() == "error: OMP_NUM_THREADS must be a positive integer (the number of CPU threads), got 'many'"
    finally:
        torch.set_num_threads(before)
