"""The label benchmark's smoke run (`--quick`): every row is produced and its numbers are consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.methods import list_methods

ROOT = Path(__file__).resolve().parents[2]
PEERS = {"majority", "ce", "ce+finetune", "meta-only", "cleanlab", "crowdlab", "dawid-skene"}


@pytest.mark.slow
def test_quick_run_produces_every_row_with_consistent_scores(tmp_path):
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "bench.label_bench", "--quick", "--json", str(out), "--results",
                           str(tmp_path / "quick.md")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    rows = {r["row"]: r for r in results}
    want = PEERS | {f"{kind}:{m}" for m in list_methods() for kind in ("method", "pipeline", "refit")}
    assert set(rows) == want
    n_wrong = rows["majority"]["n_wrong"]
    n_train = round(n_wrong / (1 - rows["majority"]["recovery"]))
    for name, r in rows.items():
        assert r["n_wrong"] == n_wrong, name  # every row is scored on the same training rows
        assert 0 <= r["recovery"] <= 1 and 0 <= r["n_flagged"] <= n_train, name
        tp_from_precision, tp_from_recall = r["precision"] * r["n_flagged"], r["recall"] * n_wrong
        assert tp_from_precision == pytest.approx(tp_from_recall, abs=1e-6), name  # one count of true positives
        assert tp_from_recall == pytest.approx(round(tp_from_recall), abs=1e-6), name
        if r["test_acc"] is not None:
            assert 0 <= r["test_acc"] <= 1, name
    assert rows["majority"]["n_flagged"] == 0 and rows["majority"]["f1"] == 0
    # the product's row is the estimate on top of the method: same network, so the same test accuracy
    assert rows["pipeline:meta-finetune"]["test_acc"] == rows["ce+finetune"]["test_acc"]
    table = (tmp_path / "quick.md").read_text()
    assert "pipeline:meta-finetune" in table and "dawid-skene" in table
