"""A training job started by the app gets its share of the CPUs as OMP_NUM_THREADS (issue 10, item 15)."""

from app import jobs
from engine import runtime


def test_jobs_share_the_cpus_among_running_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_budget", lambda: 8)
    assert jobs.job_environment(0)["OMP_NUM_THREADS"] == "8"
    assert jobs.job_environment(1)["OMP_NUM_THREADS"] == "4"
    assert jobs.job_environment(20)["OMP_NUM_THREADS"] == "1"
    env = jobs.job_environment(0)
    assert env["PYTHONUNBUFFERED"] == "1" and str(jobs.state.REPO_ROOT) in env["PYTHONPATH"]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # set for the app by its operator: wins
    assert jobs.job_environment(1)["OMP_NUM_THREADS"] == "3"
