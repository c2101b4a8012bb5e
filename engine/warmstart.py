"""Warm start: a retrain that continues an earlier run (`--from-run OLD`) instead of starting over.

What carries over from OLD:
  - settings: every option the command line does not set takes OLD's value from its config.json (dataset,
    classes, method and its parameters, model, image size, label estimation; `inherited_sections`), and OLD's
    roles.csv is the roles file, so the meta and test sets stay the same and before/after accuracies compare;
  - the network: OLD's model.pt (read with the safe loader, engine/safe_load.py) initialises the run's model;
  - the cross-fitting folds: each fold network starts from OLD's network of the same fold and keeps the same
    held-out images (OLD's crossfit.pt holds both), so every probability stays out-of-sample (a fold network never
    trained on the labels of the images it grades) at a fraction of a fresh fold's cost;
  - the schedule (options left unset): a short fine-tune of OLD's resolved schedule (`warm_schedule`).
No DR pretraining runs again. When OLD has no fold networks to start from (a run written before this feature, or
another --folds), the folds train afresh on OLD's full schedule, as in a first run, and the log says so.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import rundir as R
from engine.errors import InputError, Problem

# A warm run fine-tunes trained networks on labels that differ in a few percent of the images: a quarter of the
# epochs (the cross-fitting folds too), no warm-up, a tenth of the learning rate decayed to zero. At 0.3 × the
# learning rate, two warm retrains *without* any review moved the label recovery of the review benchmark (seed 2) by
# +8 and −9 points (the fold networks wander off and are re-selected on a few meta images); at 0.1 × by +9 and −0.3 (the
# first retrain re-selects the folds once), at 0.03 × the same — so 0.1 × still learns from the reviews and keeps
# a retrain's changes theirs (measured while developing it, on an earlier version of bench/review_sim.py that trained
# `ce`; the current cost and effect: bench/RESULTS.md, "Issue 13").
WARM_EPOCH_FRACTION = 0.25
WARM_LR_FACTOR = 0.1
NOT_INHERITED = {"runtime": ("out", "resume")}  # never taken from OLD (review and schedule are not inherited at all)


def old_run(from_run: str | Path) -> Path:
    """The folder of `--from-run`, checked to be a finished run (model.pt and config.json)."""
    old = Path(from_run).expanduser()
    fix = "pass the folder of a finished run (it holds model.pt, labels.csv and config.json)"
    if not old.is_dir():
        raise InputError(Problem(str(old), "--from-run folder not found", fix))
    missing = [name for name in (R.MODEL, R.CONFIG) if not (old / name).is_file()]
    if missing:
        raise InputError(Problem(str(old), f"--from-run folder has no {' or '.join(missing)} (not a finished run)", fix))
    return old


def old_config(from_run: str | Path) -> dict:
    path = old_run(from_run) / R.CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(Problem(str(path), f"cannot read the earlier run's settings ({err})")) from None
    if not isinstance(config, dict):
        raise InputError(Problem(str(path), "is not a run's config.json"))
    return config


def base_schedule(old: dict) -> dict:
    """The full schedule a warm run shortens: OLD's, or when OLD was itself warm-started, the one OLD shortened
    (config.json `warm_start.base_schedule`), so a chain of retrains does not shrink its schedule every time."""
    return dict((old.get("warm_start") or {}).get("base_schedule") or old.get("schedule") or {})


def warm_record(cfg) -> dict:
    """What config.json records about a warm start: {"warm_start": {"from_run", "base_schedule"}} ({} without one)."""
    if not cfg.review.from_run:
        return {}
    return {"warm_start": {"from_run": cfg.review.from_run, "base_schedule": base_schedule(old_config(cfg.review.from_run))}}


def warm_schedule(schedule: dict) -> dict:
    """A full resolved schedule -> the warm run's: ceil(WARM_EPOCH_FRACTION × epochs) epochs (≥ 1), no warm-up,
    WARM_LR_FACTOR × lr with a cosine decay; batch size, momentum and weight decay unchanged."""
    epochs = max(1, math.ceil(WARM_EPOCH_FRACTION * int(schedule["epochs"]) - 1e-9))
    return {"epochs": epochs, "warmup_epochs": 0, "batch_size": schedule["batch_size"],
            "lr": float(schedule["lr"]) * WARM_LR_FACTOR, "lr_schedule": "cosine", "lr_milestones": "",
            "momentum": schedule["momentum"], "weight_decay": schedule["weight_decay"]}


def inherited_sections(from_run: str | Path) -> dict:
    """OLD's settings as config sections (the CLI's base, under --config and command-line flags): every section but
    `schedule` (made by `with_warm_defaults`) and `review`; data.roles = OLD's roles.csv. Keys this version no longer
    knows are dropped."""
    from engine.config import GROUPS

    config = old_config(from_run)
    out: dict = {}
    for name, cls in GROUPS.items():
        if name in ("schedule", "review") or not isinstance(config.get(name), dict):
            continue
        fields = {f.name for f in dataclasses.fields(cls)} - set(NOT_INHERITED.get(name, ()))
        out[name] = {k: v for k, v in config[name].items() if k in fields}
    roles = Path(from_run) / R.ROLES
    if roles.is_file():
        out.setdefault("data", {})["roles"] = str(roles)
    if isinstance(config.get("method_params"), dict):
        out["method_params"] = dict(config["method_params"])
    return out


def with_warm_defaults(cfg):
    """`cfg` (a RunConfig) with its unset schedule options taken from OLD's warm schedule and, without --roles, OLD's
    roles.csv; the --reviewed and --from-run paths made absolute (config.json records where they were)."""
    from engine.config import ScheduleConfig

    review = cfg.review
    cfg = dataclasses.replace(cfg, review=dataclasses.replace(
        review, **{k: str(Path(v).expanduser().resolve()) for k, v in dataclasses.asdict(review).items() if v}))
    if not cfg.review.from_run:
        return cfg
    old = old_config(cfg.review.from_run)
    if cfg.runtime.out and Path(cfg.runtime.out).resolve() == Path(cfg.review.from_run).resolve():
        raise InputError(Problem("--out", "is the --from-run folder", "write the retrain into a new folder"))
    sched = base_schedule(old)
    if any(sched.get(k) is None for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay")):
        raise InputError(Problem(str(Path(cfg.review.from_run) / R.CONFIG), "has no resolved schedule",
                                 "warm-start from a run written by this version of the engine"))
    warm = warm_schedule(sched)
    current = dataclasses.asdict(cfg.schedule)
    values = {k: (v if v is not None else warm.get(k)) for k, v in current.items() if k != "recipe"}
    recipe = cfg.schedule.recipe if cfg.schedule.recipe != "auto" else sched.get("recipe") or "auto"
    data = cfg.data
    roles = Path(cfg.review.from_run) / R.ROLES
    if not data.roles and roles.is_file():
        data = dataclasses.replace(data, roles=str(roles))
    return dataclasses.replace(cfg, schedule=ScheduleConfig(recipe=recipe, **values), data=data)


def load_warm_model(model, cfg, classes: list[str]) -> dict:
    """Load OLD's model.pt into `model` after checking it fits this run (classes in the same order, backbone,
    image size); returns the file's metadata. Raises InputError naming the file and the fix."""
    from engine.safe_load import torch_load

    path = old_run(cfg.review.from_run) / R.MODEL
    saved = torch_load(path, what="model of --from-run")
    if not isinstance(saved, dict) or "state_dict" not in saved:
        raise InputError(Problem(str(path), "is not a model.pt written by this tool"))
    problems = []
    if list(saved.get("classes", [])) != list(classes):
        problems.append(Problem(str(path), f"was trained on the classes {saved.get('classes')}, this run has {classes}",
                                "pass --classes in the earlier run's order, or train without --from-run"))
    if saved.get("backbone") != cfg.model.backbone:
        problems.append(Problem(str(path), f"is a '{saved.get('backbone')}' network, this run asks for "
                                f"'{cfg.model.backbone}'", f"pass --backbone {saved.get('backbone')} or drop --from-run"))
    if saved.get("image_size") != cfg.data.image_size:
        problems.append(Problem(str(path), f"was trained at {saved.get('image_size')} px, this run uses "
                                f"{cfg.data.image_size} px", f"pass --image-size {saved.get('image_size')}"))
    if problems:
        raise InputError(problems)
    model.load_state_dict(saved["state_dict"])
    return {k: v for k, v in saved.items() if k != "state_dict"}


