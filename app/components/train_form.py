"""The training form: every field comes from the engine's config dataclasses (defaults and one-line help from
the papers) and from each method's `config_cls` (via `python -m engine methods --json`, so the app process never
imports torch). The form turns the values into CLI options for `python -m engine run`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from typing import Any, get_args, get_type_hints

import streamlit as st

from app import state

# Fields on the form, by config group. The main ones come first; every other field of the engine's config groups
# (read from engine.config.GROUPS, so new engine options appear by themselves) goes under "More options", except
# those the app sets itself or that do not belong on a form.
MAIN_FIELDS = [("model", "backbone"), ("data", "image_size"), ("schedule", "epochs"),
               ("schedule", "warmup_epochs"), ("schedule", "batch_size"), ("schedule", "lr")]
PRETRAIN_GROUP = "pretrain"
APP_OWNED = {("data", "dataset"), ("data", "roles"), ("data", "classes"), ("data", "meta"), ("data", "test"),
             ("data", "cache_dir"), ("runtime", "out"), ("runtime", "method"), ("runtime", "resume"),
             ("runtime", "nproc"), ("runtime", "dist_timeout"),  # the GPUs are offered by `gpus` (train_form)
             ("review", "reviewed"), ("review", "from_run")}  # the Review/Export pages' "Retrain with my N reviews"


def more_fields() -> list[tuple[str, str]]:
    shown = set(MAIN_FIELDS) | APP_OWNED
    return [(g, f.name) for g, cls in _groups().items() if g != PRETRAIN_GROUP
            for f in dataclasses.fields(cls) if (g, f.name) not in shown and not f.metadata.get("positional")]


def pretrain_fields() -> list[tuple[str, str]]:
    return [(PRETRAIN_GROUP, f.name) for f in dataclasses.fields(_groups().get(PRETRAIN_GROUP, NoFields))]


@dataclasses.dataclass(frozen=True)
class NoFields:
    pass


LABELS = {"lr": "Learning rate", "warmup_epochs": "Warm-up epochs", "lr_milestones": "LR milestones",
          "amp": "Mixed precision (CUDA)", "pretrain": "DR-pretraining dataset", "max_steps": "Max steps per epoch",
          "flag_uncertain": "Flag threshold (soft-label top probability)", "workers": "Data-loader workers",
          "pretrained": "ImageNet weights (needs network)", "weights": "Local weights file"}


def label_for(name: str) -> str:
    return LABELS.get(name) or name.replace("_", " ").capitalize()


def cli_flag(name: str, prefix: str = "") -> str:
    return "--" + (prefix + name).replace("_", "-")


@st.cache_data(show_spinner="Reading the available methods from the engine…", ttl=3600)
def methods_info() -> list[dict]:
    """[{"name", "summary", "params": [{"name", "default", "help"}]}] from `python -m engine methods --json`."""
    proc = subprocess.run([sys.executable, "-m", "engine", "methods", "--json"], cwd=str(state.REPO_ROOT),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"`python -m engine methods --json` failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout)


def _groups() -> dict[str, type]:
    from engine.config import GROUPS

    return GROUPS


def _field(group: str, name: str) -> tuple[type, Any, str]:
    """(type, default shown on the form, help). Options left unset (None) show the scratch recipe's value: the form
    sends an option only when it differs from that, so a run started from weights keeps its own recipe."""
    from engine.config import RECIPES

    cls = _groups()[group]
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
    tp = get_type_hints(cls)[name]
    if type(None) in get_args(tp):
        tp = next(a for a in get_args(tp) if a is not type(None))
        if default is None:
            default = RECIPES["scratch"].get(name, "")
    return tp, default, f.metadata.get("help", "")


def _exists(group: str, name: str) -> bool:
    cls = _groups().get(group)
    return cls is not None and any(f.name == name for f in dataclasses.fields(cls))


def _input(tp: type, default: Any, *, label: str, help: str, key: str,  # noqa: A002
           choices: list | None = None) -> Any:
    if choices:  # only these values are valid: a select box, not free text
        options = list(choices)
        return st.selectbox(label, options, index=options.index(default) if default in options else 0, help=help,
                            key=key)
    if tp is bool:
        return st.checkbox(label, value=bool(default), help=help, key=key)
    if tp is int:
        return int(st.number_input(label, value=int(default), step=1, help=help, key=key))
    if tp is float:
        return float(st.number_input(label, value=float(default), help=help, key=key, format="%g",
                                     step=_float_step(float(default))))
    return st.text_input(label, value="" if default is None else str(default), help=help, key=key)


def _float_step(value: float) -> float:
    """One tenth of the value's order of magnitude: 1e-3 -> 1e-4, 0.9 -> 0.01."""
    return 10.0 ** (math.floor(math.log10(abs(value))) - 1) if value else 0.01


