"""Shadow training (llm_mia.membership.shadow) on tiny models: the folder, resuming after a kill, the bad-input
errors (exit 2 before any training or scoring), shadow_training_features, and the attacks in
`score --shadow` and `audit --shadow`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_mia.core import io
from llm_mia.core.errors import LlmMiaError
from llm_mia.membership.records import SHADOW_CALIBRATED
from llm_mia.membership.shadow import (
    MEMBERSHIP_FILE,
    load_shadows,
    shadow_training_features,
    train_shadows,
)
from llm_mia.models.tokenizer import train_bpe_tokenizer
from tests.conftest import distinct_docs, make_tiny_gpt2, run_cli

SHADOW_SIGNALS = {"lira_online", "lira_offline", "lira_token_online", "lira_token_offline", "rmia_online", "rmia_offline",
                  "shokri"}


def _target(folder, texts, seed=0):
    tok = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    make_tiny_gpt2(len(tok), seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def shadow_case(tmp_path_factory):
    """A target folder, a population of 16 documents and 4 shadow models (tiny preset, 20 steps)."""
    d = tmp_path_factory.mktemp("shadow")
    docs = distinct_docs(16, sentences=2, seed=5)
    _target(d / "target", docs)
    io.write_jsonl(d / "pop.jsonl", [{"text": t} for t in docs])
    sh = train_shadows(d / "pop.jsonl", d / "sh", n_models=4, tokenizer_from=str(d / "target"), max_steps=20,
                       progress=False)
    return d, docs, sh


class _Spy:
    def __init__(self, fail_at=None):
        from llm_mia.training.train import train_model

        self.calls, self.fail_at, self.real = [], fail_at, train_model

    def __call__(self, corpus, out, **kw):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt  # killed while training this model
        self.calls.append(out.name)
        return self.real(corpus, out, **kw)


def test_training_resumes_without_retraining_finished_models(tmp_path):
    docs = distinct_docs(12, sentences=1, seed=2)
    _target(tmp_path / "target", docs)
    io.write_jsonl(tmp_path / "pop.jsonl", [{"text": t} for t in docs + docs[:2]])  # duplicates kept once
    kw = dict(n_models=3, tokenizer_from=str(tmp_path / "target"), max_steps=2, progress=False, seed=1)
    first = _Spy(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=first, **kw)
    assert first.calls == ["model-00", "model-01"]
    meta = io.read_json(tmp_path / "sh" / MEMBERSHIP_FILE)
    assert meta["population"]["n_texts"] == 12 and meta["n_models"] == 3 and meta["seed"] == 1
    assert len(meta["tokenizer_sha256"]) == 64 and [m["name"] for m in meta["models"]] == ["model-00", "model-01", "model-02"]
    with pytest.raises(LlmMiaError, match="1 of 3 shadow models missing"):
        load_shadows(tmp_path / "sh")
    mtimes = {k: (tmp_path / "sh" / k / "recipe.json").stat().st_mtime_ns for k in ("model-00", "model-01")}
    again = _Spy()
    sh = train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=again, **kw)
    assert again.calls == ["model-02"]
    assert {k: (tmp_path / "sh" / k / "recipe.json").stat().st_mtime_ns for k in mtimes} == mtimes
    assert not list((tmp_path / "sh").glob(".data-*"))  # the per-model corpora are removed
    # each model trained on exactly the texts membership.json lists (the train file's digest in its recipe)
    pop = [r["text"] for r in io.read_jsonl(tmp_path / "sh" / "population.jsonl")]
    assert pop == docs
    for k, m in enumerate(meta["models"]):
        assert sh.keep[k].tolist() == [i in set(m["in"]) for i in range(len(pop))]
        io.write_jsonl(tmp_path / "expect.jsonl", [{"text": pop[i]} for i in m["in"]])
        recipe = io.read_json(tmp_path / "sh" / m["name"] / "recipe.json")
        assert recipe["train_sha256"] == io.sha256_file(tmp_path / "expect.jsonl") and recipe["seed"] == 1 + k
    # a finished folder trains nothing
    third = _Spy()
    train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=third, **kw)
    assert third.calls == []
    # another run in the same folder is refused, before any training
    with pytest.raises(LlmMiaError, match="another run"):
        train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=third, **dict(kw, seed=2))
    assert third.calls == []


@pytest.mark.parametrize("case", ["small_population", "no_tokenizer", "both_tokenizers", "not_ours"])
def test_bad_training_input_is_one_line_before_training(case, tmp_path):
    docs = distinct_docs(12, sentences=1)
    _target(tmp_path / "target", docs)
    io.write_jsonl(tmp_path / "pop.jsonl", [{"text": t} for t in docs])
    kw = dict(n_models=4, tokenizer_from=str(tmp_path / "target"), max_steps=2, progress=False)
    if case == "small_population":
        kw["n_models"], match = 8, "12 distinct texts; 8 shadow models need at least 16"
    elif case == "no_tokenizer":
        kw["tokenizer_from"], match = None, "exactly one of --tokenizer-from"
    elif case == "both_tokenizers":
        kw["base"], match = str(tmp_path / "target"), "exactly one of --tokenizer-from"
    else:
        (tmp_path / "sh").mkdir()
        (tmp_path / "sh" / "x.txt").write_text("mine")
        match = "holds no membership.json"
    spy = _Spy()
    with pytest.raises(LlmMiaError, match=match):
        train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=spy, **kw)
    assert spy.calls == []


def test_cli_shadow_train_and_small_population_exit_2(tmp_path, capsys):
    docs = distinct_docs(10, sentences=1)
    _target(tmp_path / "target", docs)
    io.write_jsonl(tmp_path / "pop.jsonl", [{"text": t} for t in docs])
    capsys.readouterr()
    code, out, err = run_cli(["shadow", "train", "--population", tmp_path / "pop.jsonl", "--n", 8, "--out", tmp_path / "sh",
                              "--tokenizer-from", tmp_path / "target", "--steps", 2], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "at least 16" in err and not (tmp_path / "sh").exists()
    code, out, err = run_cli(["shadow", "train", "--population", tmp_path / "pop.jsonl", "--n", 2, "--out", tmp_path / "sh",
                              "--tokenizer-from", tmp_path / "target", "--steps", 2], capsys)
    assert code == 0, err
    assert "2 shadow models on 10 population texts" in out and load_shadows(tmp_path / "sh").n_models == 2


def test_shadow_folder_checks(shadow_case, tmp_path):
    import shutil

    d, docs, sh = shadow_case
    from llm_mia.membership.scoring import score
    from llm_mia.models.loading import load_model

    target = load_model(str(d / "target"))
    load_shadows(d / "sh", target_tokenizer=target.tokenizer)  # the same tokenizer: fine
    with pytest.raises(LlmMiaError, match="shadow models"):
        score(target, docs[:2], signals=["lira_online"])
    assert not {"lira_online", "shokri"} & set(score(target, docs[:2]).rows[0]["scores"])  # not picked without --shadow
    other = _target(tmp_path / "other", distinct_docs(16, sentences=2, seed=9))
    with pytest.raises(LlmMiaError, match="another tokenizer than the target"):
        load_shadows(d / "sh", target_tokenizer=load_model(str(other)).tokenizer)
    with pytest.raises(LlmMiaError, match="no membership.json"):
        load_shadows(d / "target")
    with pytest.raises(LlmMiaError, match="not found"):
        load_shadows(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(d / "sh", broken)
    shutil.rmtree(broken / "model-02")
    with pytest.raises(LlmMiaError, match="1 of 4 shadow models missing"):
        load_shadows(broken)
    (broken / "population.jsonl").write_text('{"text": "edited"}\n')
    shutil.copytree(d / "sh" / "model-02", broken / "model-02")
    with pytest.raises(LlmMiaError, match="does not match the population digest"):
        load_shadows(broken)


def test_shadow_training_features_are_each_models_own_features(shadow_case):
    from llm_mia.membership.signals.shadow import FEATURE_NAMES, membership_features
    from llm_mia.models.loading import load_model

    d, docs, sh = shadow_case
    X, y = shadow_training_features(d / "sh")
    n = len(docs)
    assert X.shape == (4 * n, len(FEATURE_NAMES)) and y.shape == (4 * n,)
    assert y.tolist() == sh.keep.reshape(-1).astype(int).tolist() and y.sum() == 2 * n  # each text IN for 2 of 4
    m2 = load_model(str(d / "sh" / "model-02"))
    ids, ctx = m2.encode(docs, prepend_bos=True)
    np.testing.assert_allclose(X[2 * n:3 * n], membership_features(m2.token_stats(ids, context_lens=ctx), docs),
                               rtol=1e-4, atol=1e-5)
    X2, y2 = shadow_training_features(d / "sh", ["a text no shadow model saw", docs[0]])
    assert X2.shape == (8, len(FEATURE_NAMES)) and y2.tolist() == [0, int(sh.keep[0, 0]), 0, int(sh.keep[1, 0]), 0,
                                                                    int(sh.keep[2, 0]), 0, int(sh.keep[3, 0])]


def test_score_with_shadow_adds_the_attacks(shadow_case, tmp_path, capsys):
    d, docs, sh = shadow_case
    rows = [{"text": t, "label": int(i % 2 == 0)} for i, t in enumerate(docs[:6])] + [{"text": "An unseen text.", "label": 0}]
    io.write_jsonl(tmp_path / "in.jsonl", rows)
    code, out, err = run_cli(["score", "--model", d / "target", "--input", tmp_path / "in.jsonl", "--output",
                              tmp_path / "out.jsonl", "--shadow", d / "sh", "--metrics", tmp_path / "m.json"], capsys)
    assert code == 0, err
    res = io.read_jsonl(tmp_path / "out.jsonl")
    assert SHADOW_SIGNALS <= set(res[0]["scores"])
    assert res[-1]["scores"]["lira_online"] == "NaN" and "shadow_no_in_model" in res[-1]["flags"]
    assert isinstance(res[-1]["scores"]["lira_offline"], float)
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["shadow"]["n_models"] == 4 and m["shadow"]["in_per_text"] == [0, 2] and SHADOW_SIGNALS <= set(m["signals"])
    assert res[-1]["scores"]["lira_token_online"] == "NaN" and isinstance(res[-1]["scores"]["lira_token_offline"], float)
    code, out, err = run_cli(["score", "--model", d / "target", "--input", tmp_path / "in.jsonl", "--output",
                              tmp_path / "tok.jsonl", "--shadow", d / "sh", "--signals", "lira_token_online"], capsys)
    assert code == 0, err
    tok = io.read_jsonl(tmp_path / "tok.jsonl")
    assert [r["scores"]["lira_token_online"] for r in tok] == [r["scores"]["lira_token_online"] for r in res]
    # a target with another tokenizer: exit 2, one line, nothing written
    other = _target(tmp_path / "other", distinct_docs(16, sentences=2, seed=9))
    capsys.readouterr()
    code, out, err = run_cli(["score", "--model", other, "--input", tmp_path / "in.jsonl", "--output",
                              tmp_path / "o2.jsonl", "--shadow", d / "sh"], capsys)
    assert code == 2 and "another tokenizer" in err and err.strip().count("\n") == 0 and not (tmp_path / "o2.jsonl").exists()
    code, out, err = run_cli(["score", "--model", d / "target", "--input", tmp_path / "in.jsonl", "--output",
                              tmp_path / "o3.jsonl", "--shadow", d / "target"], capsys)
    assert code == 2 and "no membership.json" in err and not (tmp_path / "o3.jsonl").exists()


def test_audit_with_shadow_reports_the_attacks(leak_models, tmp_path, capsys):
    d, _ = leak_models
    train = io.read_jsonl(d / "corpus" / "train.jsonl")
    held = io.read_jsonl(d / "corpus" / "heldout.jsonl")
    io.write_jsonl(tmp_path / "pop.jsonl", train + held)  # the audited documents are in the population: online works
    train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", n_models=4, tokenizer_from=str(d / "leaky"), max_steps=2,
                  progress=False)
    code, out, err = run_cli(["audit", "--model", d / "leaky", "--members", d / "corpus" / "train.jsonl",
                              "--nonmembers", d / "corpus" / "heldout.jsonl", "--out", tmp_path / "o",
                              "--shadow", tmp_path / "sh", "--num-samples", 2, "--strategy", "top-k", "--length", 8,
                              "--discoverable", 0, "--candidates", 20], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    mem = rep["membership"]
    assert SHADOW_SIGNALS <= set(mem["signals"]) and "auc" in mem["signals"]["lira_online"]
    assert mem["shadow"]["n_models"] == 4 and mem["shadow"]["in_per_text"] == [2, 2]
    assert mem["shadow"]["lira_variance"] == "fixed (global)"
    recs = mem["records"]  # every member once; OUT scores from the shadows when the best signal has them
    assert sorted(r["member"] for r in recs) == list(range(mem["n_members"]))
    want = "shadow_out" if mem["records_summary"]["signal"] in SHADOW_CALIBRATED else "nonmembers"
    assert {r["fpr_from"] for r in recs if r["fpr"] == r["fpr"]} <= {want}
    md = (tmp_path / "o" / "report.md").read_text()
    assert "TPR at 0.1% FPR" in md and "use 4 shadow models (2-2 IN and 2-2 OUT per document" in md
    assert "4 shadow models" in (tmp_path / "o" / "report.html").read_text()
    code, out, err = run_cli(["audit", "--model", d / "clean", "--members", d / "corpus" / "train.jsonl",
                              "--nonmembers", d / "corpus" / "heldout.jsonl", "--out", tmp_path / "o2",
                              "--shadow", tmp_path / "nothing"], capsys)
    assert code == 2 and "shadow folder not found" in err and not (tmp_path / "o2").exists()


def _edited_copy(sh_dir, dst, edit=None):
    import shutil

    shutil.copytree(sh_dir, dst)
    if edit is not None:
        meta = io.read_json(dst / MEMBERSHIP_FILE)
        edit(meta)
        io.write_json(dst / MEMBERSHIP_FILE, meta)
    return dst


def test_b4_05_a_foreign_model_in_a_shadow_folder_is_refused(shadow_case, tmp_path):
    import hashlib
    import shutil

    d, docs, sh = shadow_case
    meta = io.read_json(sh.folder / MEMBERSHIP_FILE)
    # the recipe's digest is that of the IN texts as train.jsonl rows (a slow, independent serialisation)
    rows = "".join(json.dumps({"text": docs[i]}, ensure_ascii=False) + "\n" for i in meta["models"][0]["in"])
    rec0 = io.read_json(sh.folder / "model-00" / "recipe.json")
    assert rec0["train_sha256"] == hashlib.sha256(rows.encode("utf-8")).hexdigest()
    x = _edited_copy(sh.folder, tmp_path / "shX")
    shutil.rmtree(x / "model-00")
    shutil.copytree(sh.folder / "model-01", x / "model-00")  # another IN set's model under model-00's name
    with pytest.raises(LlmMiaError, match="model-00 was not trained on its IN set of membership.json"):
        load_shadows(x)
    assert load_shadows(sh.folder).keep.shape == (4, 16)


@pytest.mark.parametrize("edit, msg", [
    (lambda m: m["models"][0].update({"in": [-1, -2]}), "'in' must be a list of text indices in [0, 16)"),
    (lambda m: m.update({"n_models": 99}), "n_models is 99 but 4 models are listed"),
    (lambda m: m["models"][1].update({"name": m["models"][0]["name"]}), "model names must be unique"),
    (lambda m: m["models"][0].update({"name": "../target"}), "must be a folder name inside the shadow folder"),
    (lambda m: m["models"][0].pop("name"), "must be a folder name inside the shadow folder"),
    (lambda m: m["models"][0].update({"in": [999]}), "'in' must be a list of text indices"),
    (lambda m: m["models"][0].update({"in": "12"}), "'in' must be a list of text indices"),
    (lambda m: m.update({"models": "abc"}), "models must be a list of entries"),
    (lambda m: [x.update({"in": list(range(16))}) for x in m["models"]], "every population text needs IN and OUT"),
], ids=["negative", "n_models", "same_name", "outside", "no_name", "out_of_range", "string_in", "models_str",
        "all_in"])
def test_b4_06_membership_json_is_validated(shadow_case, tmp_path, edit, msg):
    _, _, sh = shadow_case
    bad = _edited_copy(sh.folder, tmp_path / "shT", edit)
    with pytest.raises(LlmMiaError) as e:
        load_shadows(bad)
    assert msg in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_b4_10_shadow_recipe_other_than_the_target_is_reported(shadow_case, tmp_path, capsys):
    from llm_mia.membership.shadow import recipe_mismatch

    d, docs, sh = shadow_case  # shadow models: preset tiny, 20 steps
    assert recipe_mismatch(sh, d / "target") is None  # no recipe.json: nothing to compare
    io.write_json(tmp_path / "recipe.json", {"preset": "tiny", "steps": 20, "base": None})
    assert recipe_mismatch(sh, tmp_path) is None
    io.write_json(tmp_path / "recipe.json", {"preset": "tiny", "steps": 200, "base": None})
    assert "steps 20 vs 200" in recipe_mismatch(sh, tmp_path)
    (d / "target" / "recipe.json").write_text(json.dumps({"preset": "tiny", "steps": 200}))
    try:
        (tmp_path / "one.jsonl").write_text(json.dumps({"text": docs[0]}) + "\n")
        code, out, err = run_cli(["score", "--model", d / "target", "--input", tmp_path / "one.jsonl", "--output",
                                  tmp_path / "o.jsonl", "--shadow", sh.folder], capsys)
        assert "trained with another recipe than the target (steps 20 vs 200" in err, (code, err)
    finally:
        (d / "target" / "recipe.json").unlink()


def test_two_processes_train_one_model_each_in_turn(tmp_path, monkeypatch):
    """Under a launch of 2 processes, process r trains models r, r + 2 (rank from RANK, no process group);
    process 0 writes membership.json; together they give the folder one process would."""
    from llm_mia.core import parallel

    docs = distinct_docs(12, sentences=1, seed=3)
    _target(tmp_path / "target", docs)
    io.write_jsonl(tmp_path / "pop.jsonl", [{"text": t} for t in docs])
    kw = dict(n_models=4, tokenizer_from=str(tmp_path / "target"), max_steps=2, progress=False, seed=0)
    monkeypatch.setattr(parallel, "barrier", lambda: None)  # the other process is played in turn below
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    said = []
    zero = _Spy()
    with pytest.raises(LlmMiaError, match="2 of 4 shadow models missing"):  # process 1 has not trained yet
        train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=zero, echo=said.append, **kw)
    assert zero.calls == ["model-00", "model-02"] and len(said) == 2
    assert io.read_json(tmp_path / "sh" / MEMBERSHIP_FILE)["num_processes"] == 2
    monkeypatch.setenv("RANK", "1")
    one, said_one = _Spy(), []
    sh = train_shadows(tmp_path / "pop.jsonl", tmp_path / "sh", train_fn=one, echo=said_one.append, **kw)
    assert one.calls == ["model-01", "model-03"] and said_one == []  # only process 0 reports
    assert sh.n_models == 4
