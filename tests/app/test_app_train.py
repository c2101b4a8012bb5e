"""Train page: the form's options (accepted by the engine's own parser), a real background process (a stand-in
for `python -m engine run`, no training), the live panel, Cancel, and a job whose process died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import jobs
from engine.store import WorkspaceStore
from tests.app.texts import unescape

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


def _launch(at, method=None, **fields):
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    if method:
        at.selectbox(key="train_method").set_value(method).run()
    _submit(at, **fields)


def _submit(at, **fields):
    """Set the form's number fields (train_<name>) and press Launch training."""
    for name, value in fields.items():
        at.number_input(key=f"train_{name}").set_value(value)
    next(b for b in at.form_submit_button if b.label == "Launch training").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_launch_passes_the_form_to_the_engine_and_cancel_stops_it(at, demo, workspace, fake_engine):
    _launch(at, data_image_size=32, schedule_epochs=2, schedule_warmup_epochs=1, schedule_batch_size=16)
    assert len(fake_engine) == 1
    argv = fake_engine[0]
    from engine.config import RuntimeConfig

    default = RuntimeConfig().method  # the form preselects the engine's default method
    for flag, value in [("--method", default), ("--image-size", "32"), ("--epochs", "2"), ("--warmup-epochs", "1"),
                        ("--batch-size", "16"), ("--classes", "normal,pre-plus,plus")]:
        assert argv[argv.index(flag) + 1] == value, (flag, argv)

    with WorkspaceStore(workspace / "review.db") as store:
        (record,) = store.list_runs()
    run_dir = Path(record["run_dir"])
    assert record["state"] == "running" and record["method"] == default and record["pid"]
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
    _launch(at, "mslg", data_image_size=32, schedule_epochs=2, schedule_warmup_epochs=1, schedule_batch_size=32)
    from engine.cli import build_parser
    from engine.commands.run import config_from_args

    args = build_parser().parse_args(["run", *fake_engine[0]])
    cfg = config_from_args(args)
    assert (cfg.data.image_size, cfg.schedule.epochs, cfg.schedule.warmup_epochs, cfg.schedule.batch_size) == (
        32, 2, 1, 32)
    assert cfg.runtime.method == "mslg" and cfg.method_params["k"] == 10
    for r in WorkspaceStore(workspace / "review.db").list_runs():
        jobs.cancel(jobs.view(r))


def _start_fake_job(workspace, dataset, name="20250102-000000-ce"):
    """A running job as a reload finds it: a live process (the fake engine) registered in the store."""
    run_dir = workspace / "runs" / name
    proc = subprocess.Popen([sys.executable, FAKE_ENGINE, str(dataset), "--out", str(run_dir)],
                            start_new_session=True)
    assert _wait(lambda: (run_dir / "status.json").exists())
    with WorkspaceStore(workspace / "review.db") as store:
        store.register_run(run_dir, dataset=dataset, method="ce", state="running", pid=proc.pid)
    return run_dir, proc


def _table_rows(at) -> list[dict]:
    return next(df.value for df in at.dataframe if (df.key or "").startswith("train_runs_table")).to_dict("records")


def test_a_reload_during_a_run_shows_that_run_first_with_blank_cells(at, fake_run, demo, workspace):
    """The session's run is a finished one (the last run with labels); a job is running: it is what the panel
    shows and the first row of the runs table, and its not-yet-known accuracies are empty cells."""
    run_dir, proc = _start_fake_job(workspace, demo)
    try:
        at.run()  # a new browser session = a reload
        at.switch_page("views/train.py").run()
        assert not at.exception, at.exception
        assert at.session_state["run"] == str(fake_run)
        assert any(run_dir.name in unescape(m.value) and "running" in m.value for m in at.markdown)
        bars = at.get("progress")
        assert bars and "Warm-up" in bars[0].proto.text
        rows = _table_rows(at)
        assert [r["run"] for r in rows] == [run_dir.name, fake_run.name]
        assert (rows[0]["status"], rows[0]["meta acc"], rows[0]["test acc"], rows[0]["flagged"]) == (
            "running", "", "", "")
        assert rows[1]["meta acc"] == "80.0 %"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_a_run_started_outside_the_app_shows_its_own_start_and_duration(at, demo, workspace, monkeypatch):
    """`make demo` hands the app a finished run folder: its start and duration come from the folder, not from when
    the app first saw it."""
    from tests.app.conftest import make_fake_run

    run_dir = make_fake_run(workspace / "elsewhere" / "demo-mslg", demo)
    start = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    progress = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    (run_dir / "progress.jsonl").write_text("".join(json.dumps({**r, "time": start + 10 * i}) + "\n"
                                                    for i, r in enumerate(progress)))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "wall_time_s": 754.2}))
    monkeypatch.setenv("ROP_RUN", str(run_dir))
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    assert "Done in 12 min 34 s" in at.get("progress")[0].proto.text
    (row,) = _table_rows(at)
    from datetime import datetime

    assert row["started"] == datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M")
    assert row["duration"] == "12 min 34 s"


