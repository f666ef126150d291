"""Data parallelism helpers (llm_mia.core.parallel, llm_mia.models.parallel) in a fake world of 2 processes.

The fake world: ``rank_and_world`` and ``active`` are patched to one rank of 2, and accelerate's
``gather_object`` is replaced by a function that checks the piece this rank sends and returns the
pieces of both ranks, the other one written out by hand (or computed on hand-picked indices).
"""

from __future__ import annotations

import accelerate.utils
import pytest
import torch

from llm_mia.core import parallel
from llm_mia.core.errors import LlmMiaError
from llm_mia.models.parallel import sharded_generate, sharded_stats
from llm_mia.models.stats import compute_token_stats


def test_shard_strided_by_hand():
    assert parallel.shard(7, 0, 2) == [0, 2, 4, 6]
    assert parallel.shard(7, 1, 2) == [1, 3, 5]
    assert parallel.shard(1, 1, 2) == []  # a rank may get nothing
    assert parallel.shard(5, 0, 1) == [0, 1, 2, 3, 4]


def test_shard_by_cost_by_hand():
    # largest cost first, ties by index: 2 (9), 4 (9), 0 (5), 3 (3), 1 (1); dealt 0, 1, 0, 1, 0
    costs = [5, 1, 9, 3, 9]
    assert parallel.shard(5, 0, 2, costs=costs) == [0, 1, 2]
    assert parallel.shard(5, 1, 2, costs=costs) == [3, 4]


@pytest.mark.parametrize("bad", [dict(n=3, rank=2, world=2), dict(n=3, rank=0, world=0), dict(n=3, rank=-1, world=2)])
def test_shard_bad_rank(bad):
    with pytest.raises(LlmMiaError, match="bad process rank"):
        parallel.shard(bad["n"], bad["rank"], bad["world"])


def test_shard_costs_length_checked():
    with pytest.raises(LlmMiaError, match="2 costs for 3 inputs"):
        parallel.shard(3, 0, 2, costs=[1, 2])


def test_world_size_from_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parallel.world_size() == 1 and not parallel.active()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parallel.world_size() == 2 and parallel.active()
    with parallel.local():
        assert not parallel.active()  # code that splits its own work by rank
    assert parallel.active()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(LlmMiaError, match="WORLD_SIZE must be a positive integer, got 'two'"):
        parallel.world_size()


def test_one_process_never_gathers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def boom(obj):
        raise AssertionError("gathered on a single process")

    monkeypatch.setattr(accelerate.utils, "gather_object", boom)
    assert parallel.all_pieces([0, 1], "x") == [([0, 1], "x")]
    assert parallel.map_sharded(lambda xs: [x + 1 for x in xs], [1, 2, 3]) == [2, 3, 4]
    assert parallel.rank_and_world() == (0, 1) and parallel.is_main()
    assert parallel.process_device(None) is None and parallel.process_device("cpu") == "cpu"


def fake_world(monkeypatch, rank: int, pieces: list, sent: list):
    """This process is ``rank`` of 2; gather_object records what it is sent and returns ``pieces``."""
    monkeypatch.setattr(parallel, "world_size", lambda: 2)  # active() outside parallel.local()
    monkeypatch.setattr(parallel, "rank_and_world", lambda: (rank, 2))
    monkeypatch.setattr(parallel, "process_state", lambda: None)

    def gather(obj):
        sent.append(obj)
        return pieces

    monkeypatch.setattr(accelerate.utils, "gather_object", gather)


@pytest.mark.parametrize("rank", [0, 1])
def test_map_sharded_fake_world_of_two(monkeypatch, rank):
    items = [1, 2, 3, 4, 5]
    # strided without costs: rank 0 takes indices 0, 2, 4 and rank 1 takes 1, 3; fn multiplies by 10
    pieces = [([0, 2, 4], [10, 30, 50]), ([1, 3], [20, 40])]
    sent, calls = [], []
    fake_world(monkeypatch, rank, pieces, sent)

    def fn(xs):
        calls.append(list(xs))
        return [10 * x for x in xs]

    assert parallel.map_sharded(fn, items) == [10, 20, 30, 40, 50]
    assert calls == [[1, 3, 5]] if rank == 0 else calls == [[2, 4]]
    assert sent == [[pieces[rank]]]


def test_map_sharded_checks_length(monkeypatch):
    fake_world(monkeypatch, 0, [], [])
    with pytest.raises(LlmMiaError, match="returned 1 results for 2 inputs"):
        parallel.map_sharded(lambda xs: [0], [1, 2, 3])


