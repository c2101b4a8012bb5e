"""A full run: read and check the dataset → split → (DR pretraining) → warm-up → method → outputs.

`run(config)` is what `python -m engine run` and the app's training subprocess call. Everything is validated
before any training starts; every output is written atomically; a checkpoint after each epoch makes a crash or
Ctrl-C resumable with `--resume`, which on the CPU ends with the same soft labels as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import engine
from engine import atomic
from engine import distributed as D
from engine import rundir as R
from engine.config import RunConfig
from engine.data import schema as S
from engine.errors import InputError, Problem
from engine.flags import flag_images
from engine.methods import get_method
from engine.progress import Progress, console, fmt_seconds
from engine.runtime import resolve_device
from engine.train.context import NonFiniteLoss, TensorData, TrainContext, seed_everything, uses_bf16
from engine.train.loop import FitState, fit, restore_best

# ---------------------------------------------------------------------------------------------------------------
# validation


def validate_config(cfg: RunConfig) -> None:
    """Check options that need no data; collect every problem."""
    p: list[Problem] = []
    sch, rt = cfg.schedule, cfg.runtime
    try:
        get_method(rt.method)
    except InputError as err:
        p += err.problems
    if not rt.out:
        p.append(Problem("--out", "no run folder given", "pass --out RUNDIR"))
    if sch.epochs < 1:
        p.append(Problem("--epochs", f"must be >= 1, got {sch.epochs}"))
    if sch.warmup_epochs < 0 or sch.warmup_epochs >= sch.epochs:
        p.append(Problem("--warmup-epochs", f"warm-up ({sch.warmup_epochs}) must be >= 0 and < --epochs ({sch.epochs})",
                         "leave at least one epoch for the method's main phase"))
    if sch.batch_size < 2:
        p.append(Problem("--batch-size", f"must be >= 2 (batch statistics), got {sch.batch_size}"))
    for name, value in (("--lr", sch.lr), ("--weight-decay", sch.weight_decay + 1e-30), ("--momentum", sch.momentum + 1e-30)):
        if not (value > 0 and np.isfinite(value)):
            p.append(Problem(name, f"must be positive, got {value}"))
    if not 0 <= sch.momentum < 1:
        p.append(Problem("--momentum", f"must be in [0, 1), got {sch.momentum}"))
    try:
        cfg.milestones()
    except ValueError:
        p.append(Problem("--lr-milestones", f"not a comma-separated list of epochs: {sch.lr_milestones!r}"))
    if rt.device not in ("auto", "cpu", "cuda", "mps") and not rt.device.startswith("cuda:"):
        p.append(Problem("--device", f"unknown device '{rt.device}'", "use auto, cpu, cuda or mps"))
    if rt.nproc < 1:
        p.append(Problem("--nproc", f"must be >= 1, got {rt.nproc}"))
    if not rt.dist_timeout > 0:
        p.append(Problem("--dist-timeout", f"must be positive, got {rt.dist_timeout}"))
    est = cfg.estimate
    if est.folds == 1 or est.folds < 0:
        p.append(Problem("--folds", f"must be 0 (off) or >= 2, got {est.folds}"))
    if not 0 < est.fold_budget <= 10:
        p.append(Problem("--fold-budget", f"must be in (0, 10], got {est.fold_budget}"))
    if cfg.pretrain.pretrain and cfg.pretrain.pretrain_epochs < 1:
        p.append(Problem("--pretrain-epochs", "must be >= 1 when --pretrain is given"))
    if not p:  # the method is known
        p += _method_param_problems(cfg)
    if p:
        raise InputError(p)


def _method_param_problems(cfg: RunConfig) -> list[Problem]:
    """Range checks on the method's hyper-parameters: numbers finite and >= 0, strings among their choices."""
    out = []
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(get_method(cfg.runtime.method).config_cls)}
    for key, value in cfg.method_params.items():
        allowed = choices.get(key)
        if allowed and value not in allowed:
            out.append(Problem(f"--{cfg.runtime.method}-{key.replace('_', '-')}", f"'{value}' is not one of "
                               f"{', '.join(allowed)}"))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not np.isfinite(value):
            out.append(Problem(f"--{cfg.runtime.method}-{key.replace('_', '-')}", f"must be finite, got {value}"))
        elif value < 0 and key not in ("forget_rate",):
            out.append(Problem(f"--{cfg.runtime.method}-{key.replace('_', '-')}", f"must be >= 0, got {value}"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# data


@dataclasses.dataclass
class PreparedData:
    """The dataset as the run sees it: one row per image in votes.csv order, plus the role of each row."""

    classes: list[str]
    # image, role, votes, majority, tie, consensus, n_graders, agreement, _major_idx (the majority's class index,
    # -1 = none), _target_idx (the label training uses: the majority, except -1 for role=unlabeled)
    frame: pd.DataFrame
    paths: list[Path]
    warnings: list
    votes: np.ndarray  # (N, E) class index per expert, -1 = not graded
    ordinal: bool  # the class order is a severity scale
    cache: object = None  # the ImageCache that validated the images (it keeps what it decoded for load_pixels)


def image_cache(cfg: RunConfig, **kw):
    from engine.data.cache import ImageCache

    return ImageCache(cfg.data.cache_dir or str(Path(cfg.data.dataset) / ".cache"), **kw)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Read votes.csv (every problem at once), aggregate votes, and decide roles (roles file or a new split).

    Images are validated through the decoded-image cache: a file whose content is cached decoded before and is
    trusted; the others are decoded once, in a thread pool, and kept for `load_pixels`."""
    from engine.data.aggregate import aggregate
    from engine.data.split import make_split, read_roles
    from engine.data.votes import read_votes
    from engine.runtime import thread_count

    cache = image_cache(cfg, workers=thread_count())
    try:  # paths first (nothing opened), so that the decoding of uncached images can run in parallel
        cache.prefetch(read_votes(cfg.data.dataset, classes=cfg.class_list(), check_images=False).image_paths(),
                       cfg.data.image_size)
    except InputError:
        pass  # the full read below reports every problem at once
    table = read_votes(cfg.data.dataset, classes=cfg.class_list(), check_images=cache.verifier(cfg.data.image_size))
    if len(table.classes) < 2:  # `inspect` only warns; training on one class would "succeed" with nothing learned
        raise InputError(Problem(str(table.votes_file), f"only one class is used ({', '.join(table.classes)}); "
                                 "a classifier needs at least two classes",
                                 "grade images of at least two classes (e.g. normal and plus)"))
    agg = aggregate(table)
    if cfg.data.roles:
        roles = read_roles(cfg.data.roles, table)
    else:
        roles = make_split(table, agg, meta=cfg.data.meta, test=cfg.data.test, seed=cfg.runtime.seed)
    frame = agg.copy()
    frame[S.ROLE] = roles.to_numpy()
    index = {c: k for k, c in enumerate(table.classes)}
    frame["_major_idx"] = [index.get(m, -1) for m in frame[S.MAJORITY]]
    # role=unlabeled trains without its votes, even when experts graded it (e.g. the other eye of a patient whose
    # consensus eye went to the meta set, so that nothing the experts said about a meta patient reaches training)
    frame["_target_idx"] = np.where(frame[S.ROLE] == S.UNLABELED, -1, frame["_major_idx"])
    data = PreparedData(list(table.classes), frame.reset_index(drop=True), table.image_paths(), list(table.warnings),
                        table.votes_matrix(), is_ordinal(table.classes, cfg.data.ordinal), cache)
    _check_roles(data, cfg)
    return data


def is_ordinal(classes: list[str], setting: str) -> bool:
    """`auto`: the classes are a known severity scale (normal, pre-plus, plus; DR grades); else yes/no."""
    from engine.data.votes import is_severity_scale

    return is_severity_scale(classes) if setting == "auto" else setting == "yes"


def _check_roles(data: PreparedData, cfg: RunConfig) -> None:
    f = data.frame
    p: list[Problem] = []
    meta = f[f[S.ROLE] == S.META]
    where = cfg.data.roles or str(Path(cfg.data.dataset) / "votes.csv")
    if meta.empty:
        p.append(Problem(where, "the meta set is empty (no consensus image was assigned role=meta)",
                         "grade more images so some are unanimous, or set role=meta on trusted images"))
    else:
        missing = [c for k, c in enumerate(data.classes) if not (meta["_major_idx"] == k).any()]
        if missing:
            p.append(Problem(where, f"class(es) {missing} have no meta image",
                             "add consensus images of those classes to the meta set, or drop the classes"))
    train = f[f[S.ROLE].isin([S.TRAIN, S.UNLABELED])]
    if (train["_target_idx"] >= 0).sum() < 2:
        p.append(Problem(where, "fewer than 2 labelled training images", "assign more images to role=train"))
    if p:
        raise InputError(p)


def load_pixels(data: PreparedData, cfg: RunConfig, log=print) -> np.ndarray:
    """All images (N, S, S, 3) uint8 through the decoded-image cache."""
    from engine.runtime import thread_count

    cache = data.cache or image_cache(cfg, workers=thread_count())
    t0 = time.time()
    log(f"loading {len(data.paths)} images at {cfg.data.image_size}px (decoded once, then read from the cache)")
    pixels = cache.load_many(data.paths, cfg.data.image_size)
    log(f"loaded {len(pixels)} images at {cfg.data.image_size}px in {time.time() - t0:.1f}s "
        f"({cache.decode_count} decoded, the rest from the cache {cache.folder})")
    return pixels


# ---------------------------------------------------------------------------------------------------------------
# provenance


def versions() -> dict:
    """Versions of the engine, Python, the platform and the packages a run depends on (from the installed
    distributions' metadata: nothing is imported for it)."""
    from importlib import metadata

    out = {"engine": engine.__version__, "python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform()}
    for key, dist in (("timm", "timm"), ("numpy", "numpy"), ("pandas", "pandas"), ("sklearn", "scikit-learn"),
                      ("pydicom", "pydicom")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - optional
            pass
    return out


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except Exception:
        return ""


def _pid() -> int:
    import os

    return os.getpid()


# ---------------------------------------------------------------------------------------------------------------
# the run


def run(cfg: RunConfig) -> Path:
    """Execute a run into `cfg.runtime.out`; returns the run folder. Raises InputError before training on bad input.

    Started by torchrun, this process joins the others (`engine.distributed`) and trains its share; process 0
    checks the inputs and writes the run folder."""
    from engine.warmstart import with_warm_defaults

    cfg = with_warm_defaults(cfg)  # --from-run: unset schedule options from the earlier run's, shortened
    cfg = cfg.resolved()  # unset schedule options from the recipe (recorded in config.json)
    validate_config(cfg)
    device = _join_processes(cfg)
    try:
        return _run(cfg, device)
    finally:
        D.stop()


def _join_processes(cfg: RunConfig) -> torch.device:
    """This process's device; under torchrun, after joining the process group (GPU `local_rank` on CUDA)."""
    device = resolve_device(cfg.runtime.device)
    try:
        return D.start(device, timeout_s=cfg.runtime.dist_timeout)
    except ValueError as err:
        raise InputError(Problem("--device", str(err))) from None


def preflight(cfg: RunConfig, device: torch.device) -> tuple[R.RunDir, PreparedData, torch.nn.Module]:
    """Every check that needs no training, before anything is written: the run folder (resume or empty), the
    dataset (every problem at once), the backbone and its weights, and the batch sizes for several processes.
    `engine run --nproc N` calls it once before starting the processes; in a run it is done by process 0."""
    from engine.warmstart import load_warm_model, with_warm_defaults

    cfg = with_warm_defaults(cfg).resolved()  # idempotent: `run` has applied it already
    validate_config(cfg)
    w = D.world()
    if not w.active and cfg.runtime.nproc > 1:  # `engine run --nproc N`: can N processes share this device?
        n = cfg.runtime.nproc
        try:
            D.process_device(device, D.World(size=n, local_size=n))
        except ValueError as err:
            raise InputError(Problem("--device", str(err))) from None
    rd = R.RunDir(Path(cfg.runtime.out), echo=console if w.main else None, rank=w.rank)
    D.on_main(lambda: _check_run_folder(cfg, rd))
    data = _prepare_on_main(cfg)
    _check_precision(cfg, device)
    model = _create_model(cfg, len(data.classes))  # checks backbone and weights before anything is written
    _check_image_size(model, cfg)
    if cfg.review.from_run and not cfg.runtime.resume:
        load_warm_model(model, cfg, data.classes)  # checks that it fits; the checkpoint holds it on resume
    if cfg.review.reviewed:
        from engine.reviewed import read_reviewed

        read_reviewed(cfg.review.reviewed, images=data.frame[S.IMAGE], classes=data.classes)  # every problem at once
    _check_processes(cfg, data, cfg.runtime.nproc if not w.active else w.size)
    return rd, data, model


def _prepare_on_main(cfg: RunConfig) -> PreparedData:
    """`prepare_data` by process 0, sent to the others without its image cache (which holds the images decoded
    for validation): each machine's first process fills its own cache when it loads the pixels."""
    mine: dict = {}

    def prepare() -> PreparedData:
        mine["data"] = prepare_data(cfg)
        return dataclasses.replace(mine["data"], cache=None)

    shared = D.on_main(prepare)
    return mine.get("data", shared)


def _check_run_folder(cfg: RunConfig, rd: R.RunDir) -> None:
    out = rd.root
    ckpt_path = rd.path(R.CHECKPOINT)
    if out.is_dir():
        rd.mark_if_dead()  # a run killed before it could say so (kill -9) is failed, not "running" forever
    start_over = f"delete the folder {out} (or pass another --out) and run again without --resume"
    if cfg.runtime.resume:
        if not ckpt_path.is_file():
            raise InputError(Problem(str(out), "nothing to resume: no checkpoint.pt in the run folder (a run writes "
                                     "it after its first finished epoch)", f"start over: {start_over}"))
        _check_resume_config(rd, cfg)
    elif out.exists() and any(out.iterdir()):
        if ckpt_path.is_file() and not rd.path(R.LABELS).is_file():
            fix = "add --resume to continue the interrupted run, or choose another --out"
        else:
            fix = f"choose another --out, or start over: {start_over}"
        raise InputError(Problem(str(out), "run folder exists and is not empty", fix))


def _check_processes(cfg: RunConfig, data: PreparedData, processes: int) -> None:
    """Several processes: the batch sizes must split into shards of at least 2 images (`engine.distributed`)."""
    if processes <= 1:
        return
    method_cls = get_method(cfg.runtime.method)
    roles = data.frame[S.ROLE]
    labeled = int(((roles == S.TRAIN) & (data.frame["_target_idx"] >= 0)).sum())
    n_train = int(roles.isin([S.TRAIN, S.UNLABELED]).sum()) if method_cls.uses_unlabeled else labeled
    problems = D.size_problems(processes, batch_size=cfg.schedule.batch_size, n_train=n_train,
                               n_meta=int((roles == S.META).sum()) if method_cls.needs_meta else 0,
                               meta_rows=method_cls.meta_rows_per_process, folds=cfg.estimate.folds)
    problems += method_cls.process_problems(cfg.method_params, processes)
    if problems:
        raise InputError(problems)


def _run(cfg: RunConfig, device: torch.device) -> Path:
    from engine.reviewed import load_for_run, write_reviewed
    from engine.warmstart import warm_record

    rd, data, model = preflight(cfg, device)  # the model holds the earlier run's weights in a warm run
    reviewed, review_info = load_for_run(cfg.review.reviewed, data.frame, data.classes)  # --reviewed: verified labels
    w = D.world()
    out = rd.root
    out.mkdir(parents=True, exist_ok=True)
    rd.write_status("running", stage="setup", epoch=0, of=cfg.schedule.epochs, pid=_pid(), message="")
    if w.main:
        resolved = {**cfg.to_dict(), "versions": versions(), "git_commit": git_commit(), "classes": data.classes,
                    "device": str(device), "world_size": w.size, "nodes": w.nodes, **warm_record(cfg)}
        if w.active:  # what actually ran (with plain torchrun, --nproc is not given)
            resolved["runtime"]["nproc"] = w.local_size
        atomic.write_json(rd.path(R.CONFIG), resolved)
        atomic.write_csv(rd.path(R.ROLES), data.frame[[S.IMAGE, S.ROLE]])
        if reviewed is not None:
            write_reviewed(rd.path(R.REVIEWED), reviewed)
    rd.log(f"run {cfg.runtime.method} on {cfg.data.dataset} ({len(data.frame)} images, classes {data.classes}) "
           f"device {device}")
    if w.active:
        rd.log(f"process {w.rank} of {w.size} ({w.nodes} machine(s)), pid {_pid()}: global batch "
               f"{cfg.schedule.batch_size} = {cfg.schedule.batch_size // w.size} images per process"
               + ("; process 0 writes the run folder, the others log to log.rank<N>.txt" if w.main else ""))
    sch = cfg.schedule
    rd.log(f"recipe {sch.recipe}" + (" (auto: the network starts from weights)" if sch.recipe == "finetune" and
                                      cfg.recipe() == "finetune" else "") +
           f": {sch.epochs} epochs incl. {sch.warmup_epochs} warm-up, batch {sch.batch_size}, SGD lr {sch.lr:g} "
           f"{sch.lr_schedule}" + (f" at {sch.lr_milestones}" if sch.lr_schedule == "step" else "") +
           f", momentum {sch.momentum:g}, weight decay {sch.weight_decay:g}")
    for warning in data.warnings:
        rd.log(f"warning: {warning}")
    if review_info:
        rd.log(f"verified labels: {review_info['n_verified']} from {cfg.review.reviewed} "
               f"({review_info['changed_from_majority']} differ from the experts' majority)")
    if cfg.review.from_run:
        rd.log(f"warm start from {cfg.review.from_run}: its model.pt; its settings where none were given")
    t0 = time.time()
    try:
        pixels = D.node_first(lambda: load_pixels(data, cfg, log=rd.log))  # the first fills this machine's cache
        if cfg.pretrain.pretrain and not cfg.runtime.resume and not cfg.review.from_run:
            model = _pretrain(cfg, rd, device, len(data.classes))
        result = _train(cfg, rd, data, pixels, model, device)
        result["estimate"] = _estimate(cfg, rd, data, result, pixels, device)
        result["review"] = review_info
        if w.main:
            _write_outputs(cfg, rd, data, result, device, time.time() - t0)
    except KeyboardInterrupt:
        with D.sigterm_deferred():
            lost = _lost_processes(w)
            if lost:
                _failed(rd, lost)
            else:
                rd.log("interrupted: the last finished epoch is in checkpoint.pt; continue with --resume")
                rd.write_status("cancelled", message="interrupted; continue with --resume", pid=_pid())
        raise
    except NonFiniteLoss as err:
        rd.log(f"failed: {err}")
        rd.write_status("failed", message=str(err), pid=_pid())
        raise InputError(Problem("training", str(err))) from None
    except torch.cuda.OutOfMemoryError:
        msg = (f"the GPU ran out of memory at batch size {cfg.schedule.batch_size}; "
               "try a smaller --batch-size or --image-size (the last finished epoch is kept; use --resume)")
        rd.log("failed: " + msg)
        rd.write_status("failed", message=msg, pid=_pid())
        raise InputError(Problem("training", msg)) from None
    except Exception as err:
        with D.sigterm_deferred():
            lost = _lost_processes(w)
            if lost:
                _failed(rd, lost, traceback.format_exc())
            elif w.active and D.timed_out(err):
                _stalled(rd, cfg.runtime.dist_timeout, traceback.format_exc())
            else:
                rd.log("failed:\n" + traceback.format_exc())
                rd.write_status("failed", message=f"{type(err).__name__}: {err}", pid=_pid())
        raise
    rd.write_status("done", stage="done", epoch=cfg.schedule.epochs, of=cfg.schedule.epochs, pid=_pid(),
                    elapsed_s=time.time() - t0)
    rd.log(f"done in {time.time() - t0:.1f}s ({fmt_seconds(time.time() - t0)})")
    return out


def _lost_processes(w: D.World, wait_s: float = 1.0) -> list[int]:
    """Ranks on this machine that died (a failed collective can be noticed just before the kernel marks the process
    gone, so this looks again for up to `wait_s`)."""
    if not w.active:
        return []
    deadline = time.time() + wait_s
    while True:
        lost = D.dead_peers()
        if lost or time.time() >= deadline:
            return lost
        time.sleep(0.1)


def _failed(rd: R.RunDir, lost: list[int], detail: str = "") -> None:
    names = ", ".join(str(r) for r in lost)
    logs = ", ".join(R.rank_log(r) if r else R.LOG for r in lost)
    _fail(rd, f"training process {names} stopped unexpectedly (killed or crashed; see {logs}), so the run stopped",
          detail)


def _stalled(rd: R.RunDir, timeout_s: float, detail: str) -> None:
    _fail(rd, f"another training process did not answer within --dist-timeout {timeout_s:g} s (it hangs, or is far "
          "slower than this one: see the log.rank*.txt files), so the run stopped", detail)


def _fail(rd: R.RunDir, what: str, detail: str = "") -> None:
    """Status `failed` with `what` happened and whether --resume can continue; the log gets `detail` too."""
    message = what + ("; the last finished epoch is in checkpoint.pt: continue with --resume"
                      if rd.path(R.CHECKPOINT).is_file() else "; no epoch had finished: start again")
    rd.log("failed: " + message + (f"\n{detail}" if detail else ""))
    rd.write_status("failed", message=message, pid=_pid())


# --resume may change these: the number of processes (a checkpoint holds one copy of everything, see
# engine.distributed) and how long they wait for each other
RESUME_MAY_CHANGE = ("resume", "nproc", "dist_timeout")


def _check_resume_config(rd: R.RunDir, cfg: RunConfig) -> None:
    old = rd.read_config()
    if old is None:
        return
    new = cfg.to_dict()
    diffs = [f"{sec}.{k}" for sec in new if isinstance(new[sec], dict) and isinstance(old.get(sec), dict)
             for k in new[sec] if k not in RESUME_MAY_CHANGE and old[sec].get(k) != new[sec][k]]
    if diffs:
        raise InputError(Problem(str(rd.path(R.CONFIG)), f"--resume with different settings: {', '.join(diffs)}",
                                 "resume with the same options as the interrupted run"))


def _create_model(cfg: RunConfig, num_classes: int, *, stream: int = 0):
    """The backbone with a fresh head; initialisation seeded by (seed, stream) so runs are reproducible."""
    from engine.models import create_model

    seed_everything(cfg.runtime.seed * 1000 + stream)
    return create_model(cfg.model.backbone, num_classes, weights=cfg.model.weights, pretrained=cfg.model.pretrained)


def _check_precision(cfg: RunConfig, device: torch.device) -> None:
    """Look-ahead options that cannot work at this run's precision (the finite-difference JVP under bf16) are
    refused before anything is written (the method refuses them too when it is built)."""
    from engine.methods.soft_label_step import check_lookahead

    p = cfg.method_params
    if "lookahead" in p and "meta_jvp" in p:
        check_lookahead(cfg.runtime.method, p["lookahead"], p["meta_jvp"],
                        mixed_precision=uses_bf16(device, amp=cfg.runtime.amp))


def _check_image_size(model, cfg: RunConfig) -> None:
    from engine.models import min_input_size

    need = min_input_size(model)
    if cfg.data.image_size < need:
        raise InputError(Problem("--image-size", f"{cfg.data.image_size}px is too small for {cfg.model.backbone} "
                                 f"(it downsamples by {need})", f"use --image-size {need} or larger"))


def _pretrain(cfg: RunConfig, rd: R.RunDir, device: torch.device, num_classes: int):
    """DR pretraining: train the backbone on the auxiliary dataset, save it, then put a fresh task head on it."""
    from engine.data.aux import load_aux
    from engine.models import apply_weights, normalisation
    from engine.runtime import thread_count

    paths, labels, aux_classes = load_aux(cfg.pretrain.pretrain)
    rd.log(f"DR pretraining on {cfg.pretrain.pretrain}: {len(paths)} images, classes {aux_classes}")
    pixels = image_cache(cfg, workers=thread_count()).load_many(paths, cfg.data.image_size)
    aux_model = _create_model(cfg, len(aux_classes), stream=1)
    mean, std = normalisation(aux_model)
    data = TensorData(pixels, labels)
    ctx = TrainContext(aux_model, len(aux_classes), data, data, mean, std, device=device,
                       batch_size=cfg.schedule.batch_size, seed=cfg.runtime.seed, epochs=cfg.pretrain.pretrain_epochs,
                       warmup_epochs=cfg.pretrain.pretrain_epochs, lr=cfg.schedule.lr, milestones=(),
                       momentum=cfg.schedule.momentum, weight_decay=cfg.schedule.weight_decay, amp=cfg.runtime.amp,
                       max_steps=cfg.runtime.max_steps)
    from engine.train.steps import ce_epoch

    steps = ctx.steps_per_epoch()
    for epoch in range(cfg.pretrain.pretrain_epochs):
        seed_everything(cfg.runtime.seed + 10_000 + epoch)
        stats = ce_epoch(ctx, epoch, stage="pretrain")
        rd.progress({"stage": "pretrain", "epoch": epoch, "step": steps - 1, "steps": steps, **stats,
                     "of": cfg.pretrain.pretrain_epochs, "event": "epoch_end"})
        rd.log(f"pretrain epoch {epoch + 1}/{cfg.pretrain.pretrain_epochs} loss {stats['loss']:.4f} "
               f"aux train acc {ctx.accuracy(ctx.train):.3f}")
    weights = {"backbone": cfg.model.backbone, "classes": aux_classes,
               "state_dict": {k: v.cpu() for k, v in aux_model.state_dict().items()}}
    if rd.writer:
        atomic.torch_save(rd.path(R.PRETRAIN), weights)
    model = _create_model(cfg, num_classes, stream=2)
    apply_weights(model, weights, source=str(rd.path(R.PRETRAIN)))  # the backbone; the task head stays fresh
    return model


def _tensors(data: PreparedData, pixels: np.ndarray, roles: tuple[str, ...], *, soft: bool = False
             ) -> tuple[TensorData, np.ndarray]:
    """The rows of `roles` as TensorData (majority targets, -1 for role=unlabeled; with `soft`, the vote shares
    too)."""
    rows = np.flatnonzero(data.frame[S.ROLE].isin(roles).to_numpy())
    targets = data.frame["_target_idx"].to_numpy()[rows]
    shares = None
    if soft:
        from engine.data.aggregate import vote_counts

        counts = vote_counts(data.votes[rows], len(data.classes)).astype(np.float32)
        graded = counts.sum(1, keepdims=True)
        shares = np.where(graded > 0, counts / np.maximum(graded, 1), 1.0 / len(data.classes))
        shares[targets < 0] = 1.0 / len(data.classes)  # role=unlabeled: its votes stay out of training
        if "_verified" in data.frame:
            from engine.reviewed import pin_verified

            shares = pin_verified(shares, data.frame["_verified"].to_numpy()[rows], targets)  # reviewed: one-hot
    return TensorData(pixels[rows], targets, shares), rows


def _make_ctx(cfg: RunConfig, model, num_classes: int, train: TensorData, meta: TensorData, device, *, epochs: int,
              warmup_epochs: int, milestones: tuple[int, ...], test: TensorData | None = None, seed_offset: int = 0
              ) -> TrainContext:
    """A TrainContext with the run's schedule (epochs, warm-up and milestones may differ: cross-fitting folds)."""
    from engine.models import normalisation

    mean, std = normalisation(model)
    sch = cfg.schedule
    return TrainContext(model, num_classes, train, meta, mean, std, device=device, batch_size=sch.batch_size,
                        seed=cfg.runtime.seed + seed_offset, epochs=epochs, warmup_epochs=warmup_epochs, lr=sch.lr,
                        milestones=milestones, lr_schedule=sch.lr_schedule, momentum=sch.momentum,
                        weight_decay=sch.weight_decay, amp=cfg.runtime.amp, max_steps=cfg.runtime.max_steps, test=test)


def _train(cfg: RunConfig, rd: R.RunDir, data: PreparedData, pixels: np.ndarray, model, device):
    method_cls = get_method(cfg.runtime.method)
    train, train_rows = _tensors(data, pixels, (S.TRAIN, S.UNLABELED), soft=cfg.data.targets == "votes")
    meta, meta_rows = _tensors(data, pixels, (S.META,))
    test, test_rows = _tensors(data, pixels, (S.TEST,))
    sch = cfg.schedule
    ctx = _make_ctx(cfg, model, len(data.classes), train, meta, device, epochs=sch.epochs,
                    warmup_epochs=min(sch.warmup_epochs, sch.epochs), milestones=tuple(cfg.milestones()),
                    test=test if len(test) else None)
    ctx.train_consensus = torch.as_tensor(data.frame[S.CONSENSUS].to_numpy()[train_rows].astype(bool))
    method_cfg = method_cls.config_cls(**cfg.method_params)
    method = method_cls(method_cfg, ctx)
    n_labeled = int((train.targets >= 0).sum())
    spe = {"warmup": ctx.steps_per_epoch(),
           "main": ctx.steps_per_epoch(len(train) if method_cls.uses_unlabeled else n_labeled)}
    progress = Progress(rd, cfg, spe)
    ctx.on_step = progress.step
    state = None
    if cfg.runtime.resume:
        from engine.safe_load import torch_load

        ck = D.on_main(lambda: torch_load(rd.path(R.CHECKPOINT), what="checkpoint"))  # one copy for all processes
        ctx.model.load_state_dict(ck["model"])
        ctx.optimizer.load_state_dict(ck["optimizer"])
        state = FitState.from_dict(ck["fit"])
        if state.started:
            method.load_state_dict(ck["method"])
        before, now = int(ck.get("world_size", 1)), D.world().size
        rd.log(f"resumed after epoch {state.epoch + 1}" + (
            f" on {now} process(es); the checkpoint was written by {before}: the batches from here are split "
            f"{now} ways" if before != now else ""))

    def save(st: FitState) -> None:
        progress.epoch_end(st)
        if rd.writer:  # every process holds the same state after an epoch (engine.distributed.check_in_sync)
            atomic.torch_save(rd.path(R.CHECKPOINT), {
                "model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
                "method": method.state_dict() if st.started else {}, "fit": st.to_dict(), "config": cfg.to_dict(),
                "world_size": D.world().size})

    try:
        state = fit(ctx, method, state=state, on_epoch_end=save, on_epoch_start=progress.epoch_start)
    finally:
        progress.close()
    best = restore_best(ctx, method, state)
    return {"ctx": ctx, "state": state, "model": best, "rows": (train_rows, meta_rows, test_rows),
            "method": method_cls, "method_cfg": method_cfg}


def _estimate(cfg: RunConfig, rd: R.RunDir, data: PreparedData, result: dict, pixels: np.ndarray, device) -> dict:
    """The label-estimation stage: out-of-sample probabilities (cross-fitting with the run's method), calibrated on
    the meta set, combined with every expert's votes through their confusion matrices -> posterior (N, K)."""
    from engine.crossfit import crossfit, fold_schedule
    from engine.estimate import label_estimate, review_priority
    from engine.models import apply_weights, read_weights

    ctx, state, model = result["ctx"], result["state"], result["model"]
    train_rows, meta_rows, test_rows = result["rows"]
    f, classes = data.frame, data.classes
    n, k = len(f), len(classes)
    method_probs = np.zeros((n, k))  # the method's own view: its soft labels (training rows), its model elsewhere
    method_probs[train_rows] = state.best_soft_labels.numpy()
    if len(meta_rows):
        method_probs[meta_rows] = ctx.predict(ctx.meta, model).numpy()
    if len(test_rows):
        method_probs[test_rows] = ctx.predict(ctx.test, model).numpy()
    prior = method_probs.copy()
    est = cfg.estimate
    main_seconds = float(sum(h.get("seconds", 0.0) for h in state.history))
    info: dict = {"folds": est.folds, "main_training_s": main_seconds}
    if est.folds >= 2:
        from engine.warmstart import fold_setup, pretrain_file

        images = f[S.IMAGE].to_numpy()
        setup = fold_setup(cfg, list(images[train_rows]), list(images[meta_rows]),
                           ctx.train.targets.cpu().numpy(), ctx.meta.targets.cpu().numpy())
        fcfg = setup.cfg  # a warm run's fresh folds train on the earlier run's full schedule
        sch = fcfg.schedule
        fs = fold_schedule(sch.epochs, min(sch.warmup_epochs, sch.epochs), tuple(fcfg.milestones()), k=est.folds,
                           budget=est.fold_budget)
        done = D.on_main(lambda: _load_folds(rd)) if cfg.runtime.resume else {}
        pretrain_path = None if setup.warm else pretrain_file(cfg, rd)  # a warm run's is the earlier run's
        pretrained = D.on_main(lambda: read_weights(pretrain_path)) if pretrain_path is not None else None
        rd.log(f"label estimation: {est.folds}-fold cross-fitting with {cfg.runtime.method}, {fs.epochs} epochs per "
               f"fold (incl. {fs.warmup_epochs} warm-up)" + (f"; {len(done)} fold(s) kept from before" if done else "")
               + (f"; {setup.note}" if setup.note else ""))

        def make_ctx(part_train: TensorData, part_meta: TensorData, fold: int) -> TrainContext:
            fold_model = _create_model(cfg, k, stream=100 + fold)
            if setup.warm:
                setup.init(fold_model, fold)  # the earlier run's network of the same fold (warm start)
            elif pretrained is not None:
                apply_weights(fold_model, pretrained, source=str(pretrain_path))
            fctx = _make_ctx(fcfg, fold_model, k, part_train, part_meta, device, epochs=fs.epochs,
                             warmup_epochs=fs.warmup_epochs, milestones=fs.milestones, seed_offset=1000 * (fold + 1))
            fctx.on_step = lambda rec, fold=fold: _crossfit_status(rd, rec, fold, est.folds, fs.epochs)
            return fctx

        def save_fold(fold: int, res: dict) -> None:
            if not rd.writer:
                return
            saved = _load_folds(rd)
            saved[fold] = {**res, "train_images": [str(x) for x in images[train_rows][res["train_idx"]]],
                           "meta_images": [str(x) for x in images[meta_rows][res["meta_idx"]]]}
            # the fold's network and held-out images stay in the file: a later --from-run warm-starts each fold
            atomic.torch_save(rd.path(R.CROSSFIT), {str(i): {**{key: r[key] for key in _FOLD_EXTRA if key in r},
                                                             "train": torch.as_tensor(r["train"]),
                                                             "meta": torch.as_tensor(r["meta"]),
                                                             "seconds": float(r["seconds"])}
                                                    for i, r in saved.items()})
            rd.log(f"cross-fitting fold {fold + 1}/{est.folds} done in {res['seconds']:.1f}s")

        cf = crossfit(make_ctx, result["method"], result["method_cfg"], ctx.train, ctx.meta, k=est.folds,
                      seed=cfg.runtime.seed, done=done, on_fold=save_fold, folds=setup.folds)
        prior[train_rows] = cf.train_probs
        if len(meta_rows):
            prior[meta_rows] = cf.meta_probs
        meta_y = f.loc[meta_rows, "_major_idx"].to_numpy()
        info.update(fold_epochs=fs.epochs, fold_warmup_epochs=fs.warmup_epochs, fold_seconds=cf.seconds,
                    folds_warm_started=setup.warm,
                    cost_ratio=(sum(cf.seconds) / main_seconds) if main_seconds else None,
                    meta_acc_oos=float((cf.meta_probs.argmax(1) == meta_y).mean()) if len(meta_rows) else None)
    major = f["_major_idx"].to_numpy()
    known = np.full(n, -1)
    known[meta_rows] = major[meta_rows]
    verified = f["_verified"].to_numpy() if "_verified" in f else np.full(n, -1)
    known[verified >= 0] = verified[verified >= 0]  # reviewed labels are held fixed and anchor the confusions
    calibrate = est.calibration == "temperature" and est.folds >= 2  # meta probabilities are out-of-sample
    e = label_estimate(prior, data.votes, known=known, calibrate=calibrate,
                       calibration_rows=np.isin(np.arange(n), meta_rows), experts=est.experts,
                       confusions=est.confusions)
    info.update(temperature=e.temperature, calibrated=calibrate, em_iterations=e.iterations,
                confusion_fit=est.confusions,
                experts={"mode": est.experts, "confusions": {name: np.round(e.confusions[j], 4).tolist()
                                                             for j, name in enumerate(_expert_names(cfg, data))}
                         if est.experts != "none" else {}})
    return {"posterior": e.posterior, "method_probs": method_probs, "prior": e.prior, "verified": verified >= 0,
            "priority": review_priority(e.posterior, major, ordinal=data.ordinal), "known": known >= 0, "info": info}


def _expert_names(cfg: RunConfig, data: PreparedData) -> list[str]:
    from engine.data.votes import read_votes

    return list(read_votes(cfg.data.dataset, classes=data.classes, check_images=False).experts)


def _load_folds(rd: R.RunDir) -> dict:
    path = rd.path(R.CROSSFIT)
    if not path.is_file():
        return {}
    from engine.safe_load import torch_load

    raw = torch_load(path, what="cross-fitting checkpoint")
    return {int(i): {**{key: r[key] for key in _FOLD_EXTRA if key in r}, "train": r["train"].numpy(),
                     "meta": r["meta"].numpy(), "seconds": r["seconds"]} for i, r in raw.items()}


_FOLD_EXTRA = ("model", "train_images", "meta_images")  # kept in crossfit.pt for a later warm start


def _crossfit_status(rd: R.RunDir, rec: dict, fold: int, folds: int, epochs: int) -> None:
    if rec.get("step", 0) + 1 == rec.get("steps", 1):  # once per epoch is enough for the app
        rd.write_status("running", stage="crossfit", fold=fold + 1, folds=folds, epoch=rec.get("epoch", 0) + 1,
                        of=epochs, pid=_pid())


def run_warnings(cfg: RunConfig, state: FitState, best: dict, n_flagged: int, expected: float) -> list[dict]:
    """Events a user must see (codes for the app, words for people): silent fallbacks and doubtful outputs."""
    out = []
    if best.get("stage") == "warmup" and cfg.runtime.method not in ("ce",):
        out.append({"code": "warmup_model_selected",
                    "message": f"no epoch of {cfg.runtime.method}'s main phase reached the warm-up's meta accuracy, so "
                               f"the warm-up model (epoch {state.best_epoch + 1}) was kept"})
    lowered = [h for h in state.history if "alpha_lowered" in h.get("events", [])]
    if lowered:
        alpha = lowered[-1].get("alpha")
        out.append({"code": "alpha_lowered",
                    "message": f"the look-ahead step broke the model, so its step size α was lowered to {alpha:g} "
                               f"(epoch {lowered[-1]['epoch'] + 1})"})
    if expected > 0 and n_flagged > 1.25 * expected + 1:
        out.append({"code": "queue_exceeds_expected",
                    "message": f"{n_flagged} images are flagged but only {expected:.0f} wrong majority labels are "
                               "expected: many images are close calls"})
    if cfg.estimate.folds < 2:
        out.append({"code": "no_crossfit",
                    "message": "cross-fitting is off (--folds 0): the soft labels come from a model that trained on "
                               "these labels and may echo them"})
    return out


def _write_outputs(cfg: RunConfig, rd: R.RunDir, data: PreparedData, result: dict, device, wall: float) -> None:
    from engine.models import normalisation

    state, model, estimate = result["state"], result["model"], result["estimate"]
    train_rows = result["rows"][0]
    classes = data.classes
    f = data.frame
    post = estimate["posterior"]
    flags = flag_images(post, f["_major_idx"].to_numpy(), consensus=f[S.CONSENSUS].to_numpy(bool),
                        tie=f[S.TIE].to_numpy(bool), classes=classes, priority=estimate["priority"],
                        known=estimate["known"])
    labels = pd.DataFrame({S.IMAGE: f[S.IMAGE], S.ROLE: f[S.ROLE], S.VOTES: f[S.VOTES], S.MAJORITY: f[S.MAJORITY],
                           S.CONSENSUS: f[S.CONSENSUS].astype(bool)})
    for j, c in enumerate(classes):
        labels[S.prob_col(c)] = post[:, j].round(6)
    for j, c in enumerate(classes):
        labels[S.method_prob_col(c)] = estimate["method_probs"][:, j].round(6)
    labels[S.VERIFIED] = estimate["verified"].astype(int)
    labels = pd.concat([labels, flags], axis=1)[S.labels_columns(classes)]
    atomic.write_csv(rd.path(R.LABELS), labels)
    from engine.active import write_prior

    write_prior(rd.path(R.PRIOR), f[S.IMAGE], classes, estimate["prior"])  # the review queue's quick refresh

    best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    major = f["_major_idx"].to_numpy()
    train_labeled = major[train_rows] >= 0
    soft_major = post[train_rows].argmax(1)[train_labeled] == major[train_rows][train_labeled]
    n_flagged = int(flags["flag"].sum())
    expected = float(flags["flag_score"].sum())
    metrics = {
        "method": cfg.runtime.method,
        "method_params": dataclasses.asdict(result["method_cfg"]),
        "recipe": cfg.schedule.recipe,
        "classes": classes,
        "ordinal": data.ordinal,
        "best_epoch": state.best_epoch + 1,
        "selected_stage": best.get("stage"),
        "meta_acc": state.best_meta_acc,
        "meta_acc_oos": estimate["info"].get("meta_acc_oos"),
        "test_acc": best.get("test_acc"),
        "train_acc_majority": best.get("train_acc_majority"),
        "soft_label_agreement_with_majority": float(soft_major.mean()) if soft_major.size else None,
        "n_images": int(len(f)),
        "n_by_role": {r: int((f[S.ROLE] == r).sum()) for r in S.ROLES},
        "n_flagged": n_flagged,
        "expected_wrong_majority": expected,
        "estimator": estimate["info"],
        "review": {"reviewed": cfg.review.reviewed, "from_run": cfg.review.from_run, **(result.get("review") or {})},
        "warnings": run_warnings(cfg, state, best, n_flagged, expected),
        "history": state.history,
        "wall_time_s": wall,
        "device": str(device),
        "note": "model selected by meta-set accuracy; test accuracy is reported only; p:<class> is the label "
                "estimate (out-of-sample model probabilities calibrated on the meta set, combined with every "
                "expert's votes), method_p:<class> the method's own soft label",
    }
    atomic.write_json(rd.path(R.METRICS), metrics)
    mean, std = normalisation(model)
    atomic.torch_save(rd.path(R.MODEL), {
        "format": 1, "backbone": cfg.model.backbone, "classes": classes, "image_size": cfg.data.image_size,
        "mean": list(mean), "std": list(std), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "method": cfg.runtime.method, "engine_version": engine.__version__, "trained_on": str(cfg.data.dataset)})
    if best.get("stage") == "warmup":
        rd.log(f"note: the selected model is the warm-up's last epoch ({state.best_epoch + 1}): no epoch of "
               f"{cfg.runtime.method}'s main phase reached its meta accuracy, so training rows carry the warm-up "
               "model's predictions, not the method's soft labels")
    info = estimate["info"]
    if info.get("cost_ratio") is not None:
        rd.log(f"label estimation: cross-fitting took {sum(info['fold_seconds']):.1f}s = {info['cost_ratio']:.2f}x the "
               f"main training; temperature {info['temperature']:.2f}; out-of-sample meta accuracy "
               f"{info['meta_acc_oos']:.3f}")
    for w in metrics["warnings"]:
        rd.log(f"warning: {w['message']}")
    rd.log(f"wrote labels.csv ({n_flagged} flagged, {expected:.1f} wrong majority labels expected), metrics.json "
           f"(meta acc {state.best_meta_acc:.3f}" + (f", test acc {best['test_acc']:.3f}" if best.get("test_acc")
                                                      is not None else "") + "), model.pt")
