"""The demo at toy scale: its folders, the full fine-tune audited against base/, the cached base
reused by the second run and pre-trained again when its cache entry is modified; the "demo" preset."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_mia.audit import demo
from llm_mia.audit.demo import DEMO_AUDIT, _use_cache, demo_audit_config, run_demo
from llm_mia.audit.pipeline import AuditConfig
from llm_mia.training.config import PRESETS

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
    report, err = _demo(out, capsys)
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
    assert demo_audit_config(None).num_samples == DEMO_AUDIT["num_samples"]
    cfg = demo_audit_config(AuditConfig(num_samples=7))  # a field set away from its default is kept
    assert (cfg.num_samples, cfg.n_candidates, cfg.discoverable_samples) == (7, 1000, 100)
    assert cfg.extract.num_samples == 7
    demo, small = PRESETS["demo"], PRESETS["small"]
    assert demo.batch_size == 8 and small.batch_size == 16
    assert (demo.n_layer, demo.n_embd, demo.lr, demo.n_ctx) == (small.n_layer, small.n_embd, small.lr, small.n_ctx)


@pytest.mark.parametrize("value", ["0", "off", "no"])
def test_cache_switch_values(monkeypatch, value):
    monkeypatch.setenv("LLM_MIA_DEMO_CACHE", value)
    assert _use_cache(None) is False and _use_cache(True) is True
