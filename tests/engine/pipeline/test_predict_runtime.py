"""`engine predict` picks its device like `run` and sets torch's threads from the CPUs it may use."""

import os

import pandas as pd
import torch

from engine import runtime
from engine.cli import main
from tests.engine.pipeline.tinydata import run_args


def test_predict_sets_threads_from_the_cpu_budget_and_runs_on_auto(tiny_dataset, tmp_path, monkeypatch):
    rd = tmp_path / "run"
    assert main(run_args(tiny_dataset, rd, "ce", "--epochs", "1", "--warmup-epochs", "0")) == 0
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(runtime, "CGROUP_ROOT", tmp_path / "no-cgroup")
    out = tmp_path / "pred.csv"
    try:
        assert main(["predict", str(rd), str(tiny_dataset / "img"), "--out", str(out)]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(1)
    assert len(pd.read_csv(out)) == len(list((tiny_dataset / "img").iterdir()))
