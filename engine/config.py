"""Typed run configuration: one frozen dataclass per concern, defaults from the papers.

One source of truth for the CLI (argparse groups are generated from these fields), the app (forms read the
same fields and help texts) and the run folder (`config.json` is `asdict(RunConfig)`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from engine.data.schema import parse_bool
from engine.errors import InputError, Problem


def _f(default, help: str, **meta):  # noqa: A002 - "help" mirrors argparse
    """A dataclass field with a one-line help text (shown by the CLI and the app)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: default, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("", "dataset folder holding votes.csv", positional=True)
    classes: str = _f("", "comma-separated class order, e.g. normal,pre-plus,plus (default: sorted values seen)")
    roles: str = _f("", "roles CSV (image,role) from `engine split` or the app; default: split now")
    meta: float = _f(200, "meta-set size: a count, or a fraction of consensus images if < 1 (ROP study: 200)")
    test: float = _f(300, "test-set size: a count, or a fraction of consensus images if < 1 (ROP study: 300)")
    image_size: int = _f(224, "network input size after centre crop (ROP study: 224 from 256)")
    cache_dir: str = _f("", "decoded-image cache folder (default: DATASET/.cache next to votes.csv)")
    targets: str = _f("votes", "what cross-entropy trains on (warm-up, ce, meta-finetune): the experts' vote shares "
                      "(a 2-1 split is not a unanimous vote; chosen on the benchmark) or the majority label",
                      choices=("votes", "majority"))
    ordinal: str = _f("auto", "the class order is a severity scale (weighs a normal↔plus error above an adjacent one): "
                      "auto = when the classes are a known scale such as normal,pre-plus,plus", choices=("auto", "yes",
                                                                                                     "no"))


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _f("resnet18", "any timm model name (ROP study: resnet50)")
    weights: str = _f("", "local weights: a DR-pretraining checkpoint or a timm/torch state dict")
    pretrained: bool = _f(False, "load timm's ImageNet weights from the hub / local HF cache (needs network)")


# Training recipes: what an unset schedule option means. `finetune` is the ROP study's recipe for fine-tuning an
# ImageNet-pretrained ResNet-50; `scratch` is for a network that starts from random weights (no --weights,
# --pretrained or --pretrain), where that recipe's small learning rate leaves the network under-trained. The scratch
# values were chosen on the label-noise benchmark (bench/RESULTS.md, "recipe").
RECIPES: dict[str, dict[str, Any]] = {
    "scratch": {"epochs": 15, "warmup_epochs": 5, "batch_size": 32, "lr": 0.05, "lr_schedule": "cosine",
                "lr_milestones": "", "momentum": 0.9, "weight_decay": 5e-4},
    "finetune": {"epochs": 30, "warmup_epochs": 10, "batch_size": 16, "lr": 1e-3, "lr_schedule": "step",
                 "lr_milestones": "10,20", "momentum": 0.9, "weight_decay": 1e-4},
}
RECIPE_CHOICES = ("auto", *RECIPES)


@dataclass(frozen=True)
class ScheduleConfig:
    """Unset options (None) come from the recipe; `auto` picks `finetune` when the network starts from weights."""

    recipe: str = _f("auto", "training recipe for unset options: auto (finetune when --weights, --pretrained or "
                     "--pretrain is given, else scratch), scratch, finetune (the ROP study's)", choices=RECIPE_CHOICES)
    epochs: int | None = _f(None, "total epochs including warm-up (scratch 15; finetune 30 as in the ROP study)")
    warmup_epochs: int | None = _f(None, "cross-entropy warm-up epochs on majority labels (scratch 5; finetune 10)")
    batch_size: int | None = _f(None, "mini-batch size (scratch 32; finetune 16)")
    lr: float | None = _f(None, "base-classifier learning rate (scratch 0.05; finetune 1e-3)")
    lr_schedule: str | None = _f(None, "cosine decay, or step (÷10 at --lr-milestones) (scratch cosine; finetune "
                                 "step)", choices=("cosine", "step"))
    lr_milestones: str | None = _f(None, "epochs where a step schedule divides the learning rate by 10 (finetune 10,20)")
    momentum: float | None = _f(None, "SGD momentum (0.9)")
    weight_decay: float | None = _f(None, "SGD weight decay (scratch 5e-4; finetune 1e-4)")


