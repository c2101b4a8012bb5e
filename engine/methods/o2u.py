"""`o2u`: O2U-Net (Huang et al. 2019; summarised in ../shared/papers/o2u-net-and-active-passive-loss.md §2.2).

Three steps. (1) Pre-training with cross-entropy on the noisy labels = the pipeline's warm-up; the model and
optimiser state at `start()` are the pre-trained checkpoint. (2) Cyclical stage: cross-entropy with a learning
rate that falls linearly from r1 to r2 over each cycle of c epochs and then jumps back, so the network passes
from underfitting to overfitting several times; every image's loss minus that epoch's mean loss is recorded
(from the training forward pass, as in the reference code) and averaged over the cyclical epochs. (3) The images
are ranked by that normalised mean loss; the top `forget_rate` fraction is treated as noisy, and the model is
retrained from the pre-trained checkpoint on the rest.

Epoch budget: the method gets the main phase, M = epochs − warm-up epochs. The O2U/APL paper's runs (100 epochs)
spend 30 on pre-training, 20 on the cyclical stage and 50 on retraining, so by default the cyclical stage takes 2/7
of M (ROP schedule, M = 20: 6 cyclical + 14 retraining epochs) and c is half of it (that paper's 20 cyclical epochs
hold two cycles of c = 10), at least 2 (the rate changes per epoch, so a 1-epoch cycle would stay at r2).
Retraining (R = M − cyclical epochs) replays the run's step schedule of the main phase compressed onto its epochs
(retraining epoch j uses the rate of main epoch ⌊j·M/R⌋), i.e. it is `ce`'s main phase on the kept rows.

Learning rates are relative to the run's --lr: O2U uses its constant pre-training rate as r1 (0.01) and r2 = r1/10
(0.001); our pre-training is the warm-up at --lr, so r1 = 1×, r2 = 0.1× --lr. The cyclical batch is the run's
batch size unless set: O2U detects with batch 16 (pre-training 128), which is already the ROP batch size.

Forget rate (default: estimated). The paper sets it to the known noise rate, which we do not know. Estimate: the
fraction of labelled training rows whose majority label the warm-up model disagrees with and, when the pipeline
provides `ctx.train_consensus` (per training row, True = the graders agreed), whose graders were split. The
non-consensus fraction alone would count every split vote as wrong (three quarters of the demo data's training
rows, whose majority is wrong on about a third); the model's disagreement alone also counts unanimous rows the
warm-up model has not learnt yet. Capped at 0.5 (a majority label wrong more often than right is beyond these methods).

Choices where the paper is silent: the cyclical stage continues with the run's SGD optimiser (momentum buffers
kept); retraining restores the optimiser state of the checkpoint too. During the cyclical stage the method's
evaluation network (`model_for_eval`, used for model selection and soft labels) is the pre-trained model, not the
oscillating cyclical one. `flag_scores()` is the normalised mean loss (rows never scored: the lowest score).
Progress records keep stage "main" and add "phase": "cyclical" | "retrain". A last batch of one image is skipped
in both stages (BatchNorm cannot train on it; the kept rows' count is data-dependent).
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine import distributed as D
from engine.errors import InputError, Problem
from engine.losses import cross_entropy, upcast
from engine.methods.base import Method, param, register
from engine.train.context import TensorData, TrainContext, check_finite
from engine.train.steps import hard_label_step

CYCLICAL_SHARE = 20 / 70  # the paper's runs: 20 cyclical epochs out of the 70 after pre-training (50 retraining)
MAX_ESTIMATED_FORGET = 0.5



@dataclass(frozen=True)
class O2UConfig:
    forget_rate: float = param(-1.0, "fraction of labelled training images treated as noisy and left out of retraining; "
                                  "-1 = estimate (split-vote rows the warm-up model disagrees with; paper: the "
                                  "known noise rate)")
    cyclical_epochs: int = param(0, "epochs of the cyclical stage; 0 = 2/7 of the main phase (paper: 20 cyclical + "
                                  "50 retraining epochs after pre-training); the rest of the main phase retrains")
    cycle_length: int = param(0, "epochs per cycle c; 0 = half the cyclical stage (two cycles), at least 2 (paper: "
                               "c=10 over 20 cyclical epochs)")
    r1: float = param(1.0, "cyclical stage: highest learning rate, as a multiple of --lr (paper: r1=0.01 = its "
                        "pre-training rate)")
    r2: float = param(0.1, "cyclical stage: lowest learning rate, as a multiple of --lr (paper: r2=0.001 = r1/10)")
    cyclical_batch_size: int = param(0, "batch size of the cyclical stage, 0 = --batch-size (paper: 16, a smaller "
                                     "batch than pre-training's 128)")


def cyclical_lr(t: int, *, c: int, r1: float, r2: float) -> float:
    """Learning rate of cyclical epoch t (1-based): s = (1 + (t−1) mod c)/c, r = (1−s)·r1 + s·r2 (O2U's schedule).

    It falls linearly to r2 at the last epoch of each cycle (t = c, 2c, ...) and jumps back up at t = c+1.
    """
    s = (1 + (t - 1) % c) / c
    return (1 - s) * r1 + s * r2


def plan_epochs(main_epochs: int, cyclical_epochs: int = 0, cycle_length: int = 0) -> tuple[int, int]:
    """(cyclical epochs, cycle length c) for a main phase of `main_epochs`; 0 = the defaults in the module doc."""
    if cyclical_epochs <= 0:
        cyclical_epochs = min(max(1, round(main_epochs * CYCLICAL_SHARE)), max(1, main_epochs - 1))
    if cycle_length <= 0:  # two cycles, but at least 2 epochs per cycle (with c = 1 the rate would stay at r2)
        cycle_length = min(cyclical_epochs, max(2, math.ceil(cyclical_epochs / 2)))
    return cyclical_epochs, cycle_length


@contextlib.contextmanager
def _batch_size(ctx: TrainContext, size: int):
    saved = ctx.batch_size
    ctx.batch_size = size or saved
    try:
        yield
    finally:
        ctx.batch_size = saved


def _cpu_copy(obj):
    """Deep copy with every tensor cloned to the CPU (optimizer/model states are live references)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


def estimate_noise_rate(ctx: TrainContext) -> tuple[float, str]:
    """(noise-rate estimate over labelled training rows, how it was estimated); see the module docstring."""
    labeled = (ctx.train.targets >= 0).cpu()
    if not bool(labeled.any()):
        return 0.0, "no labelled rows"
    disagree = ctx.predict_train().argmax(1) != ctx.train.targets.cpu()
    consensus = getattr(ctx, "train_consensus", None)
    if consensus is not None:
        consensus = torch.as_tensor(consensus).bool().cpu()
        if consensus.shape != labeled.shape:
            raise ValueError(f"ctx.train_consensus has shape {tuple(consensus.shape)}, expected {tuple(labeled.shape)}")
        suspect, how = disagree & ~consensus, "graders split and the warm-up model disagrees with the majority"
    else:
        suspect, how = disagree, "the warm-up model disagrees with the majority"
    return min(float(suspect[labeled].double().mean()), MAX_ESTIMATED_FORGET), how


@register
class O2U(Method):
    name = "o2u"
    summary = "O2U-Net: cyclical learning rate ranks images by loss; retrain without the top-ranked (noisy) ones"
    config_cls = O2UConfig
    needs_meta = False

    @classmethod
    def process_problems(cls, params: dict, processes: int) -> list:
        size = int(params.get("cyclical_batch_size", 0) or 0)
        if not size or (size % processes == 0 and size >= 2 * processes):
            return []
        return [Problem(f"--{cls.name}-cyclical-batch-size", f"{size} images do not split over {processes} processes "
                        "into shards of at least 2", f"use a multiple of {processes}, at least {2 * processes}")]

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.n_main = max(0, ctx.epochs - ctx.warmup_epochs)
        self._check()
        self.n_cyclical, self.cycle = plan_epochs(self.n_main, cfg.cyclical_epochs, cfg.cycle_length)
        self.n_retrain = max(0, self.n_main - self.n_cyclical)

    def _check(self) -> None:
        cfg, where = self.cfg, f"method '{self.name}' parameters"
        problems = []
        if not (cfg.forget_rate == -1 or 0 <= cfg.forget_rate < 1):
            problems.append(Problem(where, f"forget_rate must be in [0, 1) or -1 (estimate), got {cfg.forget_rate}"))
        if cfg.cyclical_epochs < 0:
            problems.append(Problem(where, f"cyclical_epochs must be >= 1 or 0 (auto), got {cfg.cyclical_epochs}"))
        elif self.n_main and cfg.cyclical_epochs >= self.n_main:
            problems.append(Problem(
                where, f"cyclical_epochs={cfg.cyclical_epochs} leaves no retraining epoch: the main phase has "
                       f"{self.n_main} epochs (--epochs {self.ctx.epochs} minus --warmup-epochs {self.ctx.warmup_epochs})",
                f"use cyclical_epochs <= {self.n_main - 1}, 0 (auto), or more --epochs"))
        if cfg.cycle_length < 0:
            problems.append(Problem(where, f"cycle_length must be >= 1 or 0 (auto), got {cfg.cycle_length}"))
        if not 0 < cfg.r2 <= cfg.r1:
            problems.append(Problem(where, f"need 0 < r2 <= r1, got r1={cfg.r1}, r2={cfg.r2}"))
        if cfg.cyclical_batch_size < 0:
            problems.append(Problem(where, f"cyclical_batch_size must be >= 0, got {cfg.cyclical_batch_size}"))
        if problems:
            raise InputError(problems)

    # --- the retraining loss (o2u-apl overrides both) -------------------------------------------------------
    retrain_clip: float = 0.0  # gradient-norm clip of the retraining stage (0 = off)

    def retrain_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, K), (B,) -> scalar: the loss of the retraining stage (O2U: cross-entropy)."""
        return cross_entropy(logits, y)

    # --- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        ctx = self.ctx
        self.stage = "cyclical"
        self.cyclical_done = 0
        self.retrain_done = 0
        self.pretrained = {"model": _cpu_copy(ctx.model.state_dict()), "optimizer": _cpu_copy(ctx.optimizer.state_dict())}
        self._make_pretrained_model()
        self.noise_estimate, self.noise_estimate_from = estimate_noise_rate(ctx)
        self.forget_rate = self.cfg.forget_rate if self.cfg.forget_rate >= 0 else self.noise_estimate
        n = len(ctx.train)
        self.loss_sum = torch.zeros(n, dtype=torch.float64)  # Σ over cyclical epochs of (loss − epoch mean loss)
        self.loss_count = torch.zeros(n, dtype=torch.long)
        self.keep: torch.Tensor | None = None  # (N,) bool: labelled rows kept for retraining

    def _make_pretrained_model(self) -> None:
        self.pretrained_model = copy.deepcopy(self.ctx.model)
        self.pretrained_model.load_state_dict(self.pretrained["model"])
        self.pretrained_model.eval().requires_grad_(False)
        for p in self.pretrained_model.parameters():
            p.grad = None  # deepcopy copies .grad too

    def train_epoch(self, epoch: int) -> dict:
        if self.stage == "cyclical":
            stats = self._cyclical_epoch(epoch)
            self.cyclical_done += 1
            if self.cyclical_done >= self.n_cyclical and self.n_retrain > 0:
                self._begin_retraining()
                stats.update(forgotten=int(self.n_forgotten), forget_rate=float(self.forget_rate))
            return stats
        stats = self._retrain_epoch(epoch)
        self.retrain_done += 1
        return stats

    def _set_lr(self, lr: float) -> None:
        for group in self.ctx.optimizer.param_groups:
            group["lr"] = lr

    def _cyclical_epoch(self, epoch: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        lr = cyclical_lr(self.cyclical_done + 1, c=self.cycle, r1=cfg.r1 * ctx.lr, r2=cfg.r2 * ctx.lr)
        self._set_lr(lr)
        model, opt = ctx.model, ctx.optimizer
        model.train()
        losses = torch.zeros(len(ctx.train), device=ctx.device)
        seen = torch.zeros(len(ctx.train), dtype=torch.bool, device=ctx.device)
        total, n = 0.0, 0
        with _batch_size(ctx, cfg.cyclical_batch_size):
            steps = ctx.steps_per_epoch()
            for step, b in enumerate(ctx.batches(epoch)):
                if len(b.y) < 2:  # a last batch of one image: BatchNorm cannot train on it (the row is scored next epoch)
                    continue
                with ctx.autocast():
                    logits = ctx.ddp(b.x)  # the model (inside DDP with several processes)
                per_image = F.cross_entropy(upcast(logits), b.y, reduction="none")  # (B,)
                loss = per_image.mean()
                check_finite(loss, "main", epoch, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses[b.idx] = per_image.detach().float()
                seen[b.idx] = True
                value = float(loss.detach())
                total += value * len(b.y)
                n += len(b.y)
                ctx.on_step({"stage": "main", "phase": "cyclical", "epoch": epoch, "step": step, "steps": steps,
                             "loss": value})
        # several processes: each scored the rows of its shards; every process gets every row's loss
        scored = torch.stack([losses, seen.float()], 1)
        D.merge_rows(scored, seen)
        seen, losses = scored[:, 1].cpu() > 0, scored[:, 0].cpu().double()
        if bool(seen.any()):
            self.loss_sum[seen] += losses[seen] - losses[seen].mean()  # O2U: each epoch's loss minus its mean
            self.loss_count[seen] += 1
        return {"loss": total / max(n, 1), "lr": lr, "phase": "cyclical"}

    def mean_normalized_loss(self) -> torch.Tensor:
        """(N,) O2U's ranking score: mean over cyclical epochs of (loss − epoch mean); NaN where never scored."""
        out = torch.full_like(self.loss_sum, float("nan"))
        scored = self.loss_count > 0
        out[scored] = self.loss_sum[scored] / self.loss_count[scored]
        return out

    def _begin_retraining(self) -> None:
        """Rank, forget the top `forget_rate` of the labelled rows, restore the pre-trained model and optimiser."""
        ctx = self.ctx
        labeled = (ctx.train.targets >= 0).cpu()
        score = self.mean_normalized_loss()
        candidates = torch.nonzero(labeled & ~score.isnan()).squeeze(1)
        n_labeled = int(labeled.sum())
        n_remember = math.floor((1 - self.forget_rate) * n_labeled + 1e-6)  # O2U: keep ⌊(1−k)·N⌋ rows
        n_forget = min(n_labeled - n_remember, len(candidates))
        order = candidates[torch.argsort(score[candidates], descending=True, stable=True)]
        keep = labeled.clone()
        keep[order[:n_forget]] = False
        self.keep = keep
        ctx.model.load_state_dict(self.pretrained["model"])
        ctx.optimizer.load_state_dict(self.pretrained["optimizer"])
        self.pretrained = None
        self.pretrained_model = None
        self.stage = "retrain"

    @property
    def n_forgotten(self) -> int:
        return 0 if self.keep is None else int(((self.ctx.train.targets >= 0).cpu() & ~self.keep).sum())

    def _retrain_epoch(self, epoch: int) -> dict:
        ctx = self.ctx
        mapped = ctx.warmup_epochs + (self.retrain_done * self.n_main) // max(self.n_retrain, 1)
        lr = ctx.lr_at(mapped)
        self._set_lr(lr)
        keep = self.keep.to(ctx.device)
        data = TensorData(ctx.train.images, torch.where(keep, ctx.train.targets, torch.full_like(ctx.train.targets, -1)))
        ctx.model.train()
        steps = ctx.steps_per_epoch(int(self.keep.sum()))
        total, n = 0.0, 0
        for step, b in enumerate(ctx.batches(epoch, data=data)):
            if len(b.y) < 2:  # the kept rows' count is data-dependent: skip a last batch of one image (BatchNorm)
                continue
            loss = hard_label_step(ctx, ctx.model, ctx.optimizer, b, loss_fn=self.retrain_loss, clip=self.retrain_clip)
            check_finite(loss, "main", epoch, step)
            total += float(loss) * len(b.y)
            n += len(b.y)
            ctx.on_step({"stage": "main", "phase": "retrain", "epoch": epoch, "step": step, "steps": steps,
                         "loss": float(loss)})
        return {"loss": total / max(n, 1), "lr": lr, "phase": "retrain"}

    # --- outputs --------------------------------------------------------------------------------------------
    def selectable(self) -> bool:
        """Whether the model after the epoch just trained may be selected (a hook for the loop, see the report):
        not during the cyclical stage, whose ranking is incomplete and whose evaluation model is the pre-trained one."""
        return self.stage != "cyclical" or self.cyclical_done >= self.n_cyclical

    def model_for_eval(self) -> torch.nn.Module:
        """The pre-trained model while the cyclical stage runs (its weights are where retraining starts)."""
        return self.pretrained_model if getattr(self, "pretrained_model", None) is not None else self.ctx.model

    def soft_labels(self) -> torch.Tensor:
        return self.ctx.predict_train(self.model_for_eval())

    def flag_scores(self) -> np.ndarray | None:
        """O2U's normalised mean loss (higher = more likely mislabelled); rows never scored get the lowest score."""
        score = self.mean_normalized_loss()
        scored = ~score.isnan()
        if not bool(scored.any()):
            return None
        score[~scored] = score[scored].min()
        return score.numpy()

    def state_dict(self) -> dict:
        return {"stage": self.stage, "cyclical_done": self.cyclical_done, "retrain_done": self.retrain_done,
                "noise_estimate": self.noise_estimate, "noise_estimate_from": self.noise_estimate_from,
                "forget_rate": self.forget_rate, "loss_sum": self.loss_sum.clone(),
                "loss_count": self.loss_count.clone(), "keep": None if self.keep is None else self.keep.clone(),
                "pretrained": self.pretrained}

    def load_state_dict(self, state: dict) -> None:
        for key in ("stage", "cyclical_done", "retrain_done", "noise_estimate", "noise_estimate_from", "forget_rate"):
            setattr(self, key, state[key])
        self.loss_sum = state["loss_sum"].clone()
        self.loss_count = state["loss_count"].clone()
        self.keep = None if state["keep"] is None else state["keep"].clone()
        self.pretrained = state["pretrained"]
        if self.pretrained is not None:
            self._make_pretrained_model()
        else:
            self.pretrained_model = None
