"""`mlc`: Meta Label Correction (Zheng, Awadallah & Dumais, AAAI 2021; ../shared/papers/mlc-meta-label-correction.md).

A label-correction network (LCN) g_φ(h(x), y') maps the main model's stop-gradient features h(x) and the noisy
(majority) label y' to a corrected soft label. Per step, with a noisy batch and a clean (meta) batch split in two
halves — one scores the look-ahead (meta loss), the other is added to the training batch with its true labels:

  L_train(θ, φ) = soft-CE over [noisy rows: g_φ(h(x), y') ; clean half: onehot(y)]        (paper eq. 1 + "mix")
  θ'(φ) = the real optimiser's update of θ on ∇θ L_train   (SGD with momentum + weight decay: `sgd_step_fn`)
  φ ← Adam step on ∂L_meta(θ'(φ))/∂φ                                                       (eqs. 3, 7)
  θ ← that same SGD update (the gradient taken at the current φ, as in the reference code)

The one-step meta-gradient is `engine.meta.lookahead_surrogate` (no unrolling). k-step approximation (eqs. 4–6,
reference `step_hmlc_K`): the LCN is stepped every k main steps with the accumulated gradient
G_t = ∂L_meta(θ'_t)/∂φ + γ_t·G_{t−1}, γ_t = ⟨(1−η)·g_{θ'}, g_θ⟩ / |g_θ|², where g_θ, g_{θ'} are the meta-batch
gradients before and after the look-ahead (H ≈ I). k > 1 costs two extra meta forward/backward passes per step.

Defaults: LCN from the paper (label embedding 128, tanh MLP with hidden 64 for images; the reference code uses
64/128), k = 1 (reference default; the paper's tables use 5 and find larger k helps above 60% noise), Adam with
amsgrad and no weight decay for the LCN (reference). LCN learning rate: the reference's 3e-5 goes with ~10^5 LCN
updates (CIFAR, 75 epochs × 1.5k steps); a ROP run makes ~10^3, and an Adam step does not scale with the gradient,
so the rate is scaled by the update count to the order of 1e-3 (the label network's rate in `metalabelnet`).

Choices where the paper is silent: the paper trains both networks from scratch; here the main model comes out of
the warm-up, and a random LCN would hand it near-random targets. So by default (`lcn_init=warmup`) the LCN is
first fitted (full batch, Adam) to reproduce the warm-up model's predictions on the training rows — its first
corrected labels are the warm-up predictions, as MetaLabelNet starts from the warm-up head; `lcn_init=random` is
the paper's Xavier initialisation. The LCN's features come from the same train-mode forward pass as the logits.
Soft labels for labels.csv: the LCN's corrected label from eval-mode features; unlabelled rows: the model's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine import distributed as D
from engine.errors import InputError, Problem
from engine.losses import soft_cross_entropy
from engine.meta import (
    LOOKAHEADS,
    features_and_logits,
    first_order_gradient,
    forward_with_jvp,
    lookahead_surrogate,
    meta_gradient,
    surrogate,
    trainable,
)
from engine.methods.base import Method, param, register
from engine.methods.soft_label_step import lookahead_param
from engine.train.steps import EpochMeter

LCN_INIT_STEPS = 200  # full-batch Adam steps fitting the LCN to the warm-up predictions (lcn_init=warmup)
LCN_INIT_LR = 1e-2



@dataclass(frozen=True)
class MLCConfig:
    k: int = param(1, "look-ahead steps: the LCN is updated every k steps with the k-step meta-gradient (paper eq. 6; "
                   "reference default 1; the paper uses 5 and finds larger k helps above 0.6 noise)")
    meta_lr: float = param(1e-3, "Adam learning rate of the label-correction network (reference: 3e-5 over ~100x more "
                              "updates than a ROP run; scaled by the update count)")
    meta_weight_decay: float = param(0.0, "Adam weight decay of the label-correction network (reference: 0)")
    label_dim: int = param(128, "label embedding size of the LCN (paper: 128)")
    hidden_dim: int = param(64, "hidden size of the LCN's tanh MLP (paper: 64 for images, 768 for text)")
    lcn_init: str = param("warmup", "warmup = fit the LCN to the warm-up model's predictions first; random = the "
                                 "paper's Xavier initialisation")
    lookahead: str = lookahead_param()


class LabelCorrectionNet(nn.Module):
    """g_φ(h, y') -> corrected soft label. h (B, F) features, y' (B,) noisy labels -> (B, K) probabilities.

    Paper (Fig. 2a / "LCN architecture"): Embedding(K, label_dim) of y' concatenated with h, then
    Linear(F + label_dim, hidden) → tanh → Linear(hidden, hidden) → tanh → Linear(hidden, K) → softmax.
    Initialisation as the reference code: Xavier-uniform embedding, Xavier-normal weights, zero biases.
    """

    def __init__(self, feature_dim: int, num_classes: int, *, label_dim: int = 128, hidden_dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(num_classes, label_dim)
        self.net = nn.Sequential(nn.Linear(feature_dim + label_dim, hidden_dim), nn.Tanh(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, num_classes))
        nn.init.xavier_uniform_(self.emb.weight)
        for layer in self.net[::2]:
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def logits(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([h, self.emb(y)], dim=1))

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(h, y), dim=1)


def sgd_step_fn(optimizer: torch.optim.SGD) -> Callable[[dict, dict], dict]:
    """step_fn(params, grads) -> θ' exactly as `optimizer.step()` would move the parameters on gradients `grads`.

    torch.optim.SGD: d = g + wd·θ; buf = μ·buf + (1−dampening)·d (buf = d on the first step); θ' = θ − lr·buf.
    dθ'/dg = −lr, as `lookahead_surrogate` requires, which needs dampening 0, no Nesterov, not maximize and one lr.
    Parameters the optimiser does not hold take a plain SGD step with the same lr.
    """
    groups = {p: g for g in optimizer.param_groups for p in g["params"]}
    lrs = {g["lr"] for g in optimizer.param_groups}
    bad = [k for g in optimizer.param_groups for k in ("nesterov", "maximize") if g.get(k)]
    if any(g.get("dampening", 0) for g in optimizer.param_groups):
        bad.append("dampening")
    if bad or len(lrs) != 1:
        raise ValueError(f"MLC's look-ahead needs SGD without {sorted(set(bad))} and with one learning rate, got {lrs}")
    (lr,) = lrs

    def step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for n, p in params.items():
            group = groups.get(p, {})
            d = grads[n]
            if group.get("weight_decay", 0):
                d = d + group["weight_decay"] * p.detach()
            buf = optimizer.state.get(p, {}).get("momentum_buffer") if group.get("momentum", 0) else None
            if buf is not None:
                d = group["momentum"] * buf + d
            out[n] = p.detach() - lr * d
        return out

    return step


def optimizer_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """⟨a, b⟩ over lists of tensors, in their own dtype (no float64: MPS has none), with one host sync."""
    return float(torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum())


def mlc_meta_gradient(model: nn.Module, lcn: LabelCorrectionNet, optimizer: torch.optim.SGD, *, x, y, clean_x, clean_y,
                      meta_x, meta_y, autocast=None, prev: list[torch.Tensor] | None = None, lookahead: str = "full",
                      reduce: Callable[[list[torch.Tensor]], object] | None = None):
    """One MLC step's meta-gradient for the LCN, and the training gradient for the real update.

    x, y: (B, C, H, W), (B,) noisy batch and its majority labels; clean_x, clean_y: (Bc, C, H, W), (Bc,) the half of
    the clean batch added to training (Bc may be 0); meta_x, meta_y: (M, C, H, W), (M,) the half that scores the
    look-ahead. The look-ahead is the optimiser's own update (`sgd_step_fn`), at its current learning rate η;
    `lookahead="full"` takes the meta gradient at that θ', `"first-order"` at θ (`engine.meta`; MLC's η is the base
    learning rate, so θ' is close to θ). prev: the accumulated LCN gradient G_{t−1} of this k-window (None at a
    window start, and always when k = 1).

    Returns (lcn_grads: one tensor per `lcn.parameters()` — G_t, train_grads: {name: ∇θ L_train} for the trainable
    model parameters, info: {"loss": L_train, "meta_loss": L_meta at θ' (full) or θ (first-order), 0-dim tensors;
    "gamma": float}).

    `reduce(tensors)` (several processes: `engine.distributed.average_`; the batches are this process's shards) is
    applied in place to every gradient the maths takes over the whole batch: the training gradient (before the
    look-ahead uses it), the meta gradients, and the LCN's meta-gradient — the LCN is shared by all rows, so the mean
    of the processes' shard-mean gradients is the global batch's. Every process then holds the same G_t and γ.
    """
    autocast = autocast or contextlib.nullcontext
    lr = optimizer_lr(optimizer)
    params = trainable(model)
    first_order = lookahead == "first-order"
    g_before = None
    reduce = reduce or (lambda tensors: None)
    if first_order:  # g at θ, and the training forward carries u = J g
        g_before, meta_loss = first_order_gradient(model, meta_x, meta_y, autocast)
    elif prev is not None:
        g_before = meta_gradient(model, params, meta_x, meta_y, autocast)[0]
    if g_before is not None:
        reduce(list(g_before.values()))
    xx = torch.cat([x, clean_x]) if len(clean_x) else x
    if first_order:
        h, logits, u = forward_with_jvp(model, xx, g_before, autocast=autocast, with_features=True)
    else:
        with autocast():
            h, logits = features_and_logits(model, xx)
    dtype = next(lcn.parameters()).dtype
    corrected = lcn(h[: len(x)].detach().to(dtype), y)  # stop-gradient features (paper: "stop-gradient operators")
    targets = torch.cat([corrected, F.one_hot(clean_y, corrected.shape[1]).to(dtype)])
    step = sgd_step_fn(optimizer)
    if first_order:
        loss = soft_cross_entropy(logits, targets.detach())
        train_grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True), strict=True))
        reduce(list(train_grads.values()))
        meta_surrogate = surrogate(logits, targets, soft_cross_entropy, u, lr)
        new = step(params, train_grads) if prev is not None else None
    else:
        captured = {}

        def step_fn(p, g):
            captured["grads"], captured["new"] = g, step(p, g)
            return captured["new"]

        meta_surrogate, info = lookahead_surrogate(model, x=xx, logits=logits, targets=targets,
                                                   loss_fn=soft_cross_entropy, meta_x=meta_x, meta_y=meta_y, lr=lr,
                                                   step_fn=step_fn, autocast=autocast, reduce=reduce)
        train_grads, new, meta_loss = captured["grads"], captured["new"], info["meta_loss"]
    lcn_params = list(lcn.parameters())
    grads = torch.autograd.grad(meta_surrogate, lcn_params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(lcn_params, grads, strict=True)]
    reduce(grads)
    gamma = 0.0
    if prev is not None:
        before = [g_before[n] for n in params]
        after = list(meta_gradient(model, new, meta_x, meta_y, autocast)[0].values())
        reduce(after)
        norm2 = _dot(before, before)
        gamma = (1.0 - lr) * _dot(after, before) / norm2 if norm2 > 0 else 0.0
        grads = [g + gamma * p for g, p in zip(grads, prev, strict=True)]
    loss = soft_cross_entropy(logits.detach(), targets.detach())
    return grads, train_grads, {"loss": loss, "meta_loss": meta_loss, "gamma": gamma}


@register
class MLC(Method):
    name = "mlc"
    summary = "Meta Label Correction: a meta-learned network corrects each noisy label from image features"
    config_cls = MLCConfig
    learns_labels = True
    meta_rows_per_process = 4  # a meta batch is split in two halves of at least 2 images each

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        where = f"method '{self.name}' parameters"
        problems = []
        if cfg.k < 1:
            problems.append(Problem(where, f"k must be >= 1, got {cfg.k}"))
        if cfg.meta_lr <= 0 or cfg.meta_weight_decay < 0:
            problems.append(Problem(where, f"need meta_lr > 0 and meta_weight_decay >= 0, got {cfg.meta_lr}, "
                                           f"{cfg.meta_weight_decay}"))
        if cfg.label_dim < 1 or cfg.hidden_dim < 1:
            problems.append(Problem(where, f"label_dim and hidden_dim must be >= 1, got {cfg.label_dim}, {cfg.hidden_dim}"))
        if cfg.lcn_init not in ("warmup", "random"):
            problems.append(Problem(where, f"lcn_init must be 'warmup' or 'random', got '{cfg.lcn_init}'"))
        if cfg.lookahead not in LOOKAHEADS:
            problems.append(Problem(where, f"lookahead must be one of {', '.join(LOOKAHEADS)}, got '{cfg.lookahead}'"))
        if problems:
            raise InputError(problems)

    def _make(self, feature_dim: int) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.feature_dim = feature_dim
        self.lcn = LabelCorrectionNet(feature_dim, ctx.num_classes, label_dim=cfg.label_dim,
                                      hidden_dim=cfg.hidden_dim).to(ctx.device)
        self.opt = torch.optim.Adam(self.lcn.parameters(), lr=cfg.meta_lr, weight_decay=cfg.meta_weight_decay,
                                    amsgrad=True)

    def start(self) -> None:
        h, probs, y = self._train_outputs()
        self._make(h.shape[1])
        if self.cfg.lcn_init == "warmup":
            self._fit_lcn(h, probs, y)
        self.acc: list[torch.Tensor] | None = None  # G_{t−1} of the current k-window
        self.steps = 0  # main steps taken (the LCN steps when steps % k == 0)

    @torch.no_grad()
    def _train_outputs(self):
        """Eval-mode features (N_l, F), softmax predictions (N_l, K) and majority labels (N_l,) of labelled rows."""
        ctx, model = self.ctx, self.ctx.model
        was = model.training
        model.eval()

        def outputs(b) -> torch.Tensor:
            h, logits = features_and_logits(model, b.x)
            return torch.cat([h.float(), torch.softmax(logits.float(), 1)], 1)

        with ctx.autocast():
            both = ctx.map_rows(ctx.train, outputs, width=(model.num_features + ctx.num_classes,))
        model.train(was)
        keep = ctx.train.targets.cpu() >= 0
        both = both[keep].to(ctx.device)
        targets = ctx.train.targets[keep.to(ctx.train.targets.device)].to(ctx.device)
        return both[:, :-ctx.num_classes], both[:, -ctx.num_classes:], targets

    @torch.enable_grad()
    def _fit_lcn(self, h, probs, y) -> None:
        """lcn_init=warmup: fit the LCN to reproduce the warm-up predictions (soft cross-entropy, full batch)."""
        if not len(y):
            return
        opt = torch.optim.Adam(self.lcn.parameters(), lr=LCN_INIT_LR)
        for _ in range(LCN_INIT_STEPS):
            loss = soft_cross_entropy(self.lcn.logits(h, y), probs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def train_epoch(self, epoch: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        model = ctx.model
        model.train()
        meta = ctx.meta_index_batches(epoch)
        meter = EpochMeter(ctx, epoch, ctx.steps_per_epoch())
        for step, b in enumerate(ctx.batches(epoch)):
            meta_b, clean_b = self._meta_halves(meta)
            lcn_grads, train_grads, info = mlc_meta_gradient(
                model, self.lcn, ctx.optimizer, x=b.x, y=b.y, clean_x=clean_b.x, clean_y=clean_b.y, meta_x=meta_b.x,
                meta_y=meta_b.y, autocast=ctx.autocast, prev=self.acc, lookahead=cfg.lookahead, reduce=D.average_)
            loss = info["loss"]
            self.steps += 1
            if self.steps % cfg.k == 0:  # end of a k-window: step the LCN with G_t
                self.opt.zero_grad(set_to_none=True)
                for p, g in zip(self.lcn.parameters(), lcn_grads, strict=True):
                    p.grad = g.detach()
                self.opt.step()
                self.acc = None
            else:
                self.acc = [g.detach() for g in lcn_grads]
            # the real update: the same SGD step the look-ahead took (gradient at the current LCN, as the reference)
            ctx.optimizer.zero_grad(set_to_none=True)
            for name, p in trainable(model).items():
                p.grad = train_grads[name]
            ctx.optimizer.step()
            meter.step(step, finite={"loss": loss, "meta loss": info["meta_loss"]}, loss=loss,
                       meta_loss=info["meta_loss"])
        return meter.means()

    def _meta_halves(self, meta):
        """The next meta batch of the stream `meta` (global row indices and flips) split as the reference does
        (`gbs = bs // 2`): the first half scores the look-ahead, the second half trains; topped up with the next
        batch when a half would give a process fewer than 2 images. Each half is then split over the processes."""
        idx, flip = next(meta)
        if len(idx) < 2 * D.min_batch():  # the meta set's last partial batch
            more, more_flip = next(meta)
            idx = torch.cat([idx, more])
            flip = None if flip is None else torch.cat([flip, more_flip])
        half = len(idx) // 2
        return (self.ctx.take(self.ctx.meta, idx[:half], None if flip is None else flip[:half]),
                self.ctx.take(self.ctx.meta, idx[half:], None if flip is None else flip[half:]))

    @torch.no_grad()
    def soft_labels(self) -> torch.Tensor:
        """(N, K): the LCN's corrected label g(h(x), majority) from eval-mode features; unlabelled rows: model output."""
        ctx, model = self.ctx, self.ctx.model
        was = model.training
        model.eval()

        def corrected(b) -> torch.Tensor:
            with ctx.autocast():
                h, logits = features_and_logits(model, b.x)
            soft = torch.softmax(logits.float(), 1)
            keep = b.y >= 0
            if bool(keep.any()):
                soft[keep] = self.lcn(h[keep].float(), b.y[keep])  # the LCN in float32, outside autocast
            return soft

        out = ctx.map_rows(ctx.train, corrected, width=(ctx.num_classes,))
        model.train(was)
        return out

    def state_dict(self) -> dict:
        return {"feature_dim": self.feature_dim, "lcn": {k: v.cpu() for k, v in self.lcn.state_dict().items()},
                "opt": self.opt.state_dict(), "steps": self.steps,
                "acc": None if self.acc is None else [g.cpu() for g in self.acc]}

    def load_state_dict(self, state: dict) -> None:
        self._make(state["feature_dim"])
        self.lcn.load_state_dict(state["lcn"])
        self.opt.load_state_dict(state["opt"])
        self.steps = state["steps"]
        self.acc = None if state["acc"] is None else [g.to(self.ctx.device) for g in state["acc"]]
