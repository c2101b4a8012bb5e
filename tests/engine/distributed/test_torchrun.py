"""`torchrun --standalone --nproc_per_node 2 -m engine run` (gloo, CPU) for ce (the default), meta-finetune, mslg,
metalabelnet, mlc and o2u against one process on the same global batch, and a process killed in the middle of a run.

Setting: the 48-image tiny dataset with a roles file (24 training, 16 meta, 8 test images) and batch 8, chosen so
that every global batch of the run — training, meta, both cross-fitting folds, MLC's meta halves, O2U's kept rows
at forget rate 0.33 — splits into equal shards of at least 2 images: the one- and two-process runs then see the same
batches (engine.distributed: shards are trimmed to a multiple of the processes, and a last batch too small for
them is dropped). The backbone normalises per image (GroupNorm, timm's test_efficientnet_gn): with BatchNorm each
process would normalise its own half-batch with its own statistics, a real difference between the runs.

What is left is floating-point order: the mean of two half-batch gradients (summed by the all-reduce) instead of one
full-batch mean. It shows as a relative difference of about 1e-6 in the first epoch's loss and grows a little with
training; measured (2026-11-26) over the six methods: at most 1.7e-5 on the method's own soft labels
(`method_p:<class>`) and 2.1e-4 on the label estimate (`p:<class>`). The label estimate moves more because the
temperature fitted on the meta set's 16 out-of-sample logits sits in a flat optimum (a change of about 1e-5 in the probabilities
moved it from 6.2932 to 6.2882 for ce), and EM passes that on. Tolerances: 1e-4 on `method_p`, 1e-3 on `p` — five to
six times the measured difference, and far below what a sharding or synchronisation bug causes (measured: a
1-process run with global batch 6 instead of 8 differs by 0.37 on `p`; two processes without the all-reduce of the
look-ahead gradients in MSLG's meta step differ by 0.08 on `p` and 1.0 on `method_p`; the probabilities' spread here
is about 0.4). Test and meta accuracy and the flags must be equal.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from engine.cli import main
from engine.data import schema as S
from tests.engine.pipeline.tinydata import CLASSES, make_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
METHODS = {"ce": [], "meta-finetune": [], "mslg": [], "metalabelnet": [], "mlc": [], "o2u": ["--o2u-forget-rate", "0.33"]}
# max |p(1 process) − p(2 processes)| over the rows of labels.csv (see the module docstring)
TOLERANCE = {"method_p": 1e-4, "p": 1e-3}
TIMEOUT_S = 240  # a run that takes longer has hung
VIA_NPROC = ("ce", "meta-finetune")  # these two-process runs start as `engine run --nproc 2`, the others by torchrun


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny dataset and its roles: per class, meta = the consensus images of 3 patients (2 for 'plus'), test =
    the rest of its consensus images, train = the split votes (every odd image)."""
    root = make_dataset(tmp_path_factory.mktemp("dist") / "ds")
    rows = ["image,role"]
    for k, cls in enumerate(CLASSES):
        n_meta = 12 if k < 2 else 8  # images 0..n_meta-2 (even = consensus) -> meta; the other even ones -> test
        for j in range(16):
            name = f"img/{cls}_{j}.dcm" if j == 0 else f"img/{cls}_{j}.png"
            role = "train" if j % 2 else ("meta" if j < n_meta else "test")
            rows.append(f"{name},{role}")
    roles = root.parent / "roles.csv"
    roles.write_text("\n".join(rows) + "\n")
    return root, roles


def run_args(data: tuple[Path, Path], out: Path, method: str, *extra: str) -> list[str]:
    dataset, roles = data
    return ["run", str(dataset), "--out", str(out), "--method", method, "--classes", ",".join(CLASSES),
            "--roles", str(roles), "--backbone", "test_efficientnet_gn", "--image-size", "32", "--epochs", "4",
            "--warmup-epochs", "2", "--batch-size", "8", "--lr", "0.02", "--lr-milestones", "",
            "--cache-dir", str(dataset.parent / "cache"), *METHODS[method], *extra]


def torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "engine", *args]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(args), cwd=ROOT, env=environment(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def engine_nproc(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m engine run ... --nproc 2`: the engine starts torchrun itself (README's single-machine command)."""
    return subprocess.run([sys.executable, "-m", "engine", *args, "--nproc", "2"], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def labels(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "labels.csv", keep_default_na=False)


def probability_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """{"p": the label estimate's columns, "method_p": the method's soft labels' columns}."""
    return {"p": [c for c in frame.columns if c.startswith(S.prob_col(""))],
            "method_p": [c for c in frame.columns if c.startswith(S.method_prob_col(""))]}


def assert_close(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    """Same rows in the same order, every probability within TOLERANCE, the same suggested labels and flags."""
    assert len(b) == 48 and b[S.IMAGE].is_unique and list(b[S.IMAGE]) == list(a[S.IMAGE])
    for kind, columns in probability_columns(b).items():
        assert len(columns) == len(CLASSES)
        worst = (a[columns] - b[columns]).abs().to_numpy().max()
        assert worst < TOLERANCE[kind], f"{what}: max |Δ{kind}| = {worst:.2e}"
    assert (a[S.SUGGESTED] == b[S.SUGGESTED]).all() and (a["flag"] == b["flag"]).all()


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """runs(method) -> (one-process run folder, two-process run folder), each trained once per module."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(method: str) -> tuple[Path, Path]:
        if method not in done:
            base = tmp_path_factory.mktemp(method)
            one, two = base / "one", base / "two"
            assert main(run_args(dataset, one, method)) == 0
            launch = engine_nproc if method in VIA_NPROC else torchrun
            proc = launch(run_args(dataset, two, method))
            assert proc.returncode == 0, proc.stderr[-4000:]
            assert proc.stdout.count("done: ") == 1  # process 0 alone says where the results are
            done[method] = one, two
        return done[method]

    return get


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_write_every_row_once_and_match_one_process(runs, method):
    one, two = runs(method)
    assert_close(labels(one), labels(two), method)
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["runtime"]["nproc"] == 2
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert mb["test_acc"] == ma["test_acc"] and mb["meta_acc"] == ma["meta_acc"]
    assert [h["epoch"] for h in mb["history"]] == [h["epoch"] for h in ma["history"]]
    for ha, hb in zip(ma["history"], mb["history"], strict=True):  # the epoch's loss: the global batch's mean
        assert hb["loss"] == pytest.approx(ha["loss"], rel=1e-4, abs=1e-5)
        assert hb["allreduce_mb"] > 0 and "allreduce_mb" not in ha


def test_a_retrain_with_reviews_on_two_processes_matches_one_process(runs, tmp_path):
    """`run --from-run OLD --reviewed CSV --nproc 2`: the warm start (model, fold networks) and the verified labels
    reach every process; the labels match a one-process retrain and mark the reviewed images verified."""
    old, _ = runs("meta-finetune")
    train = labels(old)[lambda f: f[S.ROLE] == S.TRAIN]
    picked = train.sort_values(S.FLAG_SCORE, ascending=False).head(3)
    reviewed = {img: CLASSES[(CLASSES.index(m) + 1) % 3] for img, m in zip(picked[S.IMAGE], picked[S.MAJORITY],
                                                                           strict=True)}
    csv = tmp_path / "reviewed.csv"
    csv.write_text("image,label\n" + "".join(f"{i},{c}\n" for i, c in reviewed.items()))
    one, two = tmp_path / "one", tmp_path / "two"
    args = ["--from-run", str(old), "--reviewed", str(csv)]
    assert main(["run", "--out", str(one), *args]) == 0
    proc = engine_nproc(["run", "--out", str(two), *args])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_close(labels(one), labels(two), "retrain")
    frame = labels(two).set_index(S.IMAGE)
    assert set(frame.index[frame[S.VERIFIED] == 1]) == set(reviewed)
    assert all(frame.loc[i, S.SUGGESTED] == c for i, c in reviewed.items())
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["warm_start"]["from_run"] == str(old.resolve())
    assert json.loads((two / "metrics.json").read_text())["estimator"]["folds_warm_started"] is True


@pytest.mark.parametrize("method", ["mslg"])
def test_process_zero_alone_writes_the_run_folder(runs, method):
    _, two = runs(method)
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["runtime"]["nproc"] == 2
    names = {p.name for p in two.iterdir()}
    assert {"labels.csv", "metrics.json", "model.pt", "checkpoint.pt", "crossfit.pt", "log.txt",
            "log.rank1.txt"} <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]  # no leftovers of concurrent writes
    rank1 = (two / "log.rank1.txt").read_text()
    assert "process 1 of 2" in rank1 and "epoch 4/4" in rank1  # its own view of the run
    log = (two / "log.txt").read_text()
    assert "process 0 of 2" in log and "process 1 of 2" not in log
    assert json.loads((two / "status.json").read_text())["state"] == "done"


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _pid_of_rank(run: Path, rank: int) -> int | None:
    try:
        text = (run / f"log.rank{rank}.txt").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if f"process {rank} of" in line and ", pid " in line:
            return int(line.split(", pid ")[1].split(":")[0])
    return None


def test_a_killed_process_fails_the_run_clearly_and_its_checkpoint_resumes(runs, dataset, tmp_path):
    """Process 1 is killed (SIGKILL) after the first checkpoint: the run stops at once (no hang), status.json says
    which process died and that --resume continues; resuming on 2 processes gives exactly the uninterrupted run's
    labels, and on 1 process (another number of processes) the same within the tolerance."""
    run = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_command(run_args(dataset, run, "mslg")), cwd=ROOT, env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _pid_of_rank(run, 1) is not None, TIMEOUT_S, "process 1's pid", proc)
        _wait_for(lambda: (run / "checkpoint.pt").is_file(), TIMEOUT_S, "the first checkpoint", proc)
        os.kill(_pid_of_rank(run, 1), signal.SIGKILL)
        started = time.monotonic()
        proc.wait(timeout=60)
        stopped_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and stopped_after < 60
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed", status
    assert "training process 1 stopped unexpectedly" in status["message"] and "--resume" in status["message"]
    assert not (run / "labels.csv").exists()
    assert "failed: training process 1 stopped unexpectedly" in (run / "log.txt").read_text()

    saved = tmp_path / "saved"
    shutil.copytree(run, saved)
    proc = torchrun(run_args(dataset, run, "mslg", "--resume"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, uninterrupted = runs("mslg")
    pd.testing.assert_frame_equal(labels(run), labels(uninterrupted))

    shutil.rmtree(run)  # the same interrupted folder again (config.json names it), now resumed by one process
    shutil.copytree(saved, run)
    assert main(run_args(dataset, run, "mslg", "--resume")) == 0
    assert "the checkpoint was written by 2" in (run / "log.txt").read_text()
    assert json.loads((run / "config.json").read_text())["world_size"] == 1
    assert_close(labels(uninterrupted), labels(run), "resumed on 1 process")


def test_a_one_process_checkpoint_resumes_on_two_processes(runs, dataset, tmp_path):
    """A 1-process run killed after its first checkpoint, resumed by torchrun on 2 processes: it finishes with the
    uninterrupted 1-process run's labels within the tolerance, and config.json records the 2 processes."""
    run = tmp_path / "one_then_two"
    proc = subprocess.Popen([sys.executable, "-m", "engine", *run_args(dataset, run, "mslg")], cwd=ROOT,
                            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run / "checkpoint.pt").is_file(), TIMEOUT_S, "the first checkpoint", proc)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (run / "labels.csv").exists()
    resumed = torchrun(run_args(dataset, run, "mslg", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "the checkpoint was written by 1: the batches from here are split 2 ways" in (run / "log.txt").read_text()
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    one, _ = runs("mslg")
    assert_close(labels(one), labels(run), "resumed on 2 processes")


def test_a_hung_process_stops_the_run_after_the_timeout_with_a_clear_message(dataset, tmp_path):
    """Process 1 stops answering (SIGSTOP) after the first checkpoint: process 0 waits --dist-timeout (8 s) at its
    next all-reduce, then says so in status.json, and torchrun ends the job (it kills the stopped process after a
    fixed 30 s grace period: torch 2.14's agent ignores --shutdown-timeout when a worker fails); nothing hangs."""
    run = tmp_path / "hung"
    args = run_args(dataset, run, "mslg", "--dist-timeout", "8")
    proc = subprocess.Popen(torchrun_command(args), cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    pid = None
    try:
        _wait_for(lambda: _pid_of_rank(run, 1) is not None, TIMEOUT_S, "process 1's pid", proc)
        _wait_for(lambda: (run / "checkpoint.pt").is_file(), TIMEOUT_S, "the first checkpoint", proc)
        pid = _pid_of_rank(run, 1)
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        proc.wait(timeout=90)
        stopped_after = time.monotonic() - started
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and 8 <= stopped_after < 90
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed", status
    assert "did not answer within --dist-timeout 8 s" in status["message"] and "--resume" in status["message"]
    assert not (run / "labels.csv").exists()
