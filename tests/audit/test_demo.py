"""The demo at toy scale: its folders, the full fine-tune audited against base/, the cached base
reused by the second run and pre-trained again when its cache entry is modified; the "demo" preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from llm_mia.audit import demo
from llm_mia.audit.demo import DEMO_AUDIT, _use_cache, demo_audit_config, demo_gate, run_demo
from llm_mia.audit.pipeline import AuditConfig
from llm_mia.core.errors import LlmMiaError
from llm_mia.training.config import PRESETS
from tests.conftest import run_cli

POLICY = Path(__file__).resolve().parents[2] / "examples" / "policy.toml"

SMALL = AuditConfig(num_samples=4, n_candidates=8, discoverable_samples=2, discoverable_prefix=8,
                    strategies=("top-k",), max_new_tokens=12, membership_docs=8, exact_limit=10, progress=False)


def _demo(out: Path, capsys, **kw) -> tuple[dict, str]:
    report = run_demo(out, preset="tiny", cfg=SMALL, max_steps=4, max_chars=20_000, **kw)
    return report, capsys.readouterr().err


def test_demo_toy_scale_reuses_its_cached_base(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLM_MIA_DEMO_CACHE", raising=False)
    monkeypatch.setattr(demo, "DEMO_PUBLIC_CHARS", 20_000)
    out = tmp_path / "demo"
    report, err = _demo(out, capsys, gate_policy=POLICY)
    for name in ("corpus", "public", "base", "model"):
        assert (out / name).is_dir(), name
    assert not (out / "adapter").exists()
    assert (out / "model" / "model.safetensors").exists()  # a full model, not a PEFT adapter
    assert not (out / "model" / "adapter_config.json").exists()
    for key in ("extraction", "secrets", "exposure", "membership", "discoverable", "verdict", "provenance"):
        assert key in report, key
    prov = report["provenance"]
    assert prov["reference"] == str(out / "base") and prov["reference_source"] == "--reference"
    assert prov["demo_base"] == "trained"
    assert {"corpus_s", "train_base_s", "train_model_s", "audit_s", "demo_total_s"} <= set(prov["timings"])
    assert "base: pre-training 10 steps" in err and "demo: done in" in err
    assert (out / "report.json").exists()
    # the demo prints the gate's verdict, its exit code and the command; `llm-mia gate` agrees
    command = f"llm-mia gate {out / 'report.json'} --policy {POLICY}"
    assert f"gate: reproduce with `{command}`" in err
    code, gate_out, _ = run_cli(["gate", out / "report.json", "--policy", POLICY], capsys)
    verdict = next(ln for ln in gate_out.splitlines() if ln.split(":")[0] in ("PASS", "FAIL", "INCONCLUSIVE", "ERROR"))
    assert f"gate: {verdict} (exit {code})" in err
    entries = list((tmp_path / "cache" / "llm_mia").glob("demo-base-*"))
    assert len(entries) == 1 and (entries[0] / "demo-cache.json").exists()

    report2, err2 = _demo(tmp_path / "demo2", capsys)
    assert report2["provenance"]["demo_base"] == "reused"
    assert f"base: reused from {entries[0]}" in err2
    assert (tmp_path / "demo2" / "base" / "model.safetensors").read_bytes() == \
        (out / "base" / "model.safetensors").read_bytes()

    base = {"preset": "tiny", "steps": 10, "seed": 0, "progress": True}
    (entries[0] / "model.safetensors").write_bytes(b"corrupt")  # a modified entry is never trusted
    assert demo._base(out, cache=True, **base) == "trained"
    assert "is incomplete or modified" in capsys.readouterr().err
    assert demo._base(out, cache=True, **base) == "reused"  # ... and is replaced by a good one
    (entries[0] / "recipe.json").unlink()
    assert demo._base(out, cache=True, **base) == "trained"
    assert demo._base(out, cache=False, **base) == "trained"


def test_demo_audit_config_and_preset():
    assert demo_audit_config(None).num_samples == DEMO_AUDIT["num_samples"] == 200
    cfg = demo_audit_config(AuditConfig(num_samples=7))  # a given cfg without sizes is kept whole
    assert (cfg.num_samples, cfg.n_candidates, cfg.discoverable_samples) == (7, 2000, 200)
    # the command line's sizes: a value the user set is kept, even when it equals AuditConfig's default
    cfg = demo_audit_config(AuditConfig(seed=3), {"num_samples": 500, "n_candidates": None,
                                                  "discoverable_samples": None})
    assert (cfg.num_samples, cfg.n_candidates, cfg.discoverable_samples, cfg.seed) == (500, 1000, 100, 3)
    assert cfg.extract.num_samples == 500
    with pytest.raises(LlmMiaError, match="unknown setting"):
        demo_audit_config(None, {"num_sample": 3})
    demo, small = PRESETS["demo"], PRESETS["small"]
    assert demo.batch_size == 8 and small.batch_size == 16
    assert (demo.n_layer, demo.n_embd, demo.lr, demo.n_ctx) == (small.n_layer, small.n_embd, small.lr, small.n_ctx)


@pytest.mark.parametrize("value", ["0", "off", "no"])
def test_cache_switch_values(monkeypatch, value):
    monkeypatch.setenv("LLM_MIA_DEMO_CACHE", value)
    assert _use_cache(None) is False and _use_cache(True) is True


def test_demo_command_passes_only_what_the_user_set(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake(out, *, cfg, sizes, **kw):
        seen["cfg"] = demo_audit_config(cfg, sizes)
        raise LlmMiaError("stop here")

    monkeypatch.setattr(demo, "run_demo", fake)
    code, _, err = run_cli(["demo", "--out", tmp_path / "d", "--num-samples", "500", "--seed", "4"], capsys)
    assert code == 2 and "stop here" in err
    cfg = seen["cfg"]  # 500 is AuditConfig's default, but the user typed it: not the demo's 200
    assert (cfg.num_samples, cfg.n_candidates, cfg.discoverable_samples, cfg.seed) == (500, 1000, 100, 4)
    run_cli(["demo", "--out", tmp_path / "e", "--candidates", "2000", "--discoverable", "0"], capsys)
    assert (seen["cfg"].num_samples, seen["cfg"].n_candidates, seen["cfg"].discoverable_samples) == (200, 2000, 0)


def test_demo_gate_without_policy_or_report(tmp_path):
    line, code, command = demo_gate(tmp_path, tmp_path / "none.toml")
    assert code is None and "no policy file" in line
    assert command == f"llm-mia gate {tmp_path / 'report.json'} --policy {tmp_path / 'none.toml'}"
    line, code, _ = demo_gate(tmp_path, POLICY)  # no report.json: an error line and exit 2, nothing raised
    assert code == 2 and line.startswith("ERROR: ")


def test_defended_twin_side_by_side(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "DEMO_PUBLIC_CHARS", 20_000)
    out = tmp_path / "demo"
    _, err = _demo(out, capsys, defended=True, gate_policy=None)
    assert (out / "model-dedup" / "model.safetensors").exists()
    recipe = json.loads((out / "model-dedup" / "recipe.json").read_text())
    assert recipe["defense"] == "dedup" and recipe["base"] == str(out / "base")
    # every planted secret inserted r >= 2 times repeats a span of 30+ characters: dedup drops repeats
    assert json.loads((out / "model" / "recipe.json").read_text()).get("dedup") is None
    assert recipe["dedup"]["spans_removed"] > 0 and recipe["dedup"]["chars_removed"] > 0
    cmp = json.loads((out / "compare" / "compare.json").read_text())
    assert [r["name"] for r in cmp["rows"]] == ["undefended", "dedup"]
    assert [r["defense"] for r in cmp["rows"]] == ["none", "dedup"]
    for r in cmp["rows"]:
        assert r["heldout_perplexity"] > 1 and (out / "compare" / r["name"] / "report.json").exists()
    md = (out / "compare.md").read_text()
    assert md == (out / "compare" / "compare.md").read_text()
    assert "| undefended | none |" in md and "| dedup | dedup |" in md
    assert "defended: undefended: held-out perplexity" in err and "defended: dedup: held-out perplexity" in err


def test_stage_estimates_and_work_left():
    cfg = AuditConfig(**DEMO_AUDIT)
    # measured rates (s per unit, one idle core): base step 104/300, fine-tune step 173/1000, audit 148
    etas = demo.stage_etas(preset="small", base_steps=300, ft_steps=1000, cfg=cfg, base_cached=False, defended=True)
    assert list(etas) == ["base", "fine-tune", "audit", "defended"]
    assert [round(v) for v in etas.values()] == [104, 173, 148, 173 + 2 * 148]
    assert demo._eta_text(etas, "audit") == ", expected ~148 s, ~617 s left in all (idle core)"
    assert demo._eta_text(etas, "fine-tune") == ", expected ~173 s, ~790 s left in all (idle core)"
    cached = demo.stage_etas(preset="small", base_steps=300, ft_steps=500, cfg=dataclasses.replace(cfg, num_samples=400),
                             base_cached=True, defended=False)
    # the audit scales with the mean of the size ratios: (400/200 + 1 + 1) / 3 = 4/3
    assert cached == pytest.approx({"base": 0.0, "fine-tune": 86.5, "audit": 148 * 4 / 3})
    assert demo.stage_etas(preset="tiny", base_steps=1, ft_steps=1, cfg=cfg, base_cached=False, defended=False) is None
    assert demo._eta_text(None, "audit") == ""
