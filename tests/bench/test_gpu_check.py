"""bench/gpu_check.py: its CPU form runs in CI; the parts of its GPU form that need no GPU are checked here."""

import json

import pytest
import torch

from bench import gpu_check


@pytest.mark.slow
def test_without_a_gpu_it_says_so_runs_one_cpu_stage_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gc")]) == 0
    out = capsys.readouterr().out
    assert "no GPU" in out and "| run ce (CPU, 32 px, 2 steps) | pass |" in out and "2/2 stages passed" in out
    assert (tmp_path / "gc" / "runs" / "ce" / "model.pt").is_file()
    saved = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    assert saved["device"] == "cpu" and all(r["ok"] for r in saved["rows"])


def test_main_phase_throughput_and_gpu_window(tmp_path):
    recs = [{"time": 100.0, "stage": "warmup", "epoch": 0, "step": 0, "steps": 2},
            {"time": 101.0, "stage": "warmup", "epoch": 0, "event": "epoch_end", "step": 1, "steps": 2},
            {"time": 102.0, "stage": "main", "epoch": 1, "step": 0, "steps": 3},
            {"time": 103.0, "stage": "main", "epoch": 1, "step": 1, "steps": 3},
            {"time": 104.0, "stage": "main", "epoch": 1, "step": 2, "steps": 3}]
    (tmp_path / "progress.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    st = gpu_check.run_stats(tmp_path, batch_size=16)
    assert st["first_step"] == 100.0 and (st["main_t0"], st["main_t1"]) == (102.0, 104.0)
    assert st["main_images_per_s"] == pytest.approx(2 * 16 / 2.0)
    sampler = gpu_check.GpuSampler.__new__(gpu_check.GpuSampler)  # no GPU here: feed samples by hand
    sampler.samples = [(101.5, 10.0, 500.0), (102.5, 90.0, 900.0), (103.5, 70.0, 800.0), (105.0, 0.0, 300.0)]
    assert sampler.window(102.0, 104.0) == (80.0, 900.0)
    assert sampler.window(200.0, 201.0) == (None, None)
    row = gpu_check.Row("run x", True, 12.0, 16.0, 80.0, 900.0, "first step after 2.0 s")
    assert "| run x | pass | 12.0 | 16 | 80 | 900 | first step after 2.0 s |" in gpu_check.table([row])
