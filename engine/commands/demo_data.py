"""`python -m engine demo-data OUT`: write a SYNTHETIC ROP-like dataset (images, votes of 3 simulated experts)."""

from __future__ import annotations

import time

HELP = "write a SYNTHETIC ROP-like demo dataset (fundus-like images, 3 simulated experts, a few DICOMs)"


def add_parser(p) -> None:
    p.add_argument("out", metavar="OUT", help="folder to create (must be new, empty, or an earlier demo)")
    p.add_argument("--n", type=int, default=400, help="number of images, two per patient [400]")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files [0]")
    p.add_argument("--size", type=int, default=256, help="image side in pixels [256]")
    p.add_argument("--n-aux", type=int, default=200, help="auxiliary DR-like images for pretraining [200]")


def run(args) -> int:
    from engine.data.demo import CLASSES, demo_stats, generate_demo

    start = time.perf_counter()
    out = generate_demo(args.out, n=args.n, seed=args.seed, size=args.size, n_aux=args.n_aux)
    stats = demo_stats(out)
    balance = ", ".join(f"{c} {k}" for c, k in stats["true_class_counts"].items())
    print(f"wrote a SYNTHETIC demo dataset (not real patients or images) to {out}")
    print(
        f"  {stats['n_images']} images of {stats['n_patients']} patients "
        f"({stats['n_dicom']} DICOM, {stats['n_jpeg']} JPEG, rest PNG), hidden classes: {balance}"
    )
    print(
        f"  3 simulated experts; unanimous on {stats['unanimous_fraction']:.1%} of images; "
        f"majority vote matches the hidden class on {stats['majority_matches_truth']:.1%}"
    )
    print(f"  classes in order of severity: --classes {','.join(CLASSES)}")
    print(f"  {stats['n_aux']} auxiliary DR-like images in {out / 'dr_aux'} (labels.csv: image, level)")
    print(
        f"  votes: {out / 'votes.csv'}   hidden truth: {out / 'ground_truth.csv'}   ({time.perf_counter() - start:.1f} s)"
    )
    return 0