# ---------------------------------------------------------------------------------------------------------------
# cross-fitting folds


@dataclass
class FoldSetup:
    """How the cross-fitting folds of a run start: their schedule's config, and for a warm start the fold assignment
    and `init(model, fold)` that loads the earlier run's fold network (None: fresh folds, the usual assignment)."""

    cfg: object  # RunConfig whose schedule the folds train with
    folds: tuple[np.ndarray, np.ndarray] | None
    init: Callable[[object, int], None] | None
    note: str = ""

    @property
    def warm(self) -> bool:
        return self.folds is not None


def fold_setup(cfg, images_train: list[str], images_meta: list[str], train_y: np.ndarray,
               meta_y: np.ndarray) -> FoldSetup:
    """The fold plan of a run: warm (OLD's fold networks on OLD's folds) when `--from-run` has them, else fresh
    folds on the usual schedule — OLD's full schedule in a warm run, since a fresh fold network cannot learn in a
    warm run's few epochs. (Fresh folds start from the DR-pretrained backbone when there is one: `pretrain_file`.)"""
    from engine.config import ScheduleConfig

    k = cfg.estimate.folds
    if not cfg.review.from_run:
        return FoldSetup(cfg, None, None)
    old = Path(cfg.review.from_run)
    saved = _old_folds(old, k)
    if saved is None:
        sched = {k_: v for k_, v in base_schedule(old_config(old)).items()
                 if k_ in {f.name for f in dataclasses.fields(ScheduleConfig)}}
        cold = dataclasses.replace(cfg, schedule=ScheduleConfig(**sched))
        return FoldSetup(cold, None, None, note=f"the earlier run has no {k} fold networks to start from: the folds "
                         f"train afresh on its full schedule ({sched.get('epochs')} epochs)")
    train_f = _map_folds(images_train, saved["train"], train_y, k, cfg.runtime.seed)
    meta_f = _map_folds(images_meta, saved["meta"], meta_y, k, cfg.runtime.seed + 1)
    states = saved["states"]

    def warm(model, fold: int) -> None:
        model.load_state_dict(states[fold])

    return FoldSetup(cfg, (train_f, meta_f), warm, note=f"each of the {k} folds starts from the earlier run's fold "
                     "network, on the same images")


