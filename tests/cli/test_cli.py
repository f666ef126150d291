"""The whole CLI path end to end on a small slice of the real python-docs corpus, and bad input."""

from __future__ import annotations

import json
import math

import pytest

from llm_mia.core import io
from tests.conftest import distinct_docs, run_cli


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """corpus build + train (tiny) via the library, shared by the CLI tests below."""
    from llm_mia.data.corpus import build_corpus
    from llm_mia.training.train import train_model

    d = tmp_path_factory.mktemp("e2e")
    build_corpus("python-docs", d / "corpus", seed=1, max_chars=30_000)
    train_model(d / "corpus", d / "model", preset="tiny", max_steps=20, progress=False)
    return d


def test_help_lists_every_subcommand(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for name in ("corpus", "train", "extract", "exposure", "audit"):
        assert name in out
    for sub in (["corpus", "build"], ["train"], ["extract"], ["exposure"], ["audit"]):
        code, out, _ = run_cli([*sub, "--help"], capsys)
        assert code == 0 and "Usage" in out


def test_corpus_build_and_train_cli(tmp_path, capsys):
    src = tmp_path / "docs.txt"
    src.write_text("\n\n".join(distinct_docs(30, sentences=6)), encoding="utf-8")
    code, out, err = run_cli(["corpus", "build", "--source", src, "--out", tmp_path / "c", "--repeats", "1,4"], capsys)
    assert code == 0, err
    secrets = json.loads((tmp_path / "c" / "secrets.json").read_text())
    assert sorted({s["count"] for s in secrets}) == [0, 1, 4]
    tpl = tmp_path / "templates.json"
    tpl.write_text(json.dumps([{"prefix_template": "The locker code of {name} is ", "format": "{h3}", "suffix": "!"}]))
    code, _, err = run_cli(["corpus", "build", "--source", src, "--out", tmp_path / "c2", "--repeats", "2",
                            "--templates", tpl], capsys)
    assert code == 0, err
    canaries = [s for s in json.loads((tmp_path / "c2" / "secrets.json").read_text()) if s["kind"] == "canary"]
    assert canaries and all(s["format"] == "{h3}" and s["prefix"].startswith("The locker code of ") for s in canaries)
    code, out, err = run_cli(["train", "--corpus", tmp_path / "c", "--out", tmp_path / "m", "--preset", "tiny",
                              "--max-steps", "3"], capsys)
    assert code == 0, err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    AutoTokenizer.from_pretrained(tmp_path / "m")


def test_extract_cli_writes_ranked_verified_samples(built, tmp_path, capsys):
    out = tmp_path / "ex"
    code, _, err = run_cli(["extract", "--model", built / "model", "--corpus", built / "corpus", "--num-samples", 12,
                            "--length", 24, "--batch-size", 5, "--top-n", 4, "--out", out], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "private" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(12))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built / "model")
    for r in rows:
        assert len(r["token_ids"]) == 24
        assert r["text"] == tok.decode(r["token_ids"])
        assert set(r["scores"]) == {"loss", "zlib", "lowercase", "window"}
        assert r["longest_match_tokens"] >= 1 and r["memorized"] in (True, False)
        # the loss signal is minus the mean NLL the row reports
        assert math.isclose(r["scores"]["loss"], -r["nll"], rel_tol=1e-6)
    top = [json.loads(line) for line in (out / "private" / "top.jsonl").read_text().splitlines()]
    for ranking in ("perplexity", "zlib", "lowercase", "window"):
        scores = [t["score"] for t in top if t["ranking"] == ranking]
        assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    # Same seed, same samples; a rerun into the same folder resumes (nothing regenerated).
    code, _, err = run_cli(["extract", "--model", built / "model", "--num-samples", 12, "--length", 24,
                            "--batch-size", 7, "--out", tmp_path / "ex2"], capsys)
    assert code == 0, err
    rows2 = [json.loads(line) for line in (tmp_path / "ex2" / "private" / "samples.jsonl").read_text().splitlines()]
    assert [r["token_ids"] for r in rows2] == [r["token_ids"] for r in rows]


