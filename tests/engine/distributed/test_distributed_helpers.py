"""engine.distributed: the pure sharding rules, and the collectives in two spawned gloo processes (CPU)."""

from __future__ import annotations

import socket

import pytest
import torch

from engine import distributed as D
from engine.errors import InputError, Problem


def test_shards_are_disjoint_equal_and_cover_the_trimmed_global_batch():
    idx = torch.tensor([9, 3, 7, 1, 5, 0, 2])
    parts = [D.shard_rows(idx, r, 3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[9, 1], [3, 5], [7, 0]]  # interleaved, trimmed to 6 (drop_last)
    assert sorted(torch.cat(parts).tolist()) == sorted(idx[:6].tolist())
    assert torch.equal(D.shard_rows(idx, 0, 1), idx)  # one process: the batch itself


def test_blocks_cover_every_row_once():
    for n in (0, 1, 5, 7, 16):
        for size in (1, 2, 3):
            rows = [i for r in range(size) for i in range(*D.block(n, r, size))]
            assert rows == list(range(n))


def test_torchrun_world_reads_torchruns_variables():
    assert D.torchrun_world({}) is None
    w = D.torchrun_world({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (w.rank, w.size, w.local_rank, w.local_size, w.nodes, w.main, w.active) == (5, 8, 1, 4, 2, False, True)


def test_size_problems_name_the_option_and_the_fix():
    assert D.size_problems(2, batch_size=16, n_train=40, n_meta=20, folds=2) == []
    (odd,) = D.size_problems(2, batch_size=15, n_train=40, n_meta=20)
    assert odd.file == "--batch-size" and "multiple of 2" in odd.fix
    (small,) = D.size_problems(4, batch_size=4, n_train=40, n_meta=20)
    assert "fewer than 2" in small.problem and "--batch-size 8" in small.fix
    meta = D.size_problems(2, batch_size=8, n_train=40, n_meta=10, meta_rows=4, folds=2)
    assert [p.file for p in meta] == ["meta set"] and "5 meta images in a cross-fitting fold" in meta[0].problem


def test_timed_out_recognises_a_collective_timeout_anywhere_in_the_chain():
    gloo = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 8000ms for recv operation")
    try:
        try:
            raise gloo
        except RuntimeError as inner:
            raise RuntimeError("Got the following error when running the callback") from inner
    except RuntimeError as outer:
        assert D.timed_out(outer)
    assert D.timed_out(RuntimeError("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7)"))
    assert not D.timed_out(RuntimeError("Connection closed by peer [127.0.0.1]:29500"))
    assert not D.timed_out(ValueError("bad input"))


def test_input_error_pickles_whole():
    import pickle

    err = InputError([Problem("a.csv", "bad", "fix", row=2), Problem("a.csv", "bad", "fix", row=3)])
    back = pickle.loads(pickle.dumps(err))
    assert back.problems == err.problems and str(back) == str(err)


def test_one_process_collectives_are_identities():
    t = torch.tensor([1.0, 2.0])
    assert D.average_([t])[0] is t and t.tolist() == [1.0, 2.0]
    assert D.gather_rows(t, 2) is t and D.on_main(lambda: 3) == 3 and D.mean_stats({"a": 1.0}) == {"a": 1.0}
    D.check_in_sync({"x": t}, "anything")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CHECKS = ["collectives", "on_main", "in_sync", "ddp_equals_global_batch"]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Every check of tests/engine/distributed/workers.py run in two spawned gloo processes (one start-up)."""
    import torch.multiprocessing as mp

    from tests.engine.distributed import workers

    out = tmp_path_factory.mktemp("dist")
    mp.start_processes(workers.run_checks, args=(2, _free_port(), CHECKS, str(out)), nprocs=2, join=True,
                       start_method="spawn")
    return out


@pytest.mark.parametrize("check", CHECKS)
def test_collectives_in_two_processes(check, two_processes):
    for rank in range(2):
        result = (two_processes / f"{check}.{rank}.txt").read_text()
        assert result == "ok", f"process {rank}:\n{result}"
