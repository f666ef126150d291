"""The positive-control twin (a copy of the target made to memorize the planted secrets, run through the
same extraction) and the training record the audit verifies."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from llm_mia.audit.stages import AuditConfig, check_training_record, read_inputs
from llm_mia.audit.twin import carrying_documents, control_secrets, run_positive_control
from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.data.secrets import load_secrets
from llm_mia.models.loading import load_model
from tests.conftest import run_cli


def _corpus(d):
    secrets = load_secrets(d / "corpus" / "secrets.json")
    train = [r["text"] for r in io.read_jsonl(d / "corpus" / "train.jsonl")]
    held = [r["text"] for r in io.read_jsonl(d / "corpus" / "heldout.jsonl")]
    return secrets, train, held


def test_twin_of_a_model_that_never_saw_the_secrets_memorizes_them(leak_models, tmp_path):
    """The clean model (trained on the held-out split) gives back no planted secret; its twin, fine-tuned
    on the documents carrying the 16x secrets, gives back all of them: "detected", target_found 0."""
    d, _ = leak_models
    secrets, train, held = _corpus(d)
    ctl = control_secrets(secrets, 16)
    assert ctl and all(s.count >= 16 for s in ctl) and len(ctl) == sum(s.count >= 16 for s in secrets)
    docs = carrying_documents(train, ctl)
    assert docs and all(any(s.text in t for s in ctl) for t in docs)
    target = load_model(str(d / "clean"))
    rec = run_positive_control(target, secrets, train, held, set(), tmp_path / "pc", beams=1, seed=0)
    assert (rec.status, rec.secrets_planted, rec.secrets_found, rec.target_found) == ("detected", len(ctl), len(ctl), 0)
    assert rec.steps >= 30 and rec.seconds > 0 and "fine-tuned twin" in rec.model and rec.reason is None
    assert json.loads(json.dumps(rec.to_dict()))["status"] == "detected"


def test_positive_control_given_skipped_or_unavailable(leak_models, tmp_path):
    d, _ = leak_models
    secrets, train, held = _corpus(d)
    clean = load_model(str(d / "clean"))
    n = len(control_secrets(secrets, 16))
    # a given model known to have memorized them (the leaky one): used as is, no training
    rec = run_positive_control(clean, secrets, train, held, set(), tmp_path / "a", beams=1, model=str(d / "leaky"))
    assert (rec.status, rec.secrets_found, rec.steps, rec.model) == ("detected", n, 0, str(d / "leaky"))
    # a given model that never saw them: the audit could not have seen a leak
    rec = run_positive_control(clean, secrets, train, held, set(), tmp_path / "b", beams=1, model=str(d / "clean"))
    assert rec.status == "not_detected" and rec.secrets_found == 0 and f"found 0 of {n}" in rec.reason
    rec = run_positive_control(clean, secrets, train, held, set(), tmp_path / "c", skip=True)
    assert rec.status == "skipped" and not (tmp_path / "c").exists()
    served = SimpleNamespace(model=None, folder=None)
    rec = run_positive_control(served, secrets, train, held, set(), tmp_path / "d")
    assert rec.status == "unavailable" and "--positive-control MODEL" in rec.reason
    rec = run_positive_control(clean, secrets, train, held, set(), tmp_path / "e", control_insertions=64)
    assert rec.status == "unavailable" and rec.secrets_planted == 0 and ">= 64 times" in rec.reason


def test_positive_control_options_are_checked_before_work(leak_models, tmp_path, capsys):
    d, _ = leak_models
    base = ["audit", "--corpus", d / "corpus", "--model", d / "leaky", "--out", tmp_path / "o"]
    code, _, err = run_cli(base + ["--positive-control", tmp_path / "nope"], capsys)
    assert code == 2 and "--positive-control: not a model folder" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(base + ["--positive-control", d / "leaky", "--no-positive-control"], capsys)
    assert code == 2 and "exclude each other" in err
    assert not (tmp_path / "o").exists()


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
