"""Functions run inside spawned gloo processes by the distributed tests (module level, so spawn can import them)."""

from __future__ import annotations

import os
import traceback


def join(rank: int, size: int, port: int) -> None:
    """Join a process group the way torchrun's processes do: its environment variables, then engine.distributed."""
    import torch

    from engine import distributed as D

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    torch.set_num_threads(1)
    D.start(torch.device("cpu"), timeout_s=60)


def run_checks(rank: int, size: int, port: int, names: list[str], out_dir: str) -> None:
    """Run the checks `names` of this module in process `rank`, in order; write "ok" or the traceback of each to
    out_dir/<name>.<rank>.txt (a failed check does not stop the next ones)."""
    from engine import distributed as D

    try:
        join(rank, size, port)
        for name in names:
            try:
                globals()[f"check_{name}"](rank, size)
                result = "ok"
            except Exception:  # noqa: BLE001 - reported to the test through the file
                result = traceback.format_exc()
            with open(os.path.join(out_dir, f"{name}.{rank}.txt"), "w") as fh:
                fh.write(result)
        import torch.distributed as dist

        dist.barrier()  # leave together: process 0 hosts the store, and gloo aborts a process whose peer vanished
    finally:
        D.stop()


def check_collectives(rank: int, size: int) -> None:
    import torch

    from engine import distributed as D

    w = D.world()
    assert (w.rank, w.size, w.active, w.main) == (rank, size, True, rank == 0)
    # average_ / sum_: in place, mixed dtypes, one all-reduce per dtype
    a, b = torch.full((2, 3), float(rank + 1)), torch.tensor([rank * 10], dtype=torch.float64)
    D.average_([a, b])
    assert torch.equal(a, torch.full((2, 3), 1.5)) and b.item() == 5.0
    c = torch.tensor([1.0, rank])
    D.sum_([c])
    assert c.tolist() == [2.0, 1.0]
    assert D.mean_value(float(rank)) == 0.5 and D.mean_value(torch.tensor(2.0 * rank)).item() == 1.0
    assert D.any_true(rank == 1) and not D.any_true(False)
    # gather_rows: contiguous blocks of 7 rows (3 + 4), any trailing shape and bool
    lo, hi = D.my_block(7)
    local = torch.arange(lo, hi).float().reshape(-1, 1).repeat(1, 2)
    assert torch.equal(D.gather_rows(local, 7), torch.arange(7).float().reshape(-1, 1).repeat(1, 2))
    flags = torch.arange(lo, hi) % 2 == 0
    assert torch.equal(D.gather_rows(flags, 7), torch.arange(7) % 2 == 0)
    # merge_rows: each process updated its own rows; untouched rows keep their value
    table = torch.zeros(6, 2)
    touched = torch.zeros(6, dtype=torch.bool)
    mine = [1, 4] if rank == 0 else [2]
    table[mine] = torch.tensor([[rank + 1.0, -1.0]]).repeat(len(mine), 1)
    touched[mine] = True
    table[5] = 7.0  # the same on every process, touched by none
    D.merge_rows(table, touched)
    expect = torch.zeros(6, 2)
    expect[[1, 4]] = torch.tensor([1.0, -1.0])
    expect[2] = torch.tensor([2.0, -1.0])
    expect[5] = 7.0
    assert torch.equal(table, expect), table
    # mean_stats: numbers averaged, anything else from process 0
    stats = D.mean_stats({"loss": 1.0 + rank, "n": 4, "notes": [f"from {rank}"], "phase": "cyclical"})
    assert stats == {"loss": 1.5, "n": 4, "notes": ["from 0"], "phase": "cyclical"}, stats


def check_on_main(rank: int, size: int) -> None:
    import pytest

    from engine import distributed as D
    from engine.errors import InputError, Problem

    calls = []
    assert D.on_main(lambda: calls.append(rank) or {"rank": rank}) == {"rank": 0}
    assert calls == ([0] if rank == 0 else [])
    # process 0's input error reaches every process whole (its problems, not a string)
    with pytest.raises(InputError) as err:
        D.on_main(lambda: (_ for _ in ()).throw(InputError(Problem("votes.csv", "bad row", "fix it", row=3))))
    assert err.value.problems == [Problem("votes.csv", "bad row", "fix it", row=3)]
    # node_first: the first process runs first; when it fails the others stop instead of waiting
    order = D.node_first(lambda: rank)
    assert order == rank
    with pytest.raises((RuntimeError, D.PeerFailed), match="boom|another process failed"):
        D.node_first(lambda: (_ for _ in ()).throw(RuntimeError("boom")))


def check_in_sync(rank: int, size: int) -> None:
    import pytest
    import torch

    from engine import distributed as D

    same = {"w": torch.ones(3), "steps": torch.tensor(4)}
    D.check_in_sync(same, "model weights")  # equal: nothing happens
    differ = {"w": torch.ones(3), "z": torch.full((2,), float(rank))}
    with pytest.raises(D.RanksDiverged, match=r"different label variables \(z\)"):
        D.check_in_sync(differ, "label variables")


def check_ddp_equals_global_batch(rank: int, size: int) -> None:
    """DDP on equal shards (shard_rows) takes the same SGD step as one process on the whole global batch."""
    import torch
    from torch import nn

    from engine import distributed as D

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    reference = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    reference.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    rows = D.shard(torch.arange(8))
    assert rows.tolist() == list(range(rank, 8, size))
    ddp = D.wrap(model, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(ddp(x[rows]), y[rows]).backward()
    opt.step()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    nn.functional.cross_entropy(reference(x), y).backward()
    ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
    # the explicit average used by the meta methods gives the same gradient
    model.zero_grad()
    nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
    D.average_grads(model.parameters())
    reference.zero_grad()
    nn.functional.cross_entropy(reference(x), y).backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)
    assert D.TRAFFIC["all_reduce_bytes"] > 0
