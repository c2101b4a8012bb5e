"""`o2u-apl`: O2U-Net's detection, then retraining with NCE + RCE (the combination in
../shared/papers/o2u-net-and-active-passive-loss.md §3: "the two first stages are the same as O2U-Net alone, but
the last stage uses NCE-RCE").

Everything is `o2u` (pre-training = warm-up, cyclical stage with cross-entropy, ranking, forgetting, retraining
from the pre-trained checkpoint) except the retraining loss, α·NCE + β·RCE with the gradient norm clipped at 5,
as in `apl`. Defaults: O2U's (see `engine.methods.o2u`) and APL's α = β = 1 (paper: for ~10 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.methods.apl import APLConfig, apl_loss, check_apl
from engine.methods.base import register
from engine.methods.o2u import O2U, O2UConfig


@dataclass(frozen=True)
class O2UAPLConfig(APLConfig, O2UConfig):  # fields: O2U's first, then APL's
    """O2U's parameters plus APL's alpha, beta, grad_clip (used by the retraining stage)."""


@register
class O2UAPL(O2U):
    name = "o2u-apl"
    summary = "O2U-Net's noisy-image detection, then retraining on the kept images with NCE + RCE"
    config_cls = O2UAPLConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        check_apl(cfg, self.name)
        self._apl = apl_loss(cfg)

    @property
    def retrain_clip(self) -> float:
        return self.cfg.grad_clip

    def retrain_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._apl(logits, y)
