"""`python -m engine predict RUNDIR IMAGES... --out PRED.csv`."""

from __future__ import annotations

HELP = "predict new images (files or folders; PNG/JPEG/TIFF/DICOM) with a finished run's model"


def add_parser(p) -> None:
    p.add_argument("run", help="run folder (or its model.pt)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="CSV to write: image, p:<class>..., predicted, confidence")
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then the CPU), cpu, cuda or mps")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")


def run(args) -> int:
    from engine import atomic
    from engine.predict import predict_images
    from engine.runtime import configure_threads

    configure_threads()
    frame = predict_images(args.run, args.images, batch_size=args.batch_size, device=args.device)
    atomic.write_csv(args.out, frame)
    counts = frame["predicted"].value_counts().to_dict()
    print(f"wrote {args.out}: {len(frame)} images; predicted {counts}")
    return 0