@dataclass(frozen=True)
class PretrainConfig:
    pretrain: str = _f("", "auxiliary dataset for DR pretraining: a folder in our contract, or a CSV image,level")
    pretrain_epochs: int = _f(1, "DR-pretraining epochs (ROP study: 1)")


@dataclass(frozen=True)
class EstimateConfig:
    """The label-estimation stage (engine/estimate.py, engine/crossfit.py) that makes the soft labels shown for review."""

    folds: int = _f(2, "cross-fitting folds for out-of-sample model probabilities (each fold's model never sees the "
                    "labels it grades); 0 = off: the method's own soft labels are used as they are")
    fold_budget: float = _f(1.0, "training of all folds together, as a multiple of the main training's steps")
    calibration: str = _f("temperature", "calibrate the model probabilities on the meta set", choices=("temperature",
                                                                                                     "none"))
    experts: str = _f("correlated", "how the votes enter: correlated (each image's vote pattern as one observation, "
                      "so experts who err together on hard images are not counted twice), independent (a confusion "
                      "matrix per expert, Dawid-Skene), none (model only)", choices=("correlated", "independent",
                                                                                      "none"))
    confusions: str = _f("em", "how each expert's confusion matrix is fitted: em (Dawid-Skene) or moments (measured "
                         "once against the calibrated model; for one grader per image, where EM tends to trust every "
                         "vote - see bench/RESULTS.md, issue 9)", choices=("em", "moments"))


@dataclass(frozen=True)
class RuntimeConfig:
    out: str = _f("", "run folder to write (created)")
    method: str = _f("ce", "label-noise method (see `python -m engine methods`); the default, with the label "
                     "estimate on top, won the label benchmark's fundus expert-panel scenario over 3 seeds "
                     "(bench/RESULTS.md, issue 9)")
    seed: int = _f(0, "random seed (split, init, shuffling)")
    device: str = _f("auto", "auto | cpu | cuda | mps")
    amp: bool = _f(True, "mixed precision on CUDA (ignored on CPU)")
    resume: bool = _f(False, "continue an interrupted run in --out from its last checkpoint")
    max_steps: int = _f(0, "stop each epoch after this many steps (0 = full epochs); for smoke tests")
    nproc: int = _f(1, "training processes on this machine (one per GPU, or CPU processes): more than 1 starts "
                    "torchrun with DistributedDataParallel; --batch-size stays the global batch (README: several GPUs)")
    dist_timeout: float = _f(1800.0, "several processes: seconds one waits for the others at a synchronisation "
                             "point before the run fails (a hung process)")


@dataclass(frozen=True)
class ReviewConfig:
    """Closing the loop: a clinician's review decisions flow back into a new run (engine/reviewed.py,
    engine/warmstart.py)."""

    reviewed: str = _f("", "CSV of verified labels: an export (its rows with source=review) or image,label; verified "
                       "images keep that label as training target and as a known label in the label estimate")
    from_run: str = _f("", "earlier run folder to warm-start from (its model.pt and cross-fitting folds); its settings "
                       "are the defaults of this run and its schedule is shortened (engine/warmstart.py)")


GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "schedule": ScheduleConfig,
    "pretrain": PretrainConfig,
    "estimate": EstimateConfig,
    "review": ReviewConfig,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    method_params: dict[str, Any] = field(default_factory=dict)  # asdict of the method's own config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        unknown = set(d) - {*GROUPS, "method_params"}
        if unknown:
            raise InputError(Problem("config", f"unknown section(s) {sorted(unknown)}", f"use {sorted(GROUPS)}"))
        parts = {name: build(GROUPS[name], d.get(name, {}), where=f"config section '{name}'") for name in GROUPS}
        return cls(**parts, method_params=dict(d.get("method_params", {})))

    def recipe(self) -> str:
        """The recipe that fills unset schedule options: `schedule.recipe`, with auto resolved."""
        if self.schedule.recipe != "auto":
            return self.schedule.recipe
        starts_from_weights = bool(self.model.weights or self.model.pretrained or self.pretrain.pretrain)
        return "finetune" if starts_from_weights else "scratch"

    def resolved(self) -> RunConfig:
        """This config with every unset schedule option filled from its recipe (what a run uses and records)."""
        name = self.recipe()
        values = {k: (v if v is not None else RECIPES[name][k]) for k, v in dataclasses.asdict(self.schedule).items()
                  if k != "recipe"}
        return dataclasses.replace(self, schedule=ScheduleConfig(recipe=name, **values))

    def milestones(self) -> list[int]:
        text = (self.schedule.lr_milestones or "").strip()
        return [int(x) for x in text.split(",") if x.strip()] if text else []

    def class_list(self) -> list[str] | None:
        text = self.data.classes.strip()
        return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _coerce(tp, value, name: str, where: str):
    origin = get_origin(tp)
    if origin is not None and type(None) in get_args(tp):
        if value is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
    try:
        if tp is bool:
            if isinstance(value, str):
                parsed = parse_bool(value)
                if parsed is None:
                    raise ValueError(value)
                return parsed
            return bool(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if tp in (tuple, list) or get_origin(tp) in (tuple, list):
            return tuple(value)
    except (TypeError, ValueError):
        raise InputError(Problem(where, f"'{name}' must be {tp.__name__}, got {value!r}")) from None
    return value


def build(cls: type, values: dict, *, where: str = "config"):
    """Build dataclass `cls` from a dict: unknown keys are an error, values are coerced to the field types."""
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(Problem(where, f"unknown key(s) {unknown}", f"valid keys: {sorted(names)}"))
    return cls(**{k: _coerce(hints[k], v, k, where) for k, v in values.items()})


def _unwrap_optional(tp):
    """`int | None` -> int (unset options are None)."""
    args = [a for a in get_args(tp) if a is not type(None)]
    return args[0] if get_origin(tp) is not None and type(None) in get_args(tp) and len(args) == 1 else tp


def add_dataclass_args(parser, cls: type, *, prefix: str = "", title: str | None = None, skip=()) -> None:
    """Add one argparse group with a `--prefix-field-name` option per dataclass field (default: None = unset)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or f.metadata.get("positional"):
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        tp = _unwrap_optional(hints[f.name])
        default_text = f.default if f.default is not dataclasses.MISSING else "(computed)"
        default_text = "from the recipe" if default_text is None else default_text
        # argparse %-formats help strings ("%(default)s"); a literal '%' in our text (e.g. "15–30 % cheaper")
        # would crash `--help`, so it is escaped here, once for every field
        help_text = f"{f.metadata.get('help', '')} [{default_text}]".replace("%", "%%")
        if tp is bool:
            group.add_argument(flag, dest=prefix + f.name, default=None, type=lambda s, name=f.name: _coerce(bool, s, name, "cli"),
                               nargs="?", const=True, metavar="BOOL", help=help_text)
        else:
            group.add_argument(flag, dest=prefix + f.name, default=None, type=tp if tp in (int, float, str) else str,
                               choices=f.metadata.get("choices"), help=help_text)


def collect_dataclass_args(ns, cls: type, *, prefix: str = "") -> dict:
    """The options the user actually set on the command line for `cls` (None = unset)."""
    out = {}
    for f in fields(cls):
        value = getattr(ns, prefix + f.name, None)
        if value is not None:
            out[f.name] = value
    return out


def load_yaml(path: Path | str) -> dict:
    """A YAML (or JSON) config file with the same sections as config.json."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.suffix in (".yaml", ".yml") else json.loads(
            path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(Problem(str(path), "config file not found")) from None
    except Exception as exc:  # yaml/json syntax
        raise InputError(Problem(str(path), f"cannot parse config: {exc}")) from None
    if not isinstance(data, dict):
        raise InputError(Problem(str(path), "config must be a mapping of sections"))
    return data
