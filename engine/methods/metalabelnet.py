"""`metalabelnet`: MetaLabelNet (Algan & Ulusoy; ../shared/papers/metalabelnet.md).

Soft labels come from a single-layer perceptron (features × classes) over the features of a frozen clone of the
warm-up network without its head. Per batch the same three steps as MSLG, with the SLP's weights as the meta
parameters (updated with Adam on the meta-gradient) instead of per-image label variables. Since the label
generator needs no training label, rows with role=unlabeled take part in the main phase.

Choices where the paper is silent: the SLP starts as a copy of the warm-up network's head (so the first soft
labels are the warm-up predictions), and the frozen extractor's features of every training image (plain and
flipped) are computed once at the start, since the extractor never changes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from engine import distributed as D
from engine.methods.base import param, register
from engine.methods.soft_label_step import (
    LookaheadCheck,
    SoftLabelMethod,
    lookahead_param,
    meta_jvp_param,
    real_update_param,
    soft_label_meta_step,
)
from engine.models import features
from engine.train.steps import EpochMeter


@dataclass(frozen=True)
class MetaLabelNetConfig:
    alpha: float = param(0.5, "learning rate of the virtual (look-ahead) step, as in MSLG; divided by 10 when it "
                         "breaks the model in the first steps (logged)")
    beta: float = param(1e-3, "Adam learning rate of the label network (paper: tuned per dataset; 1e-3 default)")
    slp_weight_decay: float = param(1e-4, "Adam weight decay of the label network")
    entropy_weight: float = param(1.0, "weight of the entropy loss in the real update (paper: 1)")
    lookahead: str = lookahead_param()
    meta_jvp: str = meta_jvp_param()
    real_update: str = real_update_param()


@register
class MetaLabelNet(SoftLabelMethod):
    name = "metalabelnet"
    summary = "MetaLabelNet: a meta-learned perceptron on frozen features generates soft labels; uses unlabeled rows"
    config_cls = MetaLabelNetConfig
    learns_labels = True
    uses_unlabeled = True

    def start(self) -> None:
        ctx = self.ctx
        extractor = copy.deepcopy(ctx.model).eval()
        for p in extractor.parameters():
            p.requires_grad_(False)
        self.slp = copy.deepcopy(ctx.model.get_classifier()).float().to(ctx.device)
        if not isinstance(self.slp, nn.Linear):  # heads with pooling/dropout: fall back to a fresh linear layer
            self.slp = nn.Linear(ctx.model.num_features, ctx.num_classes).to(ctx.device)
        self.slp.requires_grad_(True)
        self.feats = self._extract(extractor)  # (N, 2, F): plain and flipped
        self.opt = torch.optim.Adam(self.slp.parameters(), lr=self.cfg.beta, weight_decay=self.cfg.slp_weight_decay)
        self.check = LookaheadCheck(self.cfg.alpha)

    @torch.no_grad()
    def _extract(self, extractor) -> torch.Tensor:
        """(N, 2, F) features of every training image, plain and flipped (split over the processes, gathered)."""
        ctx = self.ctx
        out = []
        for flip in (False, True):
            with ctx.autocast():
                out.append(ctx.map_rows(ctx.train, lambda b: features(extractor, b.x).float(), flip=flip,
                                        width=(ctx.model.num_features,)))
        return torch.stack(out, 1).to(ctx.device)

    def _batch_feats(self, b) -> torch.Tensor:
        return self.feats[b.idx, b.flip.long()]

    def train_epoch(self, epoch: int) -> dict:
        ctx, cfg = self.ctx, self.cfg
        ctx.model.train()
        meta = ctx.meta_batches(epoch)
        meter = EpochMeter(ctx, epoch, ctx.steps_per_epoch(len(ctx.train)))
        backoffs = self.check.backoffs
        for step, b in enumerate(ctx.batches(epoch, labeled_only=False)):
            fb = self._batch_feats(b)
            surrogate, info, finish = soft_label_meta_step(
                ctx, b, next(meta), lambda fb=fb: torch.log_softmax(self.slp(fb), 1), check=self.check,
                entropy_weight=cfg.entropy_weight, meta_jvp=cfg.meta_jvp, real_update=cfg.real_update,
                lookahead=cfg.lookahead)
            self.opt.zero_grad(set_to_none=True)
            surrogate.backward()
            D.sum_([p.grad for p in self.slp.parameters()])  # each process's share -> the global meta-gradient
            self.opt.step()
            with torch.no_grad():
                new_label_logp = torch.log_softmax(self.slp(fb), 1)
            loss = finish(new_label_logp)
            meter.step(step, finite={"label network output": new_label_logp, "loss": loss}, loss=loss,
                       meta_loss=info["meta_loss"])
        return {**meter.means(), **self.check.epoch_stats(backoffs, "--metalabelnet-alpha")}

    @torch.no_grad()
    def soft_labels(self) -> torch.Tensor:
        return torch.softmax(self.slp(self.feats[:, 0]), 1).float().cpu()

    def state_dict(self) -> dict:
        return {"slp": self.slp.state_dict(), "opt": self.opt.state_dict(), "feats": self.feats.cpu(),
                "check": self.check.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        ctx = self.ctx
        self.slp = nn.Linear(state["feats"].shape[-1], ctx.num_classes).to(ctx.device)
        self.slp.load_state_dict(state["slp"])
        self.feats = state["feats"].to(ctx.device)
        self.opt = torch.optim.Adam(self.slp.parameters(), lr=self.cfg.beta, weight_decay=self.cfg.slp_weight_decay)
        self.opt.load_state_dict(state["opt"])
        self.check = LookaheadCheck(self.cfg.alpha)
        self.check.load_state_dict(state.get("check", {}))