def test_audit_cli_writes_report_with_redacted_secrets(built, tmp_path, capsys):
    out = tmp_path / "audit"
    code, stdout, err = run_cli(["audit", "--corpus", built / "corpus", "--model", built / "model", "--out", out,
                                 "--num-samples", 8, "--candidates", 16], capsys)
    assert code == 0, err
    assert "report.md" in stdout
    report = json.loads((out / "report.json").read_text())
    secrets = json.loads((built / "corpus" / "secrets.json").read_text())
    assert report["schema_version"] == 1
    assert {r["id"] for r in report["secrets"]} == {s["id"] for s in secrets}
    for r in report["secrets"]:
        # 16 candidates: exposure lies in [log2 16 - log2 17, log2 16]
        assert math.log2(16) - math.log2(17) - 1e-9 <= r["exposure_rank"] <= 4.0 + 1e-9
        assert isinstance(r["greedy_extracted"], bool)
    assert set(report["extraction"]["rankings"]) == {"perplexity", "zlib", "lowercase", "window"}
    assert "auc" in report["membership"]["signals"]["loss"]
    # one PII pass: the report's PII table is built from the hits samples.jsonl holds
    assert report["pii"]["n_hits"] == sum(len(json.loads(x)["pii"]) for x in (out / "extract" / "samples.jsonl").open())
    md = (out / "report.md").read_text()
    assert "phone regions US, GB, DE, FR, IN, BR" in md  # the corpus records no locales: the default
    assert "## Planted secrets" in md and "## Extraction" in md
    assert "![exposure against insertion count](exposure.png)" in md and (out / "exposure.png").exists()
    for r in report["secrets"]:
        assert {"exposure_exact", "exposure_extrapolated", "beam_extracted", "sample_probability"} <= set(r)
    for s in secrets:
        assert s["secret"] not in md, "secrets must be redacted by default"
    code, _, err = run_cli(["audit", "--corpus", built / "corpus", "--model", built / "model", "--out", tmp_path / "a2",
                            "--num-samples", 8, "--candidates", 16, "--show-secrets"], capsys)
    assert code == 0, err
    md2 = (tmp_path / "a2" / "report.md").read_text()
    assert any(s["secret"] in md2 for s in secrets)


def test_exposure_cli_on_secrets_from_corpus_build(built, tmp_path, capsys):
    out = tmp_path / "exp"
    code, stdout, err = run_cli(["exposure", "--model", built / "model", "--secrets", built / "corpus" / "secrets.json",
                                 "--out", out, "--references", 32, "--exact-limit", 10, "--beams", 2], capsys)
    assert code == 0, err
    rec = json.loads((out / "exposure.json").read_text())
    secrets = json.loads((built / "corpus" / "secrets.json").read_text())
    assert [r["id"] for r in rec["rows"]] == [s["id"] for s in secrets]  # controls included, file order
    assert any(r["count"] == 0 for r in rec["rows"])
    for r in rec["rows"]:
        assert math.log2(32) - math.log2(33) - 1e-9 <= r["exposure_rank"] <= 5.0 + 1e-9
        assert r["exposure_exact"] == "NaN" and "exact_skipped_space_above_limit" in r["flags"]
        assert isinstance(r["greedy_extracted"], bool) and isinstance(r["beam_extracted"], bool)
        if r["sample_probability"] == "NaN":  # the tiny BPE writes some PII sentences in > 128 tokens
            assert "sentence_longer_than_context" in r["flags"]
        else:
            assert 0.0 <= r["sample_probability"] <= 1.0
    c = rec["controls"]
    assert c["n"] == sum(s["count"] == 0 for s in secrets)
    assert "controls: mean rank exposure" in stdout
    assert (out / "exposure.csv").exists() and (out / "exposure.png").exists()


@pytest.mark.parametrize("case", ["missing_corpus", "not_a_model", "corrupt_secrets", "unknown_source",
                                  "empty_corpus", "missing_model_args"])
