"""The app stays light: no page imports torch or timm (AppTest's default timeout is 3 s; the server stays small)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = str(ROOT / "app" / "Home.py")

SCRIPT = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({HOME!r}, default_timeout=60).run()
for page in ["views/data.py", "views/meta.py", "views/train.py", "views/review.py", "views/export.py",
             "views/overview.py"]:
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
heavy = sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_pages_do_not_import_torch(workspace, demo, fake_run):
    """Every page on a demo dataset and a finished run (Train reads the method list through the CLI)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout, out.stdout