@pytest.mark.parametrize("rank", [0, 1])
def test_sharded_stats_equal_one_process(monkeypatch, tiny_model, rank):
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (5, 12, 1, 9, 30, 7)]
    ctx = [1, 2, 1, 3, 1, 1]
    want = compute_token_stats(tiny_model, seqs, context_lens=ctx, pad_id=0)  # one process, all rows

    # by length (5, 12, 1, 9, 30, 7), longest first: 4, 1, 3, 5, 0, 2; rank 0 takes 4, 3, 0, rank 1 takes 1, 5, 2
    shards = [[0, 3, 4], [1, 2, 5]]

    def stats_of(idx):
        return compute_token_stats(tiny_model, [seqs[i] for i in idx], context_lens=[ctx[i] for i in idx], pad_id=0)

    sent, seen, progressed = [], [], []
    fake_world(monkeypatch, rank, [(shards[0], stats_of(shards[0])), (shards[1], stats_of(shards[1]))], sent)

    def compute(s, c, prog):
        seen.append((s, c, prog))
        return compute_token_stats(tiny_model, s, context_lens=c, pad_id=0)

    got = sharded_stats(compute, seqs, ctx, progressed.append)
    assert seen[0][0] == [seqs[i] for i in shards[rank]] and seen[0][1] == [ctx[i] for i in shards[rank]]
    assert (seen[0][2] is None) == (rank == 1)  # only process 0 shows progress
    assert sent[0][0][0] == shards[rank]
    assert progressed == ([3] if rank == 0 else [])  # the other process's inputs, told at the gather
    assert torch.equal(got.n_scored, want.n_scored) and torch.equal(got.mask, want.mask)
    assert torch.equal(got.token_id, want.token_id) and torch.equal(got.token_is_top1, want.token_is_top1)
    for f in ("token_logprob", "mean_logprob", "std_logprob"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [0, 1])
def test_sharded_generate_keeps_each_seed_with_its_prompt(monkeypatch, rank):
    prompts = [[1], [1, 2, 3], [4, 5]]
    seeds = [11, 22, 33]
    # by prompt length, longest first: 1, 2, 0; rank 0 takes 1 and 0, rank 1 takes 2
    pieces = [([0, 1], ["g11", "g22"]), ([2], ["g33"])]
    calls = []
    fake_world(monkeypatch, rank, pieces, [])

    def run(ps, ss):
        calls.append((ps, ss))
        return [f"g{s}" for s in ss]

    assert sharded_generate(run, prompts, seeds) == ["g11", "g22", "g33"]
    assert calls == ([([[1], [1, 2, 3]], [11, 22])] if rank == 0 else [([[4, 5]], [33])])
    with pytest.raises(LlmMiaError, match="one seed per prompt"):
        sharded_generate(run, prompts, seeds[:2])


@pytest.mark.parametrize("rank", [0, 1])
def test_shared_prefix_scores_fake_world_of_two(monkeypatch, tiny_model, rank):
    from llm_mia.models.prefix import score_shared_prefix

    g = torch.Generator().manual_seed(5)
    pre = [0] + torch.randint(1, 300, (4,), generator=g).tolist()
    tails = [torch.randint(1, 300, (n,), generator=g).tolist() for n in (3, 6, 2, 5)]
    seqs = [pre + t for t in tails[:3]] + [[0] + tails[3]]  # three rows share a prefix, the last is alone
    split = [5, 5, 5, 3]
    want = score_shared_prefix(tiny_model, seqs, split, top_k=5, min_group=2)  # one process
    assert want.split.tolist() == [5, 5, 5, 1]  # the lone row is scored whole

    # lengths (8, 11, 7, 6), longest first: 1, 0, 2, 3; rank 0 takes 1 and 2, rank 1 takes 0 and 3; the
    # splits were decided on all rows, so row 3 keeps split 1 and rows 0 and 2 keep 5 though alone
    shards, sp = [[1, 2], [0, 3]], [5, 5, 5, 1]

    def piece(idx):
        return score_shared_prefix(tiny_model, [seqs[i] for i in idx], [sp[i] for i in idx], top_k=5, min_group=1)

    sent = []
    fake_world(monkeypatch, rank, [(shards[0], piece(shards[0])), (shards[1], piece(shards[1]))], sent)
    got = score_shared_prefix(tiny_model, seqs, split, top_k=5, min_group=2)
    assert sent[0][0][0] == shards[rank]
    assert torch.equal(got.split, want.split) and torch.equal(got.n_tail, want.n_tail)
    assert torch.equal(got.tail_mask, want.tail_mask)
    torch.testing.assert_close(got.total_logprob, want.total_logprob, rtol=1e-5, atol=1e-5)
    for f in ("tail_logprob", "tail_topk_logprob"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), rtol=1e-5, atol=1e-5)


def test_rank_from_env_without_a_process_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert parallel.rank_and_world() == (1, 2) and not parallel.is_main()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(LlmMiaError, match=r"RANK must be an integer in \[0, 2\)"):
        parallel.rank_and_world()


def test_wait_for_file(tmp_path):
    (tmp_path / "there").write_text("x")
    parallel.wait_for_file(tmp_path / "there", timeout_s=0.0)  # returns at once
    with pytest.raises(LlmMiaError, match="not written by process 0 within 0 s"):
        parallel.wait_for_file(tmp_path / "missing", timeout_s=0.0, poll_s=0.0)


def test_accelerate_launch_of_one_process_says_so(monkeypatch, capsys):
    """`accelerate launch --num_processes 2` without --multi_gpu on a CPU machine starts one process with
    MASTER_ADDR set and no WORLD_SIZE: one process, and a note saying how to get two (once)."""
    from llm_mia.core import parallel

    parallel._warn_one_launched.cache_clear()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert parallel.world_size() == 1 and parallel.world_size() == 1
    err = capsys.readouterr().err
    assert err.count("--multi_gpu") == 1 and "running as one process" in err
    monkeypatch.delenv("MASTER_ADDR")
    parallel._warn_one_launched.cache_clear()
    assert parallel.world_size() == 1 and capsys.readouterr().err == ""
