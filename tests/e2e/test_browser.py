"""End to end in a real browser: demo dataset -> meta set -> a tiny training run -> review (picking an earlier
decision from the history, switching a filter) -> export -> predict two new images -> a second run seen again after
a reload, cancelled.

Streamlit's own pattern: `streamlit run` on a free port with a temp workspace, poll /_stcore/health, wait until the
script is idle (no status widget, no loading skeletons), then act and assert. Debian's chromium (`make test`
installs it) is driven by Playwright's Python package; no browser is downloaded.

Screenshots of every page go to docs/screenshots/<page>.png (used by the README) and to the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.listening import listening_addresses

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CLASSES = ["normal", "pre-plus", "plus"]
TINY_RUN = {"Image size": "32", "Epochs": "2", "Warm-up epochs": "1", "Batch size": "32"}
TRAIN_TIMEOUT_S = 900  # a 2-epoch run on 400 images of 32 px on a shared 2-core CPU takes a few minutes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _stop_jobs(workspace: Path) -> None:
    """Stop training runs the app started (their own process groups) if the test ended early."""
    db = workspace / "review.db"
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT pid FROM runs WHERE state IN ('queued', 'running') AND pid IS NOT NULL").fetchall()
    for (pid,) in rows:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (scripts/ensure-chromium), or "
                    "`apt-get install -y chromium`")
    workspace = tmp_path_factory.mktemp("workspace")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workspace.parent / "streamlit.log", "wb")  # noqa: SIM115 - closed in the teardown
    # Started from a folder other than the repository root and without --server.address: the app's own
    # settings (app/.streamlit/config.toml) must still keep it on 127.0.0.1 (test_listens_on_loopback_only).
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"), "--server.headless", "true",
         "--server.port", str(port)],
        cwd=workspace.parent, env={**env, "ROP_WORKSPACE": str(workspace)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    deadline = time.monotonic() + 90
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            pytest.fail("streamlit did not start:\n" + (workspace.parent / "streamlit.log").read_text()[-3000:])
        time.sleep(0.5)
    yield {"url": url, "workspace": workspace, "port": port}
    _stop_jobs(workspace)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1500})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def idle(pg, timeout: float = 120.0) -> None:
    """Wait until the script run is over: no 'running' status widget and no loading skeleton for ~1 s."""
    time.sleep(0.4)
    quiet, deadline = 0, time.monotonic() + timeout
    while quiet < 4:
        if time.monotonic() > deadline:
            raise TimeoutError("the app did not become idle")
        busy = pg.locator('[data-testid="stStatusWidget"], [data-testid="stSkeleton"]').count()
        quiet = quiet + 1 if busy == 0 else 0
        time.sleep(0.25)
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator('[data-testid="stException"]').inner_text()


def shot(pg, name: str, tmp: Path) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pg.mouse.move(0, 0)  # no hover tooltips in the pictures
    time.sleep(0.3)
    pg.screenshot(path=str(tmp / f"{name}.png"))
    pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def nav(pg, title: str) -> None:
    """Client-side navigation through the sidebar (keeps the browser session and its state)."""
    pg.locator('[data-testid="stSidebarNav"] a', has_text=title).first.click()
    idle(pg)


def pick_row(pg, table, row: int) -> None:
    """Select a row of a st.dataframe (a canvas grid) by clicking its row-selection cell at the left."""
    table.scroll_into_view_if_needed()
    box = table.bounding_box()
    header = row_height = 35  # Streamlit's default row height, the header row included
    pg.mouse.click(box["x"] + 12, box["y"] + header + row * row_height + row_height / 2)
    idle(pg)


def heading(pg) -> str:
    return pg.locator("h4").first.inner_text().strip()


def new_runs(workspace: Path, known: tuple[Path, ...], timeout: float = 60.0) -> list[Path]:
    """The runs in the job registry other than `known`, once there is at least one (the app registers a job a moment
    after the click's script run, which `idle` may not wait for); [] after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(workspace / "review.db") as conn:
            runs = [Path(r[0]) for r in conn.execute("SELECT run_dir FROM runs") if Path(r[0]) not in known]
        if runs or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def wait_state(run_dir: Path, states: tuple[str, ...], timeout: float) -> dict:
    """status.json once its state is one of `states` (or the last one read when the time is up)."""
    deadline, status = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        if (run_dir / "status.json").exists():
            try:
                status = json.loads((run_dir / "status.json").read_text())
            except ValueError:
                status = {}
            if status.get("state") in states:
                break
        time.sleep(1)
    return status


def test_listens_on_loopback_only(server):
    """Nothing on the network can reach the app, though it was started outside the repository root."""
    assert listening_addresses(server["port"]) == {"127.0.0.1"}


def test_demo_to_export_in_a_browser(server, page, tmp_path):
    try:
        _flow(page, server["url"], server["workspace"], tmp_path)
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(f"screenshot of the failure: {tmp_path / 'failure.png'}; app log: {server['workspace'] / 'app.log'}")
        raise


def _flow(pg, url: str, workspace: Path, tmp_path: Path) -> None:
    # A deep link as the very first request of a fresh server must go through the navigation frame too
    # (a folder named app/pages/ once made Streamlit run the page script bare, which failed).
    pg.goto(url.rstrip("/") + "/review")
    pg.get_by_text("4 · Review").first.wait_for()
    idle(pg)
    assert pg.get_by_text("This app has encountered an error").count() == 0
    pg.goto(url)
    pg.get_by_text("ROP label review").first.wait_for()
    idle(pg)

    # 1. Data: the demo dataset in one click (generated into the workspace)
    nav(pg, "1 · Data")
    pg.get_by_role("button", name="Open the demo dataset").click()
    pg.get_by_text("SYNTHETIC demo data.").first.wait_for(timeout=300_000)
    idle(pg)
    assert (workspace / "datasets" / "demo" / "votes.csv").is_file()
    assert pg.get_by_text("normal → pre-plus → plus").count() >= 1
    shot(pg, "data", tmp_path)
    pg.get_by_role("tab", name="Agreement").click()
    idle(pg)
    chart = pg.locator('[data-testid="stVegaLiteChart"]').first
    chart.wait_for()
    assert chart.bounding_box()["height"] > 120  # the class balance chart, not a collapsed strip

    # 2. Meta set: propose, save
    nav(pg, "2 · Meta set")
    pg.get_by_role("button", name="Propose meta and test sets").click()
    idle(pg)
    pg.get_by_role("button", name="Save meta and test sets").click()
    pg.get_by_text("Saved — training uses these sets.").wait_for()
    idle(pg)
    roles_files = list((workspace / "roles").glob("*.csv"))
    assert len(roles_files) == 1
    shot(pg, "meta", tmp_path)

    # 3. Train: a tiny run of the default method through the form, watched until it is done
    nav(pg, "3 · Train")
    pg.get_by_text("Uses your saved meta set").wait_for()
    pg.get_by_role("button", name="Launch training").wait_for(timeout=120_000)  # the method list comes from the CLI
    for label, value in TINY_RUN.items():
        box = pg.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")
    pg.get_by_role("button", name="Launch training").click()
    idle(pg)
    pg.get_by_text(re.compile(r"Starting|Setting up|Warm-up|Main phase|Done in")).first.wait_for(timeout=120_000)
    with sqlite3.connect(workspace / "review.db") as conn:  # the job registry (the folder appears a bit later)
        runs = [Path(r[0]) for r in conn.execute("SELECT run_dir FROM runs")]
    assert len(runs) == 1
    run_dir = runs[0]
    status = wait_state(run_dir, ("done", "failed", "cancelled"), TRAIN_TIMEOUT_S)
    assert status.get("state") == "done", (status, (run_dir / "log.txt").read_text()[-3000:]
                                           if (run_dir / "log.txt").exists() else "no log")
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["data"]["image_size"], config["schedule"]["epochs"], config["schedule"]["batch_size"]) == (32, 2, 32)
    assert config["data"]["roles"] == str(roles_files[0])
    pg.get_by_text("Done in").first.wait_for(timeout=60_000)  # the live panel noticed by itself
    idle(pg)
    shot(pg, "train", tmp_path)

    # 4. Review: override one flagged image with another class
    pg.get_by_role("button", name="Review the flagged images of this run").click()
    idle(pg)
    pg.get_by_label("Your name").fill("Dr E2E")
    pg.get_by_role("button", name="Start reviewing").click()
    idle(pg)
    first = heading(pg)
    majority_text = pg.get_by_text(re.compile(r"^Majority vote:")).first.inner_text()
    majority = majority_text.split(":", 1)[1].split("·")[0].strip()
    labels = pd.read_csv(run_dir / "labels.csv", keep_default_na=False)
    row = labels[labels["image"].str.endswith("/" + first) | (labels["image"] == first)].iloc[0]
    assert row["flag"] == 1 and row["majority"] == majority
    choice = next(c for c in reversed(CLASSES) if c != majority)
    shot(pg, "review", tmp_path)
    pg.get_by_role("button", name=re.compile(rf"^{re.escape(choice)}\s+\[\d\]$")).click()
    idle(pg)
    assert pg.get_by_text(re.compile(r"^1 of \d+ reviewed$")).count() == 1
    second = heading(pg)
    assert second != first  # moved on to the next flagged image
    pg.locator("body").press("m")  # keyboard shortcut: keep the majority
    idle(pg)
    assert pg.get_by_text(re.compile(r"^2 of \d+ reviewed$")).count() == 1
    third = heading(pg)

    # (a) an earlier decision picked in the history shows that image, in this run of the page, without an error
    pg.get_by_role("tab", name=re.compile(r"^Decision history")).click()
    pick_row(pg, pg.locator('[data-testid="stDataFrame"]').last, 1)  # newest first: row 1 = the first decision
    assert heading(pg) == first
    assert pg.get_by_text("Current decision").count() == 1
    # (b) a new filter lands on the first image of its list: the two reviewed ones, in queue order
    pg.get_by_role("radio", name="reviewed", exact=True).click()
    idle(pg)
    assert heading(pg) == first
    assert pg.get_by_text(re.compile(r"^1 of 2 in this list")).count() == 1
    pg.get_by_role("radio", name="to review", exact=True).click()
    idle(pg)
    assert heading(pg) == third
    pg.locator("body").press("a")  # keyboard shortcut: accept the suggestion
    idle(pg)
    assert pg.get_by_text(re.compile(r"^3 of \d+ reviewed$")).count() == 1
    assert pg.get_by_text(re.compile(r"^Flag precision so far: \d of 3 reviewed flags changed")).count() == 1

    # 5. Export: written into the run folder, holding the override with source=review
    nav(pg, "5 · Export")
    pg.get_by_role("button", name="Export cleaned labels").click()
    pg.get_by_text("Written to").first.wait_for()
    idle(pg)
    shot(pg, "export", tmp_path)
    exported = pd.read_csv(run_dir / "labels_cleaned.csv", keep_default_na=False).set_index("image")
    assert exported.loc[row["image"], "final_label"] == choice
    assert exported.loc[row["image"], "source"] == "review"
    assert exported.loc[row["image"], "reviewer"] == "Dr E2E"
    assert (exported["source"] == "review").sum() == 3  # the override, the kept majority, the accepted suggestion
    reviewed = {img: exported.loc[img, "final_label"] for img in exported.index[exported["source"] == "review"]}
    assert any(img.endswith("/" + third) or img == third for img in reviewed)

    # 6. Retrain with the 3 reviews: a warm-started run; its labels.csv marks them verified; before -> after
    pg.get_by_role("button", name="Retrain with my 3 reviews").click()
    idle(pg)
    retrains = new_runs(workspace, (run_dir,))
    assert len(retrains) == 1
    new_dir = retrains[0]
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    status = {}
    while time.monotonic() < deadline:
        if (new_dir / "status.json").exists():
            status = json.loads((new_dir / "status.json").read_text())
            if status.get("state") in ("done", "failed", "cancelled"):
                break
        time.sleep(3)
    assert status.get("state") == "done", (status, (new_dir / "log.txt").read_text()[-3000:]
                                           if (new_dir / "log.txt").exists() else "no log")
    new_config = json.loads((new_dir / "config.json").read_text())
    assert new_config["review"]["from_run"] == str(run_dir) and new_config["schedule"]["warmup_epochs"] == 0
    new_labels = pd.read_csv(new_dir / "labels.csv", keep_default_na=False).set_index("image")
    assert set(new_labels.index[new_labels["verified"] == 1]) == set(reviewed)
    for img, label in reviewed.items():
        assert new_labels.loc[img, "suggested"] == label
    pg.get_by_text("Before → after").first.wait_for(timeout=60_000)
    idle(pg)
    table = pg.locator('[data-testid="stTable"]').filter(has_text="verified images")
    assert table.count() == 1
    assert re.search(r"test accuracy\s+\d+\.\d %\s+\d+\.\d %", table.inner_text())
    assert re.search(r"verified images\s+0\s+3", table.inner_text())
    table.scroll_into_view_if_needed()
    shot(pg, "retrain", tmp_path)

    # (d) predict two new images (a PNG and a DICOM) with the run's model, from the app
    nav(pg, "Predict")
    images = sorted((workspace / "datasets" / "demo" / "images").iterdir())
    two = [next(p for p in images if p.suffix == ".png"), next(p for p in images if p.suffix == ".dcm")]
    pg.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files([str(p) for p in two])
    idle(pg)
    pg.get_by_role("button", name="Predict the uploaded images").click()
    pg.get_by_text("Predicted 2 images.").wait_for(timeout=180_000)
    idle(pg)
    (request,) = list((workspace / "predictions").iterdir())
    predictions = pd.read_csv(request / "predictions.csv", keep_default_na=False)
    assert sorted(predictions["image"].str.split("/").str[-1]) == sorted(p.name for p in two)
    assert set(predictions["predicted"]) <= set(CLASSES)
    shot(pg, "predict", tmp_path)

    # (c) a reload during a run comes back to that run (not to the finished one), which can then be cancelled
    nav(pg, "3 · Train")
    pg.get_by_text("New run").first.click()
    pg.get_by_role("button", name="Launch training").wait_for(timeout=120_000)
    for label, value in {**TINY_RUN, "Epochs": "40"}.items():
        box = pg.get_by_label(label, exact=True)
        box.fill(value)
        box.press("Tab")
    pg.get_by_role("button", name="Launch training").click()
    idle(pg)
    (second_run,) = new_runs(workspace, (run_dir, new_dir))  # new_dir: the retrain of step 6
    assert wait_state(second_run, ("running",), 120).get("stage") in ("setup", "warmup", "main")
    pg.reload()
    pg.get_by_text(second_run.name).first.wait_for(timeout=60_000)
    idle(pg)
    method = config["runtime"]["method"]  # the panel's title reads "<run> · <method> · <state>"
    title = pg.locator('[data-testid="stMarkdownContainer"]', has_text=f"{second_run.name} · {method}").first
    assert "running" in title.inner_text()  # the panel's title: the running run, not the finished one
    assert pg.locator('[data-testid="stMarkdownContainer"]', has_text=f"{run_dir.name} · {method}").count() == 0
    pg.get_by_role("button", name="Cancel run").click()
    assert wait_state(second_run, ("cancelled", "done", "failed"), 120).get("state") in ("cancelled", "done")
    idle(pg)

    nav(pg, "Overview")
    shot(pg, "overview", tmp_path)
