"""`apl`: Active-Passive Loss, NCE + RCE (Ma et al. 2020; ../shared/papers/o2u-net-and-active-passive-loss.md §2.3).

The main phase trains on the majority-vote labels with L = α·NCE + β·RCE (`engine.losses.nce_rce`): the normalised
cross-entropy (active: raises p_y; robust but underfits alone) plus the reverse cross-entropy (passive: also lowers
the other classes; robust). The gradient norm is clipped at 5, as in the reference code (`--grad_bound 5`).
Soft label: the model's prediction (the default `Method.soft_labels`).

Defaults: α = β = 1, the paper's setting for CIFAR-10-like problems (~10 classes; the O2U/APL comparison also uses
them on 4 classes). Both losses are batch means bounded independently of the batch size, so nothing is rescaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from engine.errors import InputError, Problem
from engine.losses import nce_rce
from engine.methods.base import Method, param, register
from engine.train.steps import ce_epoch


@dataclass(frozen=True)
class APLConfig:
    alpha: float = param(1.0, "weight α of the active loss NCE (Ma et al. 2020: 1 for ~10 classes, 10 for CIFAR-100)")
    beta: float = param(1.0, "weight β of the passive loss RCE (Ma et al. 2020: 1 for ~10 classes, 0.1 for CIFAR-100)")
    grad_clip: float = param(5.0, "clip the gradient norm at this value, 0 = off (APL reference code: 5)")


def check_apl(cfg, method: str) -> None:
    """Validation shared by `apl` and `o2u-apl`: names every bad parameter at once."""
    problems = [Problem(f"method '{method}' parameters", f"'{k}' must be >= 0, got {getattr(cfg, k)}")
                for k in ("alpha", "beta", "grad_clip") if getattr(cfg, k) < 0]
    if cfg.alpha == 0 and cfg.beta == 0:
        problems.append(Problem(f"method '{method}' parameters", "alpha and beta are both 0: nothing to train on",
                                "use alpha=1, beta=1 (the paper's default)"))
    if problems:
        raise InputError(problems)


def apl_loss(cfg):
    """(logits (B,K), y (B,)) -> scalar: the configured α·NCE + β·RCE."""
    return partial(nce_rce, alpha=cfg.alpha, beta=cfg.beta)


@register
class ActivePassiveLoss(Method):
    name = "apl"
    summary = "Active-Passive Loss: robust NCE + RCE on majority-vote labels (no meta set needed)"
    config_cls = APLConfig
    needs_meta = False

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        check_apl(cfg, self.name)

    def train_epoch(self, epoch: int) -> dict:
        return ce_epoch(self.ctx, epoch, stage="main", loss_fn=apl_loss(self.cfg), clip=self.cfg.grad_clip)
