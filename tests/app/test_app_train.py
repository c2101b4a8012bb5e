"""Train page: the form's options (accepted by the engine's own parser), a real background process (a stand-in
for `python -m engine run`, no training), the live panel, Cancel, and a job whose process died."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import jobs
from engine.store import WorkspaceStore

FAKE_ENGINE = str(Path(__file__).with_name("fake_engine.py"))


@pytest.fixture
def fake_engine(monkeypatch):
    """Launches go to tests/app/fake_engine.py instead of the training CLI; returns the launched argvs."""
    launched = []

    def command(dataset, run_dir, options):
        launched.append([str(dataset), "--out", str(run_dir), *options])
        return [sys.executable, FAKE_ENGINE, str(dataset), "--out", str(run_dir), *options]

    monkeypatch.setattr(jobs, "engine_command", command)
    return launched


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _launch(at, **fields):
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    for name, value in fields.items():
        at.number_input(key=f"train_{name}").set_value(value)
    next(b for b in at.form_submit_button if b.label == "Launch training").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_launch_passes_the_form_to_the_engine_and_cancel_stops_it(at, demo, workspace, fake_engine):
    _launch(at, data_image_size=32, schedule_epochs=2, schedule_warmup_epochs=1, schedule_batch_size=16)
    assert len(fake_engine) == 1
    argv = fake_engine[0]
    for flag, value in [("--method", "mslg"), ("--image-size", "32"), ("--epochs", "2"), ("--warmup-epochs", "1"),
                        ("--batch-size", "16"), ("--classes", "normal,pre-plus,plus")]:
        assert argv[argv.index(flag) + 1] == value, (flag, argv)

    with WorkspaceStore(workspace / "review.db") as store:
        (record,) = store.list_runs()
    run_dir = Path(record["run_dir"])
    assert record["state"] == "running" and record["method"] == "mslg" and record["pid"]
    assert at.session_state["run"] == str(run_dir)
    assert _wait(lambda: (run_dir / "status.json").exists())

    at.run()  # a refresh: the job is found again from the store
    bars = at.get("progress")
    assert bars and "Warm-up" in bars[0].proto.text and "epoch 1/2" in bars[0].proto.text
    at.button(key="train_live_cancel").click().run()
    assert not at.exception, at.exception
    assert _wait(lambda: json.loads((run_dir / "status.json").read_text())["state"] == "cancelled")
    assert _wait(lambda: not jobs.pid_alive(record["pid"], run_dir))
    at.run()
    with WorkspaceStore(workspace / "review.db") as store:
        assert store.get_run(run_dir)["state"] == "cancelled"


def test_a_job_whose_process_is_gone_is_shown_failed_with_its_log(at, demo, workspace):
    run_dir = workspace / "runs" / "20250101-000000-ce"
    run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "stage": "main", "epoch": 3, "of": 5,
                                                     "pid": dead.pid}))
    (run_dir / "log.txt").write_text("epoch 3/5 [main] loss 0.4\nKilled by the OOM killer\n")
    with WorkspaceStore(workspace / "review.db") as store:
        store.register_run(run_dir, dataset=demo, method="ce", state="running", pid=dead.pid)
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    assert any("failed" in e.value for e in at.error)
    assert any("OOM killer" in c.value for c in at.code)
    with WorkspaceStore(workspace / "review.db") as store:
        assert store.get_run(run_dir)["state"] == "failed"
    status = json.loads((run_dir / "status.json").read_text())  # the run folder says so too
    assert status["state"] == "failed" and status["epoch"] == 3 and "stopped without finishing" in status["message"]


def test_form_options_are_accepted_by_the_engine_cli(at, demo, workspace, fake_engine):
    """The exact argv the app builds parses with `python -m engine run`'s parser into the intended config."""
    _launch(at, data_image_size=32, schedule_epochs=2, schedule_warmup_epochs=1, schedule_batch_size=32)
    from engine.cli import build_parser
    from engine.commands.run import config_from_args

    args = build_parser().parse_args(["run", *fake_engine[0]])
    cfg = config_from_args(args)
    assert (cfg.data.image_size, cfg.schedule.epochs, cfg.schedule.warmup_epochs, cfg.schedule.batch_size) == (
        32, 2, 1, 32)
    assert cfg.runtime.method == "mslg" and cfg.method_params["k"] == 10
    for r in WorkspaceStore(workspace / "review.db").list_runs():
        jobs.cancel(jobs.view(r))
