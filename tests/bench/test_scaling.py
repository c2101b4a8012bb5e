"""bench.scaling's count of training images per epoch against the engine's own sharding (engine.distributed)."""

from __future__ import annotations

import pytest
import torch

from bench.scaling import images_per_epoch, layout
from engine.distributed import shard_rows


@pytest.mark.parametrize(("n", "batch", "processes", "steps"), [(310, 32, 1, 10), (310, 32, 2, 10), (310, 32, 4, 9),
                                                                (33, 8, 2, 4), (24, 8, 3, 3)])
def test_images_per_epoch_is_what_the_processes_train_on(n, batch, processes, steps):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    trained = [row for s in range(steps) for r in range(processes)
               for row in shard_rows(order[s * batch:(s + 1) * batch], r, processes).tolist()]
    assert len(trained) == len(set(trained))  # each row once
    assert images_per_epoch(n, batch, processes, steps) == len(trained)


def test_layout_reads_processes_by_threads():
    assert layout("2x1") == (2, 1) and layout("1X2") == (1, 2)