def _field_input(group: str, name: str, key: str, *, default: Any = None) -> Any:
    tp, field_default, help_text = _field(group, name)
    choices = next(f for f in dataclasses.fields(_groups()[group]) if f.name == name).metadata.get("choices")
    return _input(tp, field_default if default is None else default, label=label_for(name), help=help_text,
                  key=f"{key}_{group}_{name}", choices=choices)


def _param_type(default: Any) -> type:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def train_form(*, key: str, methods: list[dict], defaults: dict | None = None, gpus: int = 0) -> dict | None:
    """Render the form; returns {"method", "options" (CLI list), "values"} when Launch is pressed, else None.

    `defaults` may preset {(group, name): value}, e.g. a smaller image size for a small dataset. With `gpus` > 1
    (GPUs visible on this machine) the form offers how many to train on: the run then starts one process per GPU
    through torchrun (`--nproc N`). Owns st.session_state[f"{key}_*"].
    """
    defaults = defaults or {}
    names = [m["name"] for m in methods]
    from engine.config import RuntimeConfig

    default = RuntimeConfig().method  # the engine's default: what won the label benchmark's panel scenario
    preferred = default if default in names else names[0]
    by_name = {m["name"]: m for m in methods}
    col_m, col_s = st.columns([1, 2], vertical_alignment="bottom")
    with col_m:
        method = st.selectbox("Method", names, index=names.index(preferred), key=f"{key}_method",
                              help=f"label-noise method; {default} is the default (it won the label benchmark's "
                                   "expert-panel scenario); mslg = the ROP study's meta soft-label generation")
    with col_s:
        st.caption(by_name[method].get("summary") or "")

    values: dict[tuple[str, str], Any] = {}
    with st.form(f"{key}_form", border=True):
        cols = st.columns(3)
        for i, (group, name) in enumerate([gn for gn in MAIN_FIELDS if _exists(*gn)]):
            with cols[i % 3]:
                values[(group, name)] = _field_input(group, name, key, default=defaults.get((group, name)))

        params = by_name[method].get("params") or []
        method_values: dict[str, Any] = {}
        with st.expander(f"{method} hyper-parameters ({len(params)})", expanded=bool(params)):
            if not params:
                st.caption("This method has no hyper-parameters of its own.")
            pcols = st.columns(3)
            for i, prm in enumerate(params):
                with pcols[i % 3]:
                    method_values[prm["name"]] = _input(
                        _param_type(prm.get("default")), prm.get("default"), label=label_for(prm["name"]),
                        help=prm.get("help") or "", key=f"{key}_{method}_{prm['name']}", choices=prm.get("choices"))
        with st.expander("DR pretraining (optional)"):
            for group, name in pretrain_fields():
                values[(group, name)] = _field_input(group, name, key, default=defaults.get((group, name)))
        with st.expander("More options: schedule, flags, runtime"):
            mcols = st.columns(3)
            for i, (group, name) in enumerate(more_fields()):
                with mcols[i % 3]:
                    values[(group, name)] = _field_input(group, name, key, default=defaults.get((group, name)))
        n_gpus = 1
        if gpus > 1:
            n_gpus = st.selectbox("GPUs", list(range(1, gpus + 1)), index=gpus - 1, key=f"{key}_gpus",
                                  help="train on this many GPUs of this machine, one process each (torchrun with "
                                       "DistributedDataParallel); the batch size is the total over all of them and "
                                       "must be a multiple of this number")
        submitted = st.form_submit_button("Launch training", type="primary", icon=":material/rocket_launch:")

    if not submitted:
        return None
    options = ["--method", method] + (["--nproc", str(n_gpus)] if n_gpus > 1 else [])
    for (group, name), value in values.items():
        _, field_default, _ = _field(group, name)
        if value == field_default and (group, name) not in defaults:
            continue  # the engine's default: config.json records it anyway
        if isinstance(value, str) and not value.strip():
            continue
        options += [cli_flag(name), _fmt(value)]
    by_param = {p["name"]: p for p in params}
    for name, value in method_values.items():
        if value != by_param[name].get("default"):
            options += [cli_flag(name, prefix=f"{method}_"), _fmt(value)]
    flat = {f"{g}.{n}": v for (g, n), v in values.items()} | {f"{method}.{n}": v for n, v in method_values.items()}
    flat["runtime.nproc"] = n_gpus
    return {"method": method, "options": options, "values": flat}
