"""`inspect_dataset`: everything `engine inspect` and the app show about a dataset, as one JSON-ready dict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data import schema as S
from engine.data.aggregate import (
    MajorityVote,
    confusion_vs_majority,
    expert_agreement_arrays,
    fleiss_kappa_votes,
    pairwise_kappa,
)
from engine.data.votes import is_severity_scale, read_votes

# keys of the inspect report (the --json schema; the app reads these)
REPORT_KEYS = (
    "dataset",
    "classes",
    "experts",
    "counts",
    "graders_per_image",
    "class_balance",
    "unanimity_rate",
    "kappa",
    "ordinal",
    "experts_table",
    "confusion",
    "warnings",
)
EXPERT_COLUMNS = ("expert", "n_graded", "agree_majority", "n_consensus_others", "agree_consensus", "kappa_mean")


def _num(x):
    """numpy scalar -> Python; NaN/inf -> None (valid JSON)."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def inspect_dataset(
    dataset: Path | str, *, classes: str | Sequence[str] | None = None, check_images: bool = True
) -> dict:
    """Validate DATASET and summarise it (JSON-ready: NaN -> None). Raises InputError on bad input.

    `check_images=False` skips decoding every image (faster on big datasets; paths are still checked).
    Keys: see REPORT_KEYS. `unanimity_rate` = consensus images / graded images; kappa: pairwise Cohen's (images
    both graded), Fleiss' (images all experts graded); `confusion[expert]` is (K, K), rows = majority class.
    """
    table = read_votes(dataset, classes=classes, check_images=check_images)
    votes = table.votes_matrix()
    k = table.n_classes
    mv = MajorityVote().fit(votes, k)
    graded = mv.n_graders_ > 0
    n_graded = int(graded.sum())
    n_cons = int(mv.consensus_.sum())
    patients = table.frame[S.PATIENT_ID]
    roles = table.frame[S.ROLE].replace("", "unset")

    kappa, common = pairwise_kappa(votes, k)
    fleiss, n_full = fleiss_kappa_votes(votes, k)
    ordinal = is_severity_scale(table.classes)
    weighted = {w: pairwise_kappa(votes, k, weights=w)[0] for w in ("linear", "quadratic")} if ordinal else {}
    off = kappa[~np.eye(len(kappa), dtype=bool)]
    off = off[np.isfinite(off)]
    stats = expert_agreement_arrays(votes, k)
    kappa_off = kappa.copy()
    np.fill_diagonal(kappa_off, np.nan)
    experts_table = []
    for j, e in enumerate(table.experts):
        row_k = kappa_off[j][np.isfinite(kappa_off[j])]
        experts_table.append(
            {
                "expert": e,
                **{
                    key: _num(stats[key][j])
                    for key in ("n_graded", "agree_majority", "n_consensus_others", "agree_consensus")
                },
                "kappa_mean": _num(row_k.mean()) if len(row_k) else None,
            }
        )
    conf = confusion_vs_majority(votes, k)
    hist = np.bincount(mv.n_graders_, minlength=len(table.experts) + 1)

    return {
        "dataset": str(table.root),
        "classes": list(table.classes),
        "experts": list(table.experts),
        "counts": {
            "images": len(table.frame),
            "graded": n_graded,
            "unlabeled": int((~graded).sum()),
            "consensus": n_cons,
            "ties": int(mv.tie_.sum()),
            "single_grader": int((mv.n_graders_ == 1).sum()),
            "grades": int((votes >= 0).sum()),
            "experts": len(table.experts),
            "patients": int(patients[patients != ""].nunique()),
            "roles": {r: int(n) for r, n in roles.value_counts().sort_index().items()},
        },
        "graders_per_image": {str(i): int(n) for i, n in enumerate(hist) if n},
        "class_balance": {
            "majority": {c: int(((mv.labels_ == i) & graded).sum()) for i, c in enumerate(table.classes)},
            "consensus": {c: int(((mv.labels_ == i) & mv.consensus_).sum()) for i, c in enumerate(table.classes)},
        },
        "unanimity_rate": _num(n_cons / n_graded) if n_graded else None,
        "kappa": {
            "pairwise": {
                a: {b: _num(kappa[i, j]) for j, b in enumerate(table.experts)} for i, a in enumerate(table.experts)
            },
            "n_common": {
                a: {b: int(common[i, j]) for j, b in enumerate(table.experts)} for i, a in enumerate(table.experts)
            },
            "mean_pairwise": _num(off.mean()) if len(off) else None,
            "fleiss": _num(fleiss),
            "fleiss_n_images": n_full,
            # ordinal scales: Cohen's weighted kappa, where a normal<->plus disagreement costs more than an adjacent one
            **{f"mean_pairwise_{w}": _mean_off_diagonal(kw) for w, kw in weighted.items()},
            **{f"pairwise_{w}": {a: {b: _num(kw[i, j]) for j, b in enumerate(table.experts)}
                                 for i, a in enumerate(table.experts)} for w, kw in weighted.items()},
        },
        "ordinal": ordinal,
        "experts_table": experts_table,
        "confusion": {e: conf[j].tolist() for j, e in enumerate(table.experts)},
        "warnings": [str(w) for w in table.warnings],
    }


