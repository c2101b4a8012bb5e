"""Before → after: what a retrain with reviewed labels changed, from the two run folders (the app's panel, `metrics`).

Rows (`MEASURES`): meta accuracy and test accuracy (a warm retrain keeps the earlier run's roles, so both are measured
on the same images), images flagged, wrong majority labels expected (Σ flag_score), verified images, and labels
changed = images whose estimated label (`suggested`) differs between the runs.
"""

from __future__ import annotations

from pathlib import Path

from engine.data import schema as S
from engine.rundir import RunDir

MEASURES = ("meta accuracy", "test accuracy", "images flagged", "wrong majority labels expected", "verified images",
            "labels changed")


def _n_verified(labels) -> int:
    return int(labels[S.VERIFIED].map(S.parse_bool).eq(True).sum())


def before_after(old_dir: Path | str, new_dir: Path | str) -> list[dict]:
    """[{"measure", "before", "after"}] in `MEASURES` order (None where a run lacks the number); "labels changed" has
    before = None and after = the count over the images both runs have."""
    from engine.export import read_labels

    old_m, new_m = RunDir(old_dir).read_metrics(), RunDir(new_dir).read_metrics()
    old_l, _ = read_labels(Path(old_dir) / "labels.csv")
    new_l, _ = read_labels(Path(new_dir) / "labels.csv")
    before = old_l.set_index(S.IMAGE)[S.SUGGESTED]
    after = new_l.set_index(S.IMAGE)[S.SUGGESTED]
    common = before.index.intersection(after.index)
    changed = int((before.loc[common] != after.loc[common]).sum())
    rows = [("meta accuracy", old_m.get("meta_acc"), new_m.get("meta_acc")),
            ("test accuracy", old_m.get("test_acc"), new_m.get("test_acc")),
            ("images flagged", old_m.get("n_flagged"), new_m.get("n_flagged")),
            ("wrong majority labels expected", old_m.get("expected_wrong_majority"), new_m.get("expected_wrong_majority")),
            ("verified images", _n_verified(old_l), _n_verified(new_l)),
            ("labels changed", None, changed)]
    return [{"measure": m, "before": b, "after": a} for m, b, a in rows]
