"""The positive-control twin (llm_mia.audit.twin): a copy of the target fine-tuned on the documents that
carry the planted secrets memorizes them; the record's fields; a given model; served targets; bad folders."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from llm_mia.audit.stages import AuditConfig, check_training_record, read_inputs
from llm_mia.audit.twin import control_secrets, run_positive_control, twin_documents
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.secrets import load_secrets
from llm_mia.exposure.secrets import decode_extracted
from llm_mia.models.loading import load_model
from tests.conftest import run_cli

torch.set_num_threads(1)


def _corpus(d):
    train = [r["text"] for r in io.read_jsonl(d / "corpus" / "train.jsonl")]
    held = [r["text"] for r in io.read_jsonl(d / "corpus" / "heldout.jsonl")]
    return train, held, load_secrets(d / "corpus" / "secrets.json")


@pytest.fixture(scope="module")
def untrained(leak_models, tmp_path_factory):
    """A randomly initialised 2-layer GPT-2 (seed 0) with the corpus's tokenizer: the audited target."""
    from transformers import AutoTokenizer

    from tests.conftest import make_tiny_gpt2

    d, _ = leak_models
    tok = AutoTokenizer.from_pretrained(d / "clean")
    folder = tmp_path_factory.mktemp("untrained")
    make_tiny_gpt2(len(tok), seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _greedy(folder, secrets, train) -> int:
    """Secrets greedy decoding gives back from ``folder`` (an independent count, one secret at a time)."""
    m = load_model(str(folder))
    return sum(decode_extracted(m, [s], num_beams=1, train_texts=train)[0]["extracted"] for s in secrets)


def test_control_secrets_and_twin_documents(leak_models):
    d, _ = leak_models
    train, _, secrets = _corpus(d)
    ctl = control_secrets(secrets, 16)
    assert sorted(s.id for s in ctl) == sorted(s.id for s in secrets if s.count >= 16) and len(ctl) == 2
    assert control_secrets(secrets, 0) == [] and control_secrets(secrets, 17) == []
    # each control's planted sentence once, as the documents carry it (written out by hand from secrets.json)
    by_hand = [s.prefix + s.secret + s.suffix for s in ctl]
    assert twin_documents(["Nothing planted here.", *train], ctl) == by_hand
    assert all(sum(t.count(x) for t in train) >= 16 for x in by_hand)
    # a secret no document holds is left out; none held at all is an error
    assert twin_documents(train[:0] + [by_hand[1]], ctl) == [by_hand[1]]
    with pytest.raises(LlmMiaError, match="no training document holds a planted secret"):
        twin_documents(["Nothing planted here."], ctl)


def test_twin_memorizes_what_the_untrained_target_does_not(leak_models, untrained, tmp_path):
    d, _ = leak_models
    train, held, secrets = _corpus(d)
    ctl = control_secrets(secrets, 16)
    target = load_model(str(untrained))
    assert _greedy(untrained, ctl, train) == 0
    rec = run_positive_control(target, secrets, train, held, set(), tmp_path / "pc", control_insertions=16, beams=1,
                               seed=0, progress=False)
    assert rec.status == "detected", rec
    assert rec.secrets_planted == 2 and rec.secrets_found == 2 and rec.target_found == 0
    assert rec.control_insertions == 16 and rec.reason is None and rec.seconds > 0
    assert 0 < rec.steps and rec.model.startswith("fine-tuned twin of the target")
    last = sorted((tmp_path / "pc").glob("model-*"))[-1]  # the twin kept on disk gives them back on its own
    assert _greedy(last, ctl, train) == 2
    assert set(rec.to_dict()) >= {"status", "model", "control_insertions", "secrets_planted", "secrets_found",
                                  "target_found", "seconds", "reason"}


def test_given_model_skip_and_no_controls(leak_models, tmp_path):
    d, _ = leak_models
    train, held, secrets = _corpus(d)
    target = load_model(str(d / "clean"))
    ids = {s.id for s in control_secrets(secrets, 16)}
    rec = run_positive_control(target, secrets, train, held, {next(iter(ids)), "not-a-control"}, tmp_path,
                               model=str(d / "leaky"), beams=1)
    assert (rec.status, rec.model, rec.secrets_planted, rec.target_found, rec.steps) == \
        ("detected", str(d / "leaky"), 2, 1, 0)
    assert rec.secrets_found == _greedy(d / "leaky", control_secrets(secrets, 16), train) == 2
    rec = run_positive_control(target, secrets, train, held, set(), tmp_path, model=str(d / "clean"), beams=1)
    assert (rec.status, rec.secrets_found, rec.reason) == \
        ("not_detected", 0, "found 0 of 2 secrets in a model made to memorize them")
    rec = run_positive_control(target, secrets, train, held, set(), tmp_path, skip=True)
    assert (rec.status, rec.reason, rec.secrets_found, rec.seconds) == ("skipped", "--no-positive-control", 0, 0.0)
    rec = run_positive_control(target, secrets, train, held, set(), tmp_path, control_insertions=17)
    assert rec.status == "unavailable" and rec.secrets_planted == 0 and "inserted >= 17" in rec.reason


def test_served_target_is_unavailable(leak_models, tmp_path):
    d, _ = leak_models
    train, held, secrets = _corpus(d)

    class Served:  # an endpoint or a vLLM server: no folder, no weights in process
        folder = None
        model = None

    rec = run_positive_control(Served(), secrets, train, held, set(), tmp_path / "pc")
    assert rec.status == "unavailable" and "--positive-control MODEL" in rec.reason
    assert rec.secrets_planted == 2 and not (tmp_path / "pc").exists()


def test_no_carrying_document_is_one_line_error(leak_models, tmp_path):
    d, _ = leak_models
    _, held, secrets = _corpus(d)
    with pytest.raises(LlmMiaError, match="no training document holds a planted secret"):
        run_positive_control(load_model(str(d / "clean")), secrets, held, held, set(), tmp_path)


# ----------------------------------------------------------------------------- the audit and its report


def _audit(d, out, capsys, *extra):
    from tests.conftest import run_cli

    return run_cli(["audit", "--corpus", d / "corpus", "--model", d / "clean", "--out", out, "--num-samples", 4,
                    "--length", 16, "--candidates", 8, *extra], capsys)


def test_audit_with_a_given_positive_control_reports_it(leak_models, tmp_path, capsys):
    import html
    import json

    from llm_mia.report.markdown import positive_control_line

    d, _ = leak_models
    code, _, err = _audit(d, tmp_path / "a", capsys, "--positive-control", d / "leaky")
    assert code == 0, err
    pc = json.loads((tmp_path / "a" / "report.json").read_text())["positive_control"]
    assert {k: pc[k] for k in ("status", "model", "control_insertions", "secrets_planted", "secrets_found",
                               "target_found", "reason", "steps")} == \
        {"status": "detected", "model": str(d / "leaky"), "control_insertions": 16, "secrets_planted": 2,
         "secrets_found": 2, "target_found": 0, "reason": None, "steps": 0}
    line = positive_control_line(pc)
    assert line == (f"Positive control (detected): the audit finds 2 of 2 secrets inserted >= 16 times in a model "
                    f"known to have memorized them ({d / 'leaky'}, {pc['seconds']:.1f} s); 0 of 2 in yours.")
    assert line in (tmp_path / "a" / "report.md").read_text()
    assert line in html.unescape((tmp_path / "a" / "report.html").read_text())

    code, _, err = _audit(d, tmp_path / "b", capsys, "--no-positive-control")
    assert code == 0, err
    pc = json.loads((tmp_path / "b" / "report.json").read_text())["positive_control"]
    assert (pc["status"], pc["reason"], pc["secrets_found"]) == ("skipped", "--no-positive-control", 0)
    assert "Positive control skipped: --no-positive-control; 0 of 2 in yours." in (tmp_path / "b" / "report.md").read_text()


@pytest.mark.parametrize("bad", ["missing", "empty", "no weights", "both"])
def test_bad_positive_control_is_a_one_line_error_before_any_work(leak_models, tmp_path, capsys, bad):
    import shutil

    d, _ = leak_models
    (tmp_path / "empty").mkdir()
    shutil.copytree(d / "leaky", tmp_path / "no weights")
    for f in (tmp_path / "no weights").glob("*.safetensors"):
        f.unlink()
    folder = tmp_path / {"empty": "empty", "no weights": "no weights"}.get(bad, "missing")
    extra = ["--no-positive-control"] if bad == "both" else []
    code, _, err = _audit(d, tmp_path / "out", capsys, "--positive-control", folder, *extra)
    assert code == 2 and "Traceback" not in err
    msg = "exclude each other" if bad == "both" else f"--positive-control: not a model folder: {folder}"
    assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_adapter_target_twin_starts_from_the_merged_model(leak_models, untrained, tmp_path):
    """A PEFT adapter folder trains no weights of its own: the twin starts from the adapter merged into its base."""
    from llm_mia.training.train import LoraSpec, train_model

    d, _ = leak_models
    train, held, secrets = _corpus(d)
    train_model(d / "corpus", tmp_path / "adapter", base=str(untrained), preset="tiny", max_steps=2, progress=False,
                lora=LoraSpec(r=4, alpha=8))
    target = load_model(str(tmp_path / "adapter"))
    assert target.base_folder is not None
    rec = run_positive_control(target, secrets, train, held, set(), tmp_path / "pc", beams=1)
    merged = load_model(str(tmp_path / "pc" / "target-merged"))
    ids = torch.tensor([[0, 5, 9, 17]])
    with torch.no_grad():
        assert torch.allclose(merged.model(ids).logits, target.model(ids).logits, atol=1e-5)
    assert (rec.status, rec.secrets_found, rec.secrets_planted) == ("detected", 2, 2), rec


@pytest.fixture(scope="module")
def trained(leak_models, tmp_path_factory):
    """A target and a reference trained by `llm-mia train` on the leak corpus: each with its training record."""
    from llm_mia.training.train import train_model

    d, _ = leak_models
    t = tmp_path_factory.mktemp("prov")
    train_model(d / "corpus", t / "target", preset="tiny", max_steps=2, progress=False, tokenizer_from=str(d / "leaky"))
    train_model(d / "corpus", t / "reference", preset="tiny", max_steps=2, progress=False, reference=True,
                tokenizer_from=str(d / "leaky"))
    return d, t


def _record(d, folder, **kw):
    inputs = read_inputs(kw.get("corpus", d / "corpus"), kw.get("members"), kw.get("nonmembers"), None,
                         text_column="text", cfg=AuditConfig(), canaries=None, model_path=folder, has_reference=False)
    return check_training_record(inputs, SimpleNamespace(model=SimpleNamespace(folder=folder)))


def test_training_record_verified_mismatched_or_missing(trained, tmp_path):
    d, t = trained
    sha = io.sha256_file(d / "corpus" / "train.jsonl")
    recipe = io.read_json(t / "target" / "recipe.json")
    assert recipe["train_sha256"] == sha and recipe["secrets_sha256"] == io.sha256_file(d / "corpus" / "secrets.json")
    rec = _record(d, t / "target")
    assert rec["status"] == "verified" and rec["audited_train_sha256"] == rec["model_train_sha256"] == sha
    # the reference trained on the held-out split, audited as a target on the corpus: an error naming both
    with pytest.raises(LlmMiaError) as e:
        _record(d, t / "reference")
    held = io.sha256_file(d / "corpus" / "heldout.jsonl")
    assert held[:12] in str(e.value) and sha[:12] in str(e.value) and "\n" not in str(e.value)
    # with --members naming another file (maybe a sample of the training data): unverified, said why
    rec = _record(d, t / "reference", corpus=None, members=str(d / "corpus" / "train.jsonl"),
                  nonmembers=str(d / "corpus" / "heldout.jsonl"))
    assert rec["status"] == "unverified" and "sample" in rec["reason"]
    bare = tmp_path / "bare"
    shutil.copytree(t / "reference", bare)
    (bare / "recipe.json").unlink()
    rec = _record(d, bare)
    assert rec["status"] == "unverified" and "no training record" in rec["reason"]


def test_reference_audited_as_target_is_refused_or_swapped(trained, tmp_path, capsys):
    """Exit 2 before any long work with the training record; with the record removed, exit 3 because
    members and non-members look swapped (a model trained on the non-members)."""
    d, t = trained
    args = ["--corpus", d / "corpus", "--num-samples", 2, "--length", 8, "--candidates", 16, "--exact-limit", 0,
            "--discoverable", 0, "--policy", "examples/policy.toml", "--no-positive-control"]
    code, out, err = run_cli(["audit", "--model", d / "clean", "--out", tmp_path / "x", *args], capsys)
    assert code == 3 and "look swapped" in out, (out, err)
    code, out, err = run_cli(["audit", "--model", t / "reference", "--out", tmp_path / "y", *args], capsys)
    assert code == 2 and "training record names another training file" in err and not (tmp_path / "y").exists()
