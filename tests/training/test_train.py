"""train_model: round-trip of the saved folder (P03), recipe, reference / tokenizer reuse, bad input."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import llm_mia.training.train as train_mod
from llm_mia.core.errors import LlmMiaError
from llm_mia.training.train import TrainSummary, train_model
from tests.conftest import train_capturing

WORDS = ("the of a list returns value object method class module function string number file "
         "iterator argument default error raised when called with each item key dict set").split()


def _doc(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def write_corpus(folder: Path, *, n_train: int = 40, n_heldout: int = 8, seed: int = 0) -> Path:
    """A few kB of text; the secret sentence is in train.jsonl only."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train = [_doc(rng, 40) for _ in range(n_train)]
    for i in range(0, n_train, 4):
        train[i] += " the PIN of Jane Roe is 482913."
    heldout = [_doc(rng, 40) for _ in range(n_heldout)]
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": t, "id": f"t{i}"}) + "\n" for i, t in enumerate(train)))
    (folder / "heldout.jsonl").write_text("".join(json.dumps({"text": t, "id": f"h{i}"}) + "\n" for i, t in enumerate(heldout)))
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One tiny training run; the in-memory model is captured at the moment it is saved."""
    return train_capturing(corpus, tmp_path_factory.mktemp("models") / "target", preset="tiny", seed=0,
                           progress=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_summary_fields(trained):
    summary, model, _ = trained
    assert isinstance(summary, TrainSummary)
    assert summary.steps == train_mod.PRESETS["tiny"].steps
    assert summary.seconds > 0 and summary.tokens_per_second > 0
    assert summary.n_params == sum(p.numel() for p in model.parameters())
    assert summary.heldout_loss is not None and summary.heldout_loss > 0
    assert set(p.name for p in summary.out_dir.iterdir()) >= {"config.json", "model.safetensors", "recipe.json",
                                                               "tokenizer.json", "tokenizer_config.json"}
    assert not list(summary.out_dir.glob("*.bin")) and not list(summary.out_dir.glob("checkpoint*"))


def test_p03_round_trip_exact_and_tied(trained):
    summary, model, tokenizer = trained
    reloaded, info = AutoModelForCausalLM.from_pretrained(summary.out_dir, output_loading_info=True,
                                                          attn_implementation=model.config._attn_implementation)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not any(k.startswith(("_module.", "module.", "_orig_mod.")) for k in reloaded.state_dict())
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert reloaded.dtype == torch.float32

    ids = torch.tensor([tokenizer("the PIN of Jane Roe is 482913. a list of items", add_special_tokens=False)["input_ids"]])
    got, want = _logits(reloaded, ids), _logits(model, ids)
    assert torch.equal(got, want)

    # the library's default attention computes the same function
    default = AutoModelForCausalLM.from_pretrained(summary.out_dir)
    torch.testing.assert_close(_logits(default, ids), want, rtol=1e-5, atol=1e-5)

    # a silent random init must fail: a fresh model of the same config differs
    torch.manual_seed(0)
    fresh = type(model)(model.config)
    assert not torch.allclose(_logits(fresh, ids), want, atol=1e-3)


def test_tokenizer_reloads(trained):
    summary, _, tokenizer = trained
    tok = AutoTokenizer.from_pretrained(summary.out_dir)
    text = "the PIN of Jane Roe is 482913."
    assert tok(text)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert len(tok) == train_mod.PRESETS["tiny"].vocab_size or len(tok) <= train_mod.PRESETS["tiny"].vocab_size


def test_recipe(trained, corpus):
    summary, model, _ = trained
    r = json.loads((summary.out_dir / "recipe.json").read_text())
    p = train_mod.PRESETS["tiny"]
    assert r["preset"] == "tiny" and r["steps"] == p.steps and r["batch_size"] == p.batch_size
    assert r["lr"] == p.lr and r["seed"] == 0 and r["reference"] is False
    assert r["base"] is None and r["tokenizer_from"] is None
    assert r["corpus"] == str(corpus.resolve())
    assert r["train_file"] == "train.jsonl" and r["train_sha256"] == _sha(corpus / "train.jsonl")
    assert r["eval_file"] == "heldout.jsonl" and r["eval_sha256"] == _sha(corpus / "heldout.jsonl")
    assert r["config"]["n_layer"] == p.n_layer and r["config"]["n_embd"] == p.n_embd
    assert r["wall_seconds"] > 0 and r["train_loss"] == pytest.approx(summary.train_loss)
    assert r["heldout_loss"] == pytest.approx(summary.heldout_loss)
    assert r["torch_version"] == torch.__version__ and r["transformers_version"]


def test_loss_decreases(trained):
    summary, _, _ = trained
    log = json.loads((summary.out_dir / "recipe.json").read_text())["loss_log"]
    assert log[0]["step"] == 1 and log[-1]["step"] == summary.steps
    assert summary.train_loss < log[0]["loss"] - 1.0  # from ~ln(vocab) = 6.2 nats
    assert summary.heldout_loss < log[0]["loss"] - 1.0


def test_no_temp_folders_left(trained):
    summary, _, _ = trained
    assert sorted(p.name for p in summary.out_dir.parent.iterdir()) == ["target"]


def test_reference_trains_on_heldout_with_target_tokenizer(trained, corpus, tmp_path):
    summary, _, _ = trained
    s = train_model(corpus, tmp_path / "ref", preset="tiny", reference=True, tokenizer_from=str(summary.out_dir),
                    max_steps=3, progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    assert r["reference"] is True and r["steps"] == 3
    assert r["train_file"] == "heldout.jsonl" and r["train_sha256"] == _sha(corpus / "heldout.jsonl")
    assert r["eval_file"] == "train.jsonl"
    assert r["tokenizer_from"] == str(summary.out_dir.resolve())
    ref_tok, tgt_tok = AutoTokenizer.from_pretrained(s.out_dir), AutoTokenizer.from_pretrained(summary.out_dir)
    assert ref_tok.get_vocab() == tgt_tok.get_vocab()
    ref = AutoModelForCausalLM.from_pretrained(s.out_dir)
    assert ref.config.vocab_size == len(tgt_tok)


def test_same_seed_same_model(corpus, tmp_path):
    a = train_model(corpus, tmp_path / "a", preset="tiny", max_steps=3, progress=False)
    b = train_model(corpus, tmp_path / "b", preset="tiny", max_steps=3, progress=False)
    c = train_model(corpus, tmp_path / "c", preset="tiny", max_steps=3, seed=1, progress=False)
    assert (a.out_dir / "model.safetensors").read_bytes() == (b.out_dir / "model.safetensors").read_bytes()
    assert (a.out_dir / "model.safetensors").read_bytes() != (c.out_dir / "model.safetensors").read_bytes()


def test_replaces_earlier_model_folder_but_not_other_folders(corpus, tmp_path):
    out = tmp_path / "m"
    train_model(corpus, out, preset="tiny", max_steps=2, progress=False)
    s = train_model(corpus, out, preset="tiny", max_steps=3, progress=False)
    assert json.loads((out / "recipe.json").read_text())["steps"] == 3 and s.out_dir == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(LlmMiaError, match="not empty"):
        train_model(corpus, other, preset="tiny", max_steps=2, progress=False)
    assert (other / "keep.txt").read_text() == "mine"


def test_failed_run_leaves_nothing(corpus, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(train_mod, "_save_model", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        train_model(corpus, tmp_path / "m", preset="tiny", max_steps=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs(tmp_path, corpus):
    out = tmp_path / "out"
    with pytest.raises(LlmMiaError, match="corpus folder not found") as e:
        train_model(tmp_path / "nope", out, preset="tiny", progress=False)
    _one_line_error(e)

    empty_dir = tmp_path / "c0"
    empty_dir.mkdir()
    with pytest.raises(LlmMiaError, match="no train.jsonl"):
        train_model(empty_dir, out, preset="tiny", progress=False)
    with pytest.raises(LlmMiaError, match="no heldout.jsonl"):
        (empty_dir / "train.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
        train_model(empty_dir, out, preset="tiny", reference=True, progress=False)

    blank = tmp_path / "c1"
    blank.mkdir()
    (blank / "train.jsonl").write_text(json.dumps({"text": "   "}) + "\n\n")
    with pytest.raises(LlmMiaError, match="no text"):
        train_model(blank, out, preset="tiny", progress=False)

    corrupt = tmp_path / "c2"
    corrupt.mkdir()
    (corrupt / "train.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + '{"text": "cut' + "\n")
    with pytest.raises(LlmMiaError, match="line 2") as e:
        train_model(corrupt, out, preset="tiny", progress=False)
    _one_line_error(e)

    no_text = tmp_path / "c3"
    no_text.mkdir()
    (no_text / "train.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(LlmMiaError, match="no 'text'"):
        train_model(no_text, out, preset="tiny", progress=False)

    with pytest.raises(LlmMiaError, match="did you mean 'tiny'"):
        train_model(corpus, out, preset="tinyy", progress=False)
    with pytest.raises(LlmMiaError, match="max_steps"):
        train_model(corpus, out, preset="tiny", max_steps=0, progress=False)
    with pytest.raises(LlmMiaError, match="could not load model 'definitely-not-a-model-xyz'|not found"):
        train_model(corpus, out, preset="tiny", base=str(tmp_path / "definitely-not-a-model-xyz"), progress=False)
    with pytest.raises(LlmMiaError, match="tokenizer folder not found"):
        train_model(corpus, out, preset="tiny", tokenizer_from=str(tmp_path / "nope"), progress=False)
    with pytest.raises(LlmMiaError, match="could not load tokenizer"):
        train_model(corpus, out, preset="tiny", tokenizer_from=str(empty_dir), progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LlmMiaError, match="not a folder"):
        train_model(corpus, tmp_path / "afile", preset="tiny", progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fine_tune_local_base(trained, corpus, tmp_path):
    summary, _, _ = trained
    s = train_model(corpus, tmp_path / "ft", base=str(summary.out_dir), preset="tiny", max_steps=3, progress=False)
    r = json.loads((s.out_dir / "recipe.json").read_text())
    assert r["base"] == str(summary.out_dir) and r["steps"] == 3
    base = AutoModelForCausalLM.from_pretrained(summary.out_dir)
    ft = AutoModelForCausalLM.from_pretrained(s.out_dir)
    assert ft.config.n_layer == base.config.n_layer
    assert not torch.equal(ft.transformer.wte.weight, base.transformer.wte.weight)
    assert AutoTokenizer.from_pretrained(s.out_dir).get_vocab() == AutoTokenizer.from_pretrained(summary.out_dir).get_vocab()
    with pytest.raises(LlmMiaError, match="tokenizer_from cannot be combined"):
        train_model(corpus, tmp_path / "x", base=str(summary.out_dir), tokenizer_from=str(summary.out_dir), preset="tiny")


def test_config_object_and_keywords_are_the_same_run(corpus, tmp_path):
    from llm_mia.training.train import TrainConfig

    a = train_model(corpus, tmp_path / "a", config=TrainConfig(preset="tiny", max_steps=2, seed=3, progress=False))
    b = train_model(corpus, tmp_path / "b", preset="tiny", max_steps=2, seed=3, progress=False)
    ra, rb = (json.loads((s.out_dir / "recipe.json").read_text()) for s in (a, b))
    assert ra["seed"] == rb["seed"] == 3 and ra["steps"] == rb["steps"] == 2
    assert ra["loss_log"][0]["loss"] == pytest.approx(rb["loss_log"][0]["loss"], abs=1e-4)
    # keywords override the config's fields
    c = train_model(corpus, tmp_path / "c", config=TrainConfig(preset="tiny", max_steps=2), max_steps=1, progress=False)
    assert c.steps == 1
    with pytest.raises(TypeError, match="max_stepz"):
        train_model(corpus, tmp_path / "d", preset="tiny", max_stepz=1)


def test_cli_train_defaults_are_train_configs():
    import inspect

    from llm_mia.cli import train as cli
    from llm_mia.training.train import TrainConfig

    params = inspect.signature(cli.train).parameters
    for name in ("preset", "seed", "defense", "delta", "max_grad_norm", "dedup_min_chars", "epsilon"):
        assert params[name].default.default == getattr(TrainConfig(), name), name


def test_row_batches_put_each_document_at_the_start_of_a_row():
    """TrainConfig.rows (the positive-control twin): [BOS] + document, EOS-padded to the longest, cut to
    n_ctx; every document once an epoch; rows re-ordered, never re-cut."""
    from llm_mia.training.train import _row_batches

    docs = [[5, 6], [7, 8, 9, 10], [11]]
    by_hand = {(1, 5, 6, 0, 0), (1, 7, 8, 9, 10), (1, 11, 0, 0, 0)}  # BOS 1, EOS 0, T = 1 + 4
    it = _row_batches(docs, bos_id=1, eos_id=0, n_ctx=8, batch_size=3, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        x = next(it)
        assert x.shape == (3, 5) and {tuple(r) for r in x.tolist()} == by_hand
    it = _row_batches(docs, bos_id=1, eos_id=0, n_ctx=3, batch_size=2, generator=torch.Generator().manual_seed(0))
    seen = [tuple(r) for _ in range(3) for r in next(it).tolist()]  # 3 documents, batches of 2: one dropped an epoch
    assert all(len(r) == 3 for r in seen) and set(seen) <= {(1, 5, 6), (1, 7, 8), (1, 11, 0)}


def test_rows_is_plain_training_only(tmp_path):
    corpus = write_corpus(tmp_path / "c", n_train=4, n_heldout=2)
    with pytest.raises(LlmMiaError, match="plain training only"):
        train_model(corpus, tmp_path / "m", preset="tiny", max_steps=1, rows=True, defense="dedup", progress=False)