def _mean_off_diagonal(kappa: np.ndarray) -> float | None:
    off = kappa[~np.eye(len(kappa), dtype=bool)]
    off = off[np.isfinite(off)]
    return _num(off.mean()) if len(off) else None


def _fmt(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_report(rep: dict) -> str:
    """Human-readable text of an `inspect_dataset` dict (tables via pandas), warnings last."""
    c = rep["counts"]
    classes, experts = rep["classes"], rep["experts"]
    lines = [
        f"dataset: {rep['dataset']}",
        f"images: {c['images']} (graded {c['graded']}, nobody graded {c['unlabeled']}); experts: {c['experts']}; "
        f"grades: {c['grades']}; patients: {c['patients'] or 'no patient_id'}",
        f"classes (ties go to the later one): {', '.join(classes)}",
        "graders per image: " + ", ".join(f"{k}: {v}" for k, v in rep["graders_per_image"].items()),
        f"unanimity rate: {_fmt(rep['unanimity_rate'])} ({c['consensus']} consensus images of {c['graded']} graded); "
        f"ties: {c['ties']}; single grader: {c['single_grader']}",
        "roles in votes.csv: " + ", ".join(f"{k}: {v}" for k, v in c["roles"].items()),
        "",
        "class balance",
        pd.DataFrame(rep["class_balance"]).reindex(classes).to_string(),
        "",
        "Cohen's kappa (pairwise, on images both experts graded)",
        pd.DataFrame(rep["kappa"]["pairwise"])
        .reindex(index=experts, columns=experts)
        .to_string(float_format=lambda v: f"{v:.2f}", na_rep="n/a"),
        f"mean pairwise kappa: {_fmt(rep['kappa']['mean_pairwise'])}; Fleiss' kappa: {_fmt(rep['kappa']['fleiss'])} "
        f"({rep['kappa']['fleiss_n_images']} images graded by all {len(experts)} experts)"
        + (f"; weighted (ordinal scale) mean pairwise kappa: linear {_fmt(rep['kappa']['mean_pairwise_linear'])}, "
           f"quadratic {_fmt(rep['kappa']['mean_pairwise_quadratic'])}" if rep.get("ordinal") else ""),
        "",
        "experts (agree_majority: own vote included, images with >= 2 graders; agree_consensus: vs the other "
        "experts' consensus)",
        pd.DataFrame(rep["experts_table"], columns=list(EXPERT_COLUMNS)).to_string(
            index=False, float_format=lambda v: f"{v:.2f}", na_rep="n/a"
        ),
        "",
        "confusion against the majority (rows = majority class, columns = the expert's grade)",
    ]
    for e in experts:
        frame = pd.DataFrame(rep["confusion"][e], index=classes, columns=classes)
        frame.index.name, frame.columns.name = "majority", e
        lines += [frame.to_string(), ""]
    if rep["warnings"]:
        lines.append(f"warnings ({len(rep['warnings'])})")
        lines += [f"  - {w}" for w in rep["warnings"]]
    return "\n".join(lines).rstrip() + "\n"
