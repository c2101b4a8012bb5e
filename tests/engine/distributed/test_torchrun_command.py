"""`engine run --nproc N` -> the torchrun command (engine.launch), checked with torchrun's own argument parser."""

from __future__ import annotations

import pytest
from torch.distributed.run import get_args_parser

from engine.cli import build_parser
from engine.commands.run import config_from_args
from engine.launch import torchrun_command

ARGV = ["run", "data/demo", "--out", "runs/two", "--device", "cpu", "--roles", "roles.csv", "--epochs", "3"]


@pytest.mark.parametrize("nproc", [["--nproc", "2"], ["--nproc=2"], ["--np", "2"]])
def test_torchrun_accepts_the_command_and_hands_the_processes_the_engine_arguments(nproc):
    """torchrun's parser takes every argument that looks like its option: `--nproc` (an ambiguous abbreviation of
    its --nproc-per-node) made it stop with "ambiguous option" before the fix. The processes get the same run
    options without the process count (they learn it from torchrun)."""
    argv = [*ARGV[:4], *nproc, *ARGV[4:]]
    assert config_from_args(build_parser().parse_args(argv)).runtime.nproc == 2  # the engine reads it
    cmd = torchrun_command(argv, 2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    parsed = get_args_parser().parse_args(cmd[3:])
    assert parsed.standalone and parsed.nproc_per_node == "2" and parsed.module
    assert parsed.training_script == "engine" and parsed.training_script_args == ARGV
    child = config_from_args(build_parser().parse_args(parsed.training_script_args))
    assert child.runtime.nproc == 1 and child.runtime.out == "runs/two" and child.schedule.epochs == 3


def test_nproc_on_a_device_processes_cannot_share_is_refused_before_torchrun_starts(tmp_path, monkeypatch, capsys):
    """`--nproc 2 --device mps`: every process needs its own CUDA GPU or the CPU. Refused with exit 2 and nothing
    written before torchrun starts (before the fix the processes were started and each failed on its own)."""
    import engine.launch
    from engine.cli import main
    from tests.engine.pipeline.tinydata import CLASSES, make_dataset

    monkeypatch.setattr(engine.launch, "run_local", lambda *a, **k: pytest.fail("torchrun was started"))
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "run"
    code = main(["run", str(data), "--out", str(out), "--classes", ",".join(CLASSES), "--nproc", "2",
                 "--device", "mps", "--backbone", "test_efficientnet_gn", "--image-size", "32"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--device" in err and "several processes need CUDA GPUs or the CPU, not 'mps'" in err
    assert not out.exists()
