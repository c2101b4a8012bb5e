"""However the app is started, it listens on 127.0.0.1 only, with tracebacks and usage statistics off.

Streamlit reads `.streamlit/config.toml` from the working directory and from the folder of the main script; the
app's settings sit next to app/Home.py, so `cd /tmp && streamlit run /path/app/Home.py` is safe too.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.listening import listening_addresses

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from Linux's /proc")
def test_started_from_another_folder_the_app_listens_on_loopback_only(tmp_path):
    port = _free_port()
    env = {**os.environ, "ROP_WORKSPACE": str(tmp_path / "workspace")}
    env = {k: v for k, v in env.items() if not k.startswith("STREAMLIT_")}  # nothing from the caller's shell
    # no --server.address and no config in the working directory: only the app's own settings apply
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "Home.py"),
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not listening_addresses(port):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-2000:]
            time.sleep(0.2)
        assert listening_addresses(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_every_launch_path_pins_the_address():
    """Makefile and README start the app with --server.address 127.0.0.1; the Docker image binds 0.0.0.0 inside
    the container only, and its usage publishes the port on the host's loopback."""
    for name in ("Makefile", "README.md"):
        lines = [line for line in (ROOT / name).read_text().splitlines()
                 if re.search(r"streamlit run app/Home\.py", line) and not line.lstrip().startswith("#")]
        assert lines, name
        for line in lines:
            assert "--server.address 127.0.0.1" in line, (name, line)
    docker = (ROOT / "Dockerfile").read_text()
    assert "--server.address=0.0.0.0" in docker.splitlines()[-1]
    runs = [line for line in docker.splitlines() if "docker run" in line and " -p " in line]
    assert runs and all("-p 127.0.0.1:8501:8501" in line for line in runs)
    assert "docker run -p 127.0.0.1:8501:8501" in (ROOT / "README.md").read_text()
