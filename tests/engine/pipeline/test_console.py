"""What `python -m engine run` (and so `make demo`) prints while it trains: not silence until the end."""

from __future__ import annotations

import re

from engine.cli import main
from tests.engine.pipeline.tinydata import run_args


def test_run_prints_stage_epoch_and_time_left_for_every_epoch(tiny_dataset, tmp_path, capfd):
    assert main(run_args(tiny_dataset, tmp_path / "run", "mslg", "--epochs", "3", "--warmup-epochs", "1")) == 0
    err = capfd.readouterr().err
    assert "loading 48 images" in err
    lines = re.findall(r"^epoch (\d+)/3 \[(warmup|main)\] .*\(\d+ s; about (\d+) (?:min \d+ )?s left\)$", err, re.M)
    assert [(e, s) for e, s, _ in lines] == [("1", "warmup"), ("2", "main"), ("3", "main")]
    assert lines[-1][2] == "0"  # nothing left after the last epoch
    assert re.search(r"^done in [\d.]+s", err, re.M)
    assert "FutureWarning" not in err  # torch's jit deprecation notice is not the user's business