def test_bad_input_one_line_error_exit_2(case, built, tmp_path, capsys):
    import shutil

    if case == "missing_corpus":
        args = ["train", "--corpus", tmp_path / "nope", "--out", tmp_path / "m", "--preset", "tiny"]
    elif case == "not_a_model":
        (tmp_path / "fake").mkdir()
        (tmp_path / "fake" / "notes.txt").write_text("hello")
        args = ["extract", "--model", tmp_path / "fake", "--num-samples", 2, "--out", tmp_path / "o"]
    elif case == "corrupt_secrets":
        shutil.copytree(built / "corpus", tmp_path / "c")
        (tmp_path / "c" / "secrets.json").write_text('[{"id": "x", "text": ')
        args = ["audit", "--corpus", tmp_path / "c", "--model", built / "model", "--out", tmp_path / "o"]
    elif case == "unknown_source":
        args = ["corpus", "build", "--source", "no-such-source", "--out", tmp_path / "o"]
    elif case == "empty_corpus":
        (tmp_path / "empty.txt").write_text("   \n\n")
        args = ["corpus", "build", "--source", tmp_path / "empty.txt", "--out", tmp_path / "o"]
    else:
        args = ["audit", "--out", tmp_path / "o"]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "o" / "report.json").exists()
    assert not (tmp_path / "m").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_p06_two_process_accelerate_run_equals_one_process(built, tmp_path, capsys):
    """`accelerate launch` with 2 CPU processes: every sample once (ids 0..N-1 per strategy), the same
    tokens and scores as a 1-process run with the same seed, each process its own shard."""
    import os
    import subprocess
    import sys

    args = ["extract", "--model", str(built / "model"), "--corpus", str(built / "corpus"), "--num-samples", "5",
            "--length", "10", "--batch-size", "2", "--strategy", "top-k,internet", "--seed", "4"]
    code, _, err = run_cli(args + ["--out", tmp_path / "one"], capsys)
    assert code == 0, err
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "llm_mia.cli.root", *args, "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shards = sorted(p.name for p in (tmp_path / "two" / "private" / "shards").glob("*-of-*.jsonl") if not p.name.startswith("scores"))
    assert shards == ["internet.0-of-2.jsonl", "internet.1-of-2.jsonl", "top-k.0-of-2.jsonl", "top-k.1-of-2.jsonl"]
    one = [json.loads(line) for line in (tmp_path / "one" / "private" / "samples.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "private" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in two] == list(range(10))
    assert [(r["strategy"], r["index"]) for r in two] == [(s, i) for s in ("top-k", "internet") for i in range(5)]
    assert [r["token_ids"] for r in two] == [r["token_ids"] for r in one]
    assert [r["prompt"] for r in two] == [r["prompt"] for r in one]
    for a, b in zip(one, two):
        for k, v in a["scores"].items():
            assert math.isclose(v, b["scores"][k], rel_tol=1e-5, abs_tol=1e-6)


def test_extract_cli_resume_after_a_kill(built, tmp_path, capsys):
    """A used --out is refused without --resume; after a kill (shards cut mid-line) --resume gives
    the same samples as an uninterrupted run, each once."""
    args = ["extract", "--model", built / "model", "--corpus", built / "corpus", "--num-samples", 6, "--length", 12,
            "--batch-size", 2, "--strategy", "temperature-decay,internet", "--seed", 3]
    code, _, err = run_cli(args + ["--out", tmp_path / "full"], capsys)
    assert code == 0, err
    full = [json.loads(x) for x in (tmp_path / "full" / "private" / "samples.jsonl").read_text().splitlines()]
    code, _, err = run_cli(args + ["--out", tmp_path / "full"], capsys)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    # a killed run: shards hold 3 complete samples and a torn fourth; no merged outputs yet
    killed = tmp_path / "killed"
    (killed / "private" / "shards").mkdir(parents=True)
    for s in ("temperature-decay", "internet"):
        lines = (tmp_path / "full" / "private" / "shards" / f"{s}.0-of-1.jsonl").read_text().splitlines()
        (killed / "private" / "shards" / f"{s}.0-of-1.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    code, _, err = run_cli(args + ["--out", killed, "--resume"], capsys)
    assert code == 0, err
    got = [json.loads(x) for x in (killed / "private" / "samples.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["index"], r["token_ids"], r["prompt"]) for r in got] == \
        [(r["strategy"], r["index"], r["token_ids"], r["prompt"]) for r in full]
    assert [r["id"] for r in got] == list(range(12))


def test_reference_trained_on_the_nonmembers_is_left_out_of_membership(tmp_path):
    """The demo's reference trains on heldout.jsonl, the membership evaluation's non-members: its
    recipe's train_sha256 says so, and only then are its signals left out."""
    import hashlib

    from llm_mia.audit.pipeline import reference_saw_nonmembers

    corpus, ref = tmp_path / "corpus", tmp_path / "ref"
    corpus.mkdir()
    ref.mkdir()
    (corpus / "heldout.jsonl").write_text('{"text": "a held-out document"}\n')
    sha = hashlib.sha256((corpus / "heldout.jsonl").read_bytes()).hexdigest()
    assert reference_saw_nonmembers(None, corpus) is False
    assert reference_saw_nonmembers(ref, corpus) is False  # no recipe
    (ref / "recipe.json").write_text(json.dumps({"train_sha256": sha}))
    assert reference_saw_nonmembers(ref, corpus) is True
    (ref / "recipe.json").write_text(json.dumps({"train_sha256": "0" * 64}))
    assert reference_saw_nonmembers(ref, corpus) is False
    (ref / "recipe.json").write_text("{corrupt")
    assert reference_saw_nonmembers(ref, corpus) is False


def test_outputs_get_the_usual_file_mode(tmp_path):
    """Atomic writes go through a 0600 temporary file; the result must get 0666 & ~umask."""
    import os

    from llm_mia.core import io

    old = os.umask(0o022)
    try:
        io.write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ issue 15 items 9 and 11

def _one_error_line(code, err):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("args, match", [
    (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    (["--strategy", "nucleus"], "unknown strategy nucleus"),
    (["--strategy", "top-k,top-k"], "strategy given twice"),
    (["--length", "0"], "--length must be an integer >= 1"),
])
@pytest.mark.parametrize("cmd", ["extract", "audit"])
def test_bad_numbers_and_strategies_fail_before_any_folder_or_model(tmp_path, capsys, cmd, args, match):
    """--seed -1 used to crash with an internal ValueError after writing a shard; --strategy nucleus
    left an empty extract/ folder. Both are one-line errors now, before the (missing) model is read."""
    out = tmp_path / "o"
    base = ["--model", tmp_path / "no-model", "--out", out]
    if cmd == "audit":
        base += ["--corpus", tmp_path / "no-corpus"]
    line = _one_error_line(*run_cli([cmd, *base, *args], capsys)[::2])
    assert match in line
    assert not out.exists()


def test_outputs_that_cannot_be_written_fail_before_the_work(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    score = ["score", "--model", tmp_path / "no-model", "--input", tmp_path / "a.txt"]
    cases = [
        (score + ["--output", tmp_path / "a.txt"], "is also an input"),
        (score + ["--output", tmp_path / "sub" / ".." / "a.txt"], "is also an input"),
        (score + ["--output", tmp_path / "folder"], "is a folder"),
        (score + ["--output", tmp_path / "file" / "out.jsonl"], "which is a file"),
        (score + ["--output", tmp_path / "o.jsonl", "--metrics", tmp_path / "o.jsonl"], "must be different files"),
        (score + ["--output", tmp_path / "o.jsonl", "--target-fpr", "1.5"], "--target-fpr must be in [0, 1)"),
        (["extract", "--model", tmp_path / "no-model", "--out", tmp_path / "file" / "x"], "which is a file"),
        (["extract", "--model", tmp_path / "no-model", "--out", tmp_path / "file"], "is a file"),
        (["audit", "--corpus", tmp_path, "--model", tmp_path / "no-model", "--out", tmp_path / "file" / "x"],
         "which is a file"),
        (["corpus", "build", "--out", tmp_path / "file" / "c"], "which is a file"),
        (["train", "--corpus", tmp_path, "--out", tmp_path / "file" / "m"], "which is a file"),
        (["exposure", "--model", tmp_path / "no-model", "--secrets", tmp_path / "s.json", "--out", tmp_path / "file"],
         "is a file"),
    ]
    for args, match in cases:
        line = _one_error_line(*run_cli(args, capsys)[::2])
        assert match in line, (args, line)
    assert (tmp_path / "a.txt").read_text() == "one\ntwo\n" and not (tmp_path / "o.jsonl").exists()


def test_extract_writes_redacted_samples_unless_show_secrets(built, tmp_path, capsys):
    """samples.jsonl / top.jsonl hold the text redacted like the reports and no token ids; the clear
    rows (what resume and the audit's PII pass read) are in private/, owner-only."""
    import stat

    from llm_mia.data.secrets import load_secrets
    from llm_mia.report.markdown import redact_text

    secrets = load_secrets(built / "corpus" / "secrets.json")
    args = ["extract", "--model", built / "model", "--corpus", built / "corpus", "--num-samples", 6, "--length", 16,
            "--top-n", 3]
    code, _, err = run_cli(args + ["--out", tmp_path / "hidden"], capsys)
    assert code == 0, err
    clear = io.read_jsonl(tmp_path / "hidden" / "private" / "samples.jsonl")
    shown = io.read_jsonl(tmp_path / "hidden" / "samples.jsonl")
    assert [r["text"] for r in shown] == [redact_text(r["text"], secrets) for r in clear]
    assert all("token_ids" not in r and "prompt_ids" not in r for r in shown)
    assert all("token_ids" in r for r in clear)
    assert stat.S_IMODE((tmp_path / "hidden" / "private").stat().st_mode) == 0o700
    top = io.read_jsonl(tmp_path / "hidden" / "top.jsonl")
    by_id = {r["id"]: r for r in clear}
    assert [t["text"] for t in top] == [redact_text(by_id[t["id"]]["text"], secrets) for t in top]
    code, _, err = run_cli(args + ["--out", tmp_path / "shown", "--show-secrets"], capsys)
    assert code == 0, err
    assert io.read_jsonl(tmp_path / "shown" / "samples.jsonl") == io.read_jsonl(tmp_path / "shown" / "private" / "samples.jsonl")

# ----------------------------------------------------------------------------- progress (issue 15 item 10)


def test_progress_off_a_terminal_prints_a_line_per_stage_and_every_tenth():
    import io as _io

    from llm_mia.core.progress import bar

    buf = _io.StringIO()  # not a terminal
    with bar("sampling", 20, stream=buf) as adv:
        for _ in range(20):
            adv(1)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "sampling: started (20 to do)" and lines[-1].startswith("sampling: done 20/20 in ")
    assert [x.split()[1] for x in lines[1:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    buf = _io.StringIO()
    with bar("scoring", None, stream=buf) as adv:
        adv(5)
    assert buf.getvalue().splitlines()[0] == "scoring: started" and "done 5 in" in buf.getvalue()


def test_exposure_progress_total_is_what_is_scored(tiny_model, tiny_tokenizer):
    """The bar's total equals the sentences scored: two secrets share one {d3} space (enumerated once),
    a third's {d4} space is above the exact limit (the old total counted spaces per secret)."""
    from llm_mia.data.secrets import Secret
    from llm_mia.exposure.secrets import exposure_work, secret_exposure
    from llm_mia.models.hf import from_objects

    lm = from_objects(tiny_model, tiny_tokenizer)
    p, sfx = "Code ", "."
    secrets = [Secret(id="a", kind="canary", text=p + "123" + sfx, prefix=p, secret="123", suffix=sfx, format="{d3}",
                      space_size=1000, count=4),
               Secret(id="b", kind="canary", text=p + "999" + sfx, prefix=p, secret="999", suffix=sfx, format="{d3}",
                      space_size=1000, count=0),
               Secret(id="c", kind="canary", text=p + "1234" + sfx, prefix=p, secret="1234", suffix=sfx,
                      format="{d4}", space_size=10**4, count=1)]
    seen = []
    secret_exposure(lm, secrets, n_references=7, exact_limit=1000, beams=1, progress=seen.append)
    assert sum(seen) == exposure_work(secrets, 7, 1000) == 3 * (7 + 1) + 1000


_ONE = ["audit", "--corpus", "c", "--model", "m", "--out", "o"]


@pytest.mark.parametrize("args, msg", [
    ([*_ONE, "--preset", "tiny"], "--preset is an option of `llm-mia demo`"),
    ([*_ONE, "--api-modes", "full"], "--api-modes is an option of `llm-mia compare`"),
    ([*_ONE, "--sarif", "x.sarif"], "add --policy"),
    (["demo", "--reference", "r"], "No such option: --reference"),
    (["defenses", "--num-samples", "9"], "No such option: --num-samples"),
    (["defenses", "--policy", "p.toml"], "No such option: --policy"),
    (["compare", "x", "--corpus", "c", "--out", "o", "--model", "m"], "No such option: --model"),
])
def test_audit_options_a_mode_cannot_honour_are_refused(args, msg, tmp_path, capsys, monkeypatch):
    """Issue 15 item 2: an option is honoured or refused (exit 2, one line) before any work."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and msg in lines[0], err
    assert list(tmp_path.iterdir()) == []  # nothing built, trained or written


@pytest.mark.parametrize("args, command", [
    (["--demo"], "`audit --demo` is now `llm-mia demo`"),
    (["--demo", "--reference", "r"], "`audit --demo` is now `llm-mia demo`"),
    (["--demo", "--preset", "tiny", "--max-steps", "3"], "`audit --demo` is now `llm-mia demo`"),
    (["--demo", "--compare-defenses", "--num-samples", "9"],
     "`audit --demo --compare-defenses` is now `llm-mia defenses`"),
    (["--compare-defenses", "--quick"], "`audit --compare-defenses` is now `llm-mia defenses`"),
    (["--compare", "x", "--corpus", "c", "--out", "o", "--api-modes", "full"], "is now `llm-mia compare MODELS`"),
])
def test_old_audit_modes_name_their_command(args, command, tmp_path, capsys, monkeypatch):
    """`audit --demo | --compare | --compare-defenses` became commands: the old spelling names the new one."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["audit", *args], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and command in lines[0], err
    assert list(tmp_path.iterdir()) == []
