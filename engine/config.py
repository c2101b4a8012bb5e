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


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = _f("resnet18", "any timm model name (ROP study: resnet50)")
    weights: str = _f("", "local weights: a DR-pretraining checkpoint or a timm/torch state dict")
    pretrained: bool = _f(False, "load timm's ImageNet weights from the hub / local HF cache (needs network)")


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = _f(30, "total epochs including warm-up (ROP study: 30)")
    warmup_epochs: int = _f(10, "cross-entropy warm-up epochs on majority labels (ROP study: 10)")
    batch_size: int = _f(16, "mini-batch size (ROP study: 16)")
    lr: float = _f(1e-3, "base-classifier learning rate (ROP study: 1e-3)")
    lr_milestones: str = _f("10,20", "epochs where the learning rate is divided by 10 (ROP study: 10,20)")
    momentum: float = _f(0.9, "SGD momentum (ROP study: 0.9)")
    weight_decay: float = _f(1e-4, "SGD weight decay (ROP study: 1e-4)")


@dataclass(frozen=True)
class PretrainConfig:
    pretrain: str = _f("", "auxiliary dataset for DR pretraining: a folder in our contract, or a CSV image,level")
    pretrain_epochs: int = _f(1, "DR-pretraining epochs (ROP study: 1)")


@dataclass(frozen=True)
class FlagConfig:
    flag_uncertain: float = _f(0.6, "flag a split-vote image when the soft label's top probability is below this")


@dataclass(frozen=True)
class RuntimeConfig:
    out: str = _f("", "run folder to write (created)")
    method: str = _f("mslg", "label-noise method (see `python -m engine methods`)")
    seed: int = _f(0, "random seed (split, init, shuffling)")
    device: str = _f("auto", "auto | cpu | cuda | mps")
    amp: bool = _f(True, "mixed precision on CUDA (ignored on CPU)")
    resume: bool = _f(False, "continue an interrupted run in --out from its last checkpoint")
    max_steps: int = _f(0, "stop each epoch after this many steps (0 = full epochs); for smoke tests")


GROUPS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "schedule": ScheduleConfig,
    "pretrain": PretrainConfig,
    "flags": FlagConfig,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    flags: FlagConfig = field(default_factory=FlagConfig)
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

    def milestones(self) -> list[int]:
        text = self.schedule.lr_milestones.strip()
        return [int(x) for x in text.split(",") if x.strip()] if text else []

    def class_list(self) -> list[str] | None:
        text = self.data.classes.strip()
        return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _coerce(tp, value, name: str, where: str):
    origin = get_origin(tp)
    if origin is not None and type(None) in get_args(tp):
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


def add_dataclass_args(parser, cls: type, *, prefix: str = "", title: str | None = None, skip=()) -> None:
    """Add one argparse group with a `--prefix-field-name` option per dataclass field (default: None = unset)."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip or f.metadata.get("positional"):
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        tp = hints[f.name]
        default_text = f.default if f.default is not dataclasses.MISSING else "(computed)"
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
