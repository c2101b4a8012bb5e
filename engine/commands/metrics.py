"""`python -m engine metrics RUNDIR [--store DB] [--json]`: a run's numbers, its flags' realised vs predicted precision
from the review decisions, and (for a retrain with --from-run) before -> after."""

from __future__ import annotations

HELP = "a run's accuracy, flags, realised vs predicted flag precision from the review decisions, and before -> after"


def add_parser(p) -> None:
    p.add_argument("run_dir", metavar="RUNDIR", help="a finished run folder (labels.csv, metrics.json)")
    p.add_argument("--store", default=None, metavar="DB",
                   help="workspace database holding the review decisions (default: RUNDIR/review.db when it exists)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def summary(run_dir, store=None) -> dict:
    """{"run", "method", "meta_acc", "test_acc", "n_flagged", "expected_wrong_majority", "flag_precision",
    "before_after" (None unless the run was warm-started from a run folder that still exists)}."""
    from pathlib import Path

    import pandas as pd

    from engine.compare import before_after
    from engine.export import open_store, read_labels
    from engine.flag_precision import flag_precision
    from engine.rundir import RunDir

    run_dir = Path(run_dir)
    labels, _ = read_labels(run_dir / "labels.csv")
    metrics = RunDir(run_dir).read_metrics()
    review_store, owned = open_store(run_dir, store)
    try:
        decisions = review_store.current_decisions(run_dir) if review_store is not None else pd.DataFrame(
            columns=["image", "new_label"])
    finally:
        if owned:
            review_store.close()
    old = (metrics.get("review") or {}).get("from_run") or ""
    return {"run": str(run_dir), "method": metrics.get("method"), "meta_acc": metrics.get("meta_acc"),
            "test_acc": metrics.get("test_acc"), "n_flagged": metrics.get("n_flagged"),
            "expected_wrong_majority": metrics.get("expected_wrong_majority"),
            "flag_precision": flag_precision(labels, decisions),
            "before_after": before_after(old, run_dir) if old and (Path(old) / "labels.csv").is_file() else None}


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def run(args) -> int:
    import json

    from engine.flag_precision import describe

    s = summary(args.run_dir, args.store)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"run {s['run']} ({s['method']})")
    print(f"  meta accuracy {_pct(s['meta_acc'])}, test accuracy {_pct(s['test_acc'])}")
    if s["n_flagged"] is not None:
        print(f"  flagged {s['n_flagged']} ({s['expected_wrong_majority'] or 0:.1f} wrong majority labels expected)")
    for line in describe(s["flag_precision"]):
        print(f"  {line}")
    if s["before_after"]:
        print("  before -> after (retrain with reviewed labels):")
        for row in s["before_after"]:
            b, a = row["before"], row["after"]
            fmt = _pct if "accuracy" in row["measure"] else (lambda v: "—" if v is None else f"{v:g}")
            print(f"    {row['measure']:32s} {fmt(b):>9s} -> {fmt(a)}")
    return 0
