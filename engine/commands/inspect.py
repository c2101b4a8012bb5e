"""`python -m engine inspect DATASET`: validate votes.csv and images, print counts, agreement and kappa."""

from __future__ import annotations

HELP = "check a dataset (votes.csv + images) and summarise it: class balance, unanimity, kappa, per-expert agreement"


def add_parser(p) -> None:
    p.add_argument("dataset", help="dataset folder holding votes.csv")
    p.add_argument(
        "--classes",
        default=None,
        help="comma-separated class order, least to most severe "
        "(ties go to the later class), e.g. normal,pre-plus,plus (default: sorted values seen)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (NaN written as null)")


def run(args) -> int:
    import json

    from engine.data.report import format_report, inspect_dataset

    rep = inspect_dataset(args.dataset, classes=args.classes)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(format_report(rep), end="")
    return 0
