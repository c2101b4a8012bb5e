"""`python -m engine export RUNDIR --out CLEANED.csv [--store DB]`: write a run's cleaned labels with provenance."""

from __future__ import annotations

HELP = "write a run's cleaned labels (review decisions applied) as CSV with a provenance JSON"


def add_parser(p) -> None:
    p.add_argument("run_dir", metavar="RUNDIR", help="run folder holding labels.csv")
    p.add_argument("--out", required=True, metavar="CLEANED.csv", help="CSV to write (atomically)")
    p.add_argument(
        "--store",
        default=None,
        metavar="DB",
        help="workspace database holding the review decisions (default: RUNDIR/review.db when it exists)",
    )


def run(args) -> int:
    from engine.export import counts_by_source, export_labels, provenance_path

    frame = export_labels(args.run_dir, store=args.store, out=args.out)
    print(f"wrote {len(frame)} rows to {args.out} (provenance: {provenance_path(args.out)})")
    for source, n in counts_by_source(frame).items():
        print(f"  {source:10s} {n}")
    return 0