def test_parameters_with_fixed_values_are_select_boxes_and_reach_the_engine(at, demo, workspace, fake_engine):
    """mslg's meta_jvp and real_update take only their listed values: select boxes, not free text."""
    at.run()
    at.switch_page("views/train.py").run()
    at.selectbox(key="train_method").set_value("mslg").run()
    jvp = at.selectbox(key="train_mslg_meta_jvp")
    assert jvp.options == ["exact", "finite-difference"] and jvp.value == "exact"
    assert at.selectbox(key="train_mslg_real_update").options == ["fresh-labels", "same-pass"]
    assert not [t for t in at.text_input if t.key in ("train_mslg_meta_jvp", "train_mslg_real_update")]
    jvp.set_value("finite-difference")
    at.selectbox(key="train_mslg_real_update").set_value("same-pass")
    at.number_input(key="train_schedule_epochs").set_value(2)
    at.number_input(key="train_schedule_warmup_epochs").set_value(1)
    next(b for b in at.form_submit_button if b.label == "Launch training").click().run()
    assert not at.exception, at.exception
    argv = fake_engine[0]
    assert argv[argv.index("--mslg-meta-jvp") + 1] == "finite-difference"
    assert argv[argv.index("--mslg-real-update") + 1] == "same-pass"
    for r in WorkspaceStore(workspace / "review.db").list_runs():
        jobs.cancel(jobs.view(r))


def test_a_cancelled_run_with_a_checkpoint_resumes_with_its_own_settings(at, demo, workspace, fake_engine):
    from engine.cli import build_parser
    from engine.commands.run import config_from_args
    from engine.config import DataConfig, RunConfig, RuntimeConfig, ScheduleConfig

    _launch(at, data_image_size=32, schedule_epochs=2, schedule_warmup_epochs=1, schedule_batch_size=16)
    with WorkspaceStore(workspace / "review.db") as store:
        (record,) = store.list_runs()
    run_dir = Path(record["run_dir"])
    assert _wait(lambda: (run_dir / "status.json").exists())
    at.run()
    assert not [b for b in at.button if b.key == "train_live_resume"]  # nothing to resume while it runs
    at.button(key="train_live_cancel").click().run()
    assert _wait(lambda: json.loads((run_dir / "status.json").read_text())["state"] == "cancelled")
    assert _wait(lambda: not jobs.pid_alive(record["pid"], run_dir))
    at.run()
    assert not [b for b in at.button if b.key == "train_live_resume"]  # no checkpoint: nothing to resume from
    # what the engine leaves after its first epoch: the resolved config and a checkpoint
    cfg = RunConfig(data=DataConfig(dataset=str(demo), image_size=32), schedule=ScheduleConfig(epochs=2,
                    warmup_epochs=1, batch_size=16), runtime=RuntimeConfig(out=str(run_dir), method="ce"))
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "versions": {}, "git_commit": "",
                                                     "classes": ["normal", "pre-plus", "plus"], "device": "cpu"}))
    (run_dir / "checkpoint.pt").write_bytes(b"checkpoint")
    at.run()
    assert any("cancelled" in e.value for e in at.error)
    at.button(key="train_live_resume").click().run()
    assert not at.exception, at.exception
    assert len(fake_engine) == 2
    argv = fake_engine[1]
    assert argv[argv.index("--out") + 1] == str(run_dir) and "--resume" in argv
    resumed = config_from_args(build_parser().parse_args(["run", *argv]))
    assert resumed.runtime.resume and resumed.to_dict()["schedule"] == cfg.to_dict()["schedule"]
    assert resumed.data.image_size == 32 and resumed.runtime.method == "ce"
    with WorkspaceStore(workspace / "review.db") as store:
        again = store.get_run(run_dir)
    assert again["state"] == "running" and again["pid"] != record["pid"]
    assert _wait(lambda: json.loads((run_dir / "status.json").read_text())["state"] == "running")
    at.run()
    assert at.get("progress")  # watched live again
    jobs.cancel(jobs.view(again))


WARNINGS = [
    {"code": "warmup_model_selected", "message": "the selected model is the warm-up's last epoch (4): no epoch of "
     "mslg's main phase reached its meta accuracy"},
    {"code": "alpha_lowered", "message": "the look-ahead step broke the model, so α was lowered to 0.05"},
    {"code": "queue_exceeds_expected", "message": "326 images are flagged but only about 80 majority labels are "
     "expected to be wrong"},
]