def pretrain_file(cfg, rd: R.RunDir) -> Path | None:
    """The DR-pretrained backbone a run's fresh networks start from: the run's own pretrain.pt, or in a warm run
    (which does not pretrain again) OLD's; None without pretraining or when OLD has none."""
    if not cfg.pretrain.pretrain:
        return None
    own = rd.path(R.PRETRAIN)
    if own.is_file() or not cfg.review.from_run:
        return own
    old = Path(cfg.review.from_run) / R.PRETRAIN
    return old if old.is_file() else None


def _old_folds(old: Path, k: int) -> dict | None:
    """OLD's fold networks and held-out images per fold, or None when it has not all `k` of them."""
    from engine.safe_load import torch_load

    path = old / R.CROSSFIT
    if k < 2 or not path.is_file():
        return None
    raw = torch_load(path, what="cross-fitting checkpoint of --from-run")
    if not isinstance(raw, dict) or set(raw) != {str(f) for f in range(k)}:
        return None
    if not all(isinstance(r, dict) and {"model", "train_images", "meta_images"} <= set(r) for r in raw.values()):
        return None
    return {"states": {int(f): r["model"] for f, r in raw.items()},
            "train": {img: int(f) for f, r in raw.items() for img in r["train_images"]},
            "meta": {img: int(f) for f, r in raw.items() for img in r["meta_images"]}}


def _map_folds(images: list[str], fold_of: dict[str, int], labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Each image's fold in OLD; images OLD did not have (new to the dataset) are dealt to folds like a first run."""
    from engine.crossfit import assign_folds

    folds = np.array([fold_of.get(img, -1) for img in images], dtype=int)
    new = folds < 0
    if new.any():
        folds[new] = assign_folds(np.asarray(labels)[new], k, seed)
    return folds
