"""The review-simulation benchmark's --quick mode end to end (tiny data): the protocol, not the numbers."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench import review_sim

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("review_sim")
    results = out / "table.md"
    assert review_sim.main(["--quick", "--workers", "1", "--out", str(out), "--results", str(results)]) == 0
    return out, json.loads((out / "review_sim.json").read_text()), results.read_text()


def test_every_ordering_runs_its_rounds(quick):
    out, data, _ = quick
    rows = data["rows"]
    setup = review_sim.QUICK
    assert [r["round"] for r in rows if r["ordering"] == "none"] == [0]
    cell = json.loads((out / "seed0" / "cell.json").read_text())
    budget = round(setup.round_frac * len(cell["train"]))
    for o in review_sim.ORDERINGS:
        mine = sorted((r for r in rows if r["ordering"] == o), key=lambda r: r["round"])
        assert [r["round"] for r in mine] == list(range(1, setup.rounds + 1))
        assert [r["reviewed"] for r in mine] == [budget * k for k in range(1, setup.rounds + 1)]
        assert all(r["epochs"] == math.ceil(0.25 * setup.epochs) for r in mine)  # warm-started: a short schedule
    control = [r for r in rows if r["ordering"] == review_sim.CONTROL]
    assert sorted(r["round"] for r in control) == list(range(1, setup.rounds + 1))
    assert all(r["reviewed"] == 0 for r in control)  # the same retrains without reviews


def test_retrains_hold_the_reviewed_truth_and_orderings_differ(quick):
    out, _, _ = quick
    truth = json.loads((out / "seed0" / "cell.json").read_text())["truth"]
    chosen = {}
    for o in review_sim.ORDERINGS:
        folder = out / "seed0" / o
        reviewed = pd.read_csv(folder / f"reviewed{review_sim.QUICK.rounds}.csv")
        assert all(truth[i] == c for i, c in zip(reviewed["image"], reviewed["label"], strict=True))
        labels = pd.read_csv(folder / f"run{review_sim.QUICK.rounds}" / "labels.csv", keep_default_na=False)
        verified = labels[labels["verified"] == 1]
        assert set(verified["image"]) == set(reviewed["image"])
        assert (verified["suggested"] == verified["image"].map(truth)).all()
        config = json.loads((folder / "run1" / "config.json").read_text())
        assert config["review"]["from_run"] == str((out / "seed0" / "run0").resolve())
        chosen[o] = set(reviewed["image"])
    assert chosen["active"] != chosen["random"] and chosen["flag_score"] != chosen["random"]


def test_table_and_plot(quick):
    out, _, table = quick
    assert table.startswith("Review simulation,") and "| ordering | round | reviewed | label recovery %" in table
    assert "Retrain cost (`--from-run`)" in table and "active / random" in table and "| control | 1 | 0 % |" in table
    assert "| active | 1 | 5 % |" in table and "per seed" in table
    assert "vs the no-review control" in table
    png = (out / "review_sim.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