def _with_warnings(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "warnings": WARNINGS,
                                                      "expected_wrong_majority": 80.4}))


def test_the_runs_warnings_show_on_the_train_and_review_pages(at, fake_run):
    """metrics.json's warnings (engine codes + messages) are shown as plain text where the run is judged."""
    _with_warnings(fake_run)
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    texts = [t.value for t in at.text]
    for w in WARNINGS:
        assert f"• {w['message']}" in texts
    assert {m.label: m.value for m in at.metric}["Expected label errors"] == "80"
    assert any("3 warnings from this run" in m.value for m in at.markdown)

    at.switch_page("views/review.py").run()
    at.text_input(key="rv_name_input").set_value("Dr T")
    next(b for b in at.form_submit_button if b.label == "Start reviewing").click().run()
    assert not at.exception, at.exception
    texts = [t.value for t in at.text]
    assert all(f"• {w['message']}" in texts for w in WARNINGS)


def test_a_run_without_warnings_shows_none(at, fake_run):
    at.run()
    at.switch_page("views/train.py").run()
    assert not any("from this run" in m.value for m in at.markdown)
    assert {m.label: m.value for m in at.metric}["Expected label errors"] == "—"


def test_the_cross_fitting_stage_reads_as_label_estimation_with_its_folds():
    from app.components.job_panel import progress_fraction, status_line

    status = {"state": "running", "stage": "crossfit", "fold": 2, "folds": 2, "epoch": 1, "of": 4}
    assert status_line(status) == "Label estimation (cross-fitting) · fold 2/2 · epoch 1/4"
    assert progress_fraction(status) == (1 + 1 / 4) / 2  # the second fold's first epoch, not back to 0 %


def test_a_resumed_job_is_running_before_its_process_writes_a_status(at, demo, workspace):
    """Between Resume and the engine's first status.json, the folder still holds the stopped run's 'cancelled':
    the job is running (its new process lives), and the store is not set back to cancelled."""
    run_dir = workspace / "runs" / "20250104-000000-ce"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "cancelled", "updated": time.time() - 5}))
    elsewhere = workspace / "other-out"  # the live process writes its own status somewhere else
    proc = subprocess.Popen([sys.executable, FAKE_ENGINE, str(demo), "--out", str(elsewhere)], start_new_session=True)
    try:
        with WorkspaceStore(workspace / "review.db") as store:
            store.register_run(run_dir, dataset=demo, method="ce", state="running", pid=proc.pid)
            record = store.get_run(run_dir)
        assert _wait(lambda: jobs.pid_alive(proc.pid, run_dir))
        assert jobs.view(record).state == "running"
        with WorkspaceStore(workspace / "review.db") as store:
            assert store.get_run(run_dir)["state"] == "running"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def _fake_nvidia_smi(tmp_path, monkeypatch, n: int) -> None:
    """An `nvidia-smi` on PATH that lists `n` GPUs (the app counts them without importing torch)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(n))
    script.write_text("#!/bin/sh\n" + lines)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_several_visible_gpus_are_offered_and_the_run_goes_through_torchrun(at, demo, workspace, fake_engine,
                                                                           tmp_path, monkeypatch):
    """Two GPUs visible: the form offers 1 or 2 (2 preselected) and the launch asks the engine for --nproc 2, which
    starts torchrun; the options parse into runtime.nproc = 2 (recorded in config.json, so Resume does the same)."""
    from engine.cli import build_parser
    from engine.commands.run import config_from_args
    from engine.launch import torchrun_command

    _fake_nvidia_smi(tmp_path, monkeypatch, 2)
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    gpus = at.selectbox(key="train_gpus")
    assert gpus.options == ["1", "2"] and gpus.value == 2
    _submit(at, schedule_epochs=2, schedule_warmup_epochs=1)
    argv = fake_engine[0]
    assert argv[argv.index("--nproc") + 1] == "2"
    cfg = config_from_args(build_parser().parse_args(["run", *argv]))
    assert cfg.runtime.nproc == 2
    cmd = torchrun_command(["run", *argv], cfg.runtime.nproc)
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    for r in WorkspaceStore(workspace / "review.db").list_runs():
        jobs.cancel(jobs.view(r))


def test_one_or_no_gpu_shows_no_gpu_choice(at, demo, workspace, tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, monkeypatch, 1)
    at.run()
    at.switch_page("views/train.py").run()
    assert not at.exception, at.exception
    assert not [s for s in at.selectbox if s.key == "train_gpus"]
    assert not [n for n in at.number_input if n.key == "train_runtime_nproc"]  # not a free number field either
