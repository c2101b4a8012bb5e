"""Device and thread defaults shared by `run`, `predict` and the app's jobs (issue 10, item 15)."""

import os

import pytest

from engine import runtime
from engine.cli import build_parser
from engine.config import RuntimeConfig
from engine.errors import InputError


def test_predict_defaults_to_the_same_device_as_run():
    args = build_parser("predict").parse_args(["predict", "RUN", "x.png", "--out", "o.csv"])
    assert args.device == RuntimeConfig().device == "auto"


def test_cpu_budget_is_the_affinity_mask_capped_by_the_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(runtime, "CGROUP_ROOT", tmp_path)
    assert runtime.cpu_budget() == 6  # no quota file
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # docker --cpus 2.5
    assert runtime.cpu_budget() == 3
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime.cpu_budget() == 6
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")  # cgroup v1, 1 CPU
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cpu_budget() == 1


def test_thread_count_yields_to_omp_num_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(runtime, "CGROUP_ROOT", tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runtime.thread_count() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert runtime.thread_count() == 4


def test_resolve_device(monkeypatch):
    import torch

    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no GPU"):
        runtime.resolve_device("cuda")
