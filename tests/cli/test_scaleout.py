"""``llm-mia score`` under ``accelerate launch`` with 2 real processes (gloo on the CPU) gives the rows of one process."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_mia.membership.scoring import score_file
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]

needs_launch = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None
                                or not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs accelerate and torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_launch
def test_score_two_processes_equal_one(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "quick", "brown", "fox", "return", "list", "items", "world"]
    texts = [" ".join(words[int(j)] for j in torch.randint(0, len(words), (int(n),), generator=g))
             for n in torch.randint(1, 25, (13,), generator=g)]  # 13: the processes get 7 and 6
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": f"t{k}", "text": t, "label": k % 2}) + "\n"
                                                  for k, t in enumerate(texts)))
    one = score_file(str(tmp_path / "model"), tmp_path / "texts.jsonl", tmp_path / "one.jsonl",
                     metrics_path=tmp_path / "one.json", progress=False)
    assert one["num_processes"] == 1

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "llm_mia.cli.root", "score",
           "--model", str(tmp_path / "model"), "--input", str(tmp_path / "texts.jsonl"),
           "--output", str(tmp_path / "two.jsonl"), "--metrics", str(tmp_path / "two.json")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("scored 13 texts by 2 processes") == 1  # process 0 reports, process 1 says nothing

    a = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert [r["id"] for r in b] == [f"t{k}" for k in range(13)]
    for ra, rb in zip(a, b, strict=True):
        assert ra["n_scored_tokens"] == rb["n_scored_tokens"] and ra["flags"] == rb["flags"]
        assert ra["scores"].keys() == rb["scores"].keys()
        for k, v in ra["scores"].items():
            assert rb["scores"][k] == pytest.approx(v, rel=1e-5, abs=1e-6, nan_ok=True), k
    metrics = json.loads((tmp_path / "two.json").read_text())
    assert metrics["num_processes"] == 2
    assert json.loads((tmp_path / "one.json").read_text())["num_processes"] == 1


def test_audit_under_several_processes_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, _, err = run_cli(["audit", "--model", tmp_path / "m", "--corpus", tmp_path / "c", "--out", tmp_path / "o"],
                           capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "audit runs in one process" in err
    assert not (tmp_path / "o").exists()
