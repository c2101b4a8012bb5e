"""`python -m engine run DATASET --out RUNDIR --method METHOD ...`: the full training pipeline."""

from __future__ import annotations

import dataclasses

from engine.config import GROUPS, RunConfig, add_dataclass_args, build, collect_dataclass_args, load_yaml
from engine.errors import InputError, Problem

HELP = "train: DR pretraining -> warm-up -> label-noise method; writes soft labels, flags, metrics and a model"

_TITLES = {"data": "data", "model": "model", "schedule": "schedule (unset options come from the recipe)",
           "pretrain": "DR pretraining", "estimate": "label estimation",
           "review": "reviewed labels and warm start (close the loop)", "runtime": "run"}


def add_parser(p) -> None:
    from engine.methods import get_method, list_methods

    p.add_argument("dataset", nargs="?", default=None, help="dataset folder holding votes.csv")
    p.add_argument("--config", default=None, help="YAML/JSON file with the same sections as config.json")
    for name, cls in GROUPS.items():
        add_dataclass_args(p, cls, title=_TITLES[name])
    p.set_defaults(method_choices=list_methods())
    for m in list_methods():
        add_dataclass_args(p, get_method(m).config_cls, prefix=f"{m.replace('-', '_')}_", title=f"method {m}")


def config_from_args(args) -> RunConfig:
    """Defaults < --config file < command-line flags; unknown keys and flags for another method are errors."""
    from engine.methods import get_method, list_methods

    base = {}
    if getattr(args, "from_run", None):  # an earlier run's settings are the defaults of a warm-started retrain
        from engine.warmstart import inherited_sections

        base = inherited_sections(args.from_run)
    if args.config:
        given = load_yaml(args.config)
        base = {**base, **{k: ({**base.get(k, {}), **v} if isinstance(v, dict) else v) for k, v in given.items()}}
    sections = {name: dict(base.get(name, {})) for name in GROUPS}
    for name, cls in GROUPS.items():
        sections[name].update(collect_dataclass_args(args, cls))
    if args.dataset is not None:
        sections["data"]["dataset"] = args.dataset
    cfg = RunConfig.from_dict({**sections, "method_params": {}})
    if not cfg.data.dataset:
        raise InputError(Problem("DATASET", "no dataset folder given", "python -m engine run DATASET --out RUNDIR"))
    method = cfg.runtime.method
    method_cls = get_method(method)
    params = dict(base.get("method_params", {}))
    if getattr(args, "from_run", None) and method != (base.get("runtime") or {}).get("method"):
        params = {}  # the earlier run's method parameters belong to its own method
    for other in list_methods():
        given = collect_dataclass_args(args, get_method(other).config_cls, prefix=f"{other.replace('-', '_')}_")
        if given and other != method:
            flags = ", ".join(f"--{other}-{k.replace('_', '-')}" for k in given)
            raise InputError(Problem(flags, f"applies to method '{other}', not '{method}'",
                                     f"drop it or pass --method {other}"))
        params.update(given)
    resolved = dataclasses.asdict(build(method_cls.config_cls, params, where=f"method '{method}' parameters"))
    return dataclasses.replace(cfg, method_params=resolved)


def _interrupt_on_sigterm() -> None:
    """The app's Cancel (and `kill`) sends SIGTERM: treat it like Ctrl-C so the run ends as 'cancelled'."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run(args) -> int:
    from engine.distributed import torchrun_world
    from engine.pipeline import run as run_pipeline
    from engine.runtime import configure_threads

    _interrupt_on_sigterm()
    configure_threads()
    cfg = config_from_args(args)
    if cfg.runtime.nproc > 1 and torchrun_world() is None:  # --nproc N: torchrun starts the N processes
        from engine.launch import run_local
        from engine.pipeline import preflight
        from engine.runtime import resolve_device

        preflight(cfg, resolve_device(cfg.runtime.device))  # every input problem once, before any process starts (exit 2, nothing written)
        return run_local(args._argv, cfg.runtime.nproc, cfg.runtime.out)
    out = run_pipeline(cfg)
    if torchrun_world() is None or torchrun_world().main:
        print(f"done: {out}/labels.csv, metrics.json, model.pt")
    return 0
