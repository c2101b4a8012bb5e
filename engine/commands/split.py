"""`python -m engine split DATASET --out ROLES.csv`: draw meta/test from consensus images, write image,role."""

from __future__ import annotations

HELP = (
    "split a dataset into meta/test/train/unlabeled: meta and test from consensus images, stratified by class, "
    "grouped by patient_id; writes a roles file (votes.csv is never changed)"
)

EPILOG = """\
sizes: a value >= 1 is a count, a value < 1 a fraction of the consensus images. If meta + test exceed 500/622
of the consensus images (the ROP study's share: 200 meta + 300 test of 622), both are scaled down in proportion,
e.g. meta = round(n_consensus*200/622). Every class with a consensus image gets at least one meta image. Roles
preset in votes.csv are kept and count towards the sizes."""


def add_parser(p) -> None:
    import argparse

    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("dataset", help="dataset folder holding votes.csv")
    p.add_argument(
        "--meta",
        type=float,
        default=200,
        help="meta-set size: count, or fraction (< 1) of consensus images (default 200)",
    )
    p.add_argument(
        "--test",
        type=float,
        default=300,
        help="test-set size: count, or fraction (< 1) of consensus images (default 300)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same split)")
    p.add_argument("--classes", default=None, help="comma-separated class order, e.g. normal,pre-plus,plus")
    p.add_argument("--out", required=True, help="roles file to write (columns image,role), e.g. roles.csv")


def run(args) -> int:
    from pathlib import Path

    from engine.data.aggregate import aggregate
    from engine.data.split import make_split, resolve_size, role_counts, split_warnings, write_roles
    from engine.data.votes import VOTES_FILE, read_votes
    from engine.errors import InputError, Problem

    out = Path(args.out)
    if out.name == VOTES_FILE or out.resolve() == (Path(args.dataset) / VOTES_FILE).resolve():
        raise InputError(
            Problem(
                str(out), "--out would overwrite a votes.csv", fix="write the roles to another file, e.g. roles.csv"
            )
        )
    problems = []
    for what, value in (("meta", args.meta), ("test", args.test)):
        try:
            resolve_size(value, 0, what)
        except InputError as err:
            problems += err.problems
    try:
        table = read_votes(args.dataset, classes=args.classes)
    except InputError as err:
        raise InputError([*problems, *err.problems]) from None
    if problems:
        raise InputError(problems)
    agg = aggregate(table)
    roles = make_split(table, agg, meta=args.meta, test=args.test, seed=args.seed)
    write_roles(out, table.frame["image"], roles)

    sizes = roles.attrs["sizes"]
    target = sizes["target"]
    scaled = " (scaled down: meta + test may use at most 500/622 of the consensus images)" if sizes["scaled"] else ""
    print(
        f"{len(roles)} images, {sizes['n_consensus']} consensus; target meta {target['meta']}, test {target['test']}"
        f"{scaled}; seed {args.seed}"
    )
    print(role_counts(roles, agg, table.classes).to_string())
    print(f"wrote {out}")
    notes = [*table.warnings, *split_warnings(roles, table)]
    if notes:
        print(f"warnings ({len(notes)})")
        for w in notes:
            print(f"  - {w}")
    return 0
