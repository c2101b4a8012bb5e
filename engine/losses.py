"""Loss functions as pure functions of logits. Shapes: logits (B, K), targets (B, K) probabilities or (B,) ints."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision (AMP) tensors to float32; float32/float64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def kl_prediction_to_label(logits: torch.Tensor, label_logp: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || label) = Σ_k p_k (log p_k − log label_k), summed over classes, averaged over the batch.

    (B,K) logits, (B,K) label log-probabilities -> scalar. The classification loss of MSLG / MetaLabelNet,
    L_KL(f_θ(x), ŷ) in their eqs. 1/4 and 5/11, in PENCIL's direction (the model's prediction first), as in the
    authors' code. The direction matters for the meta-gradient: ∂²L/∂logits∂(label logits) = −(diag(p) − ppᵀ)/B is
    set by the *model's* softmax, so label variables initialised at K·onehot (a saturated softmax) still receive a
    gradient; in the other direction, KL(label || p), it is −(diag(t) − ttᵀ)/B ≈ 4e-4 at K=10 and labels never move.
    The label enters as log-probabilities (log_softmax of label logits) so that no clamp cuts its gradient.
    """
    logp = F.log_softmax(upcast(logits), dim=1)
    return (logp.exp() * (logp - upcast(label_logp))).sum(1).mean()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_k t_k log p_k averaged over the batch. (B,K),(B,K) -> scalar."""
    return -(upcast(targets) * F.log_softmax(upcast(logits), dim=1)).sum(1).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean prediction entropy -sum p log p (MSLG eq. 3): pushes predictions to peak at one class. (B,K) -> scalar."""
    logp = F.log_softmax(upcast(logits), dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hard-label cross-entropy (B,K),(B,) -> scalar, computed in float32."""
    return F.cross_entropy(upcast(logits), y)


# --- Active-Passive Loss (Ma et al. 2020, "Normalized loss functions for deep learning with noisy labels") ---------
RCE_LOG_ZERO = 1e-4  # the reference code clamps the one-hot label to [1e-4, 1], so log 0 := log 1e-4 (A ≈ 9.21)


def normalized_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NCE = (-log p_y) / (-Σ_k log p_k), averaged over the batch. (B,K),(B,) -> scalar in [0, 1].

    The active part of APL: robust to symmetric noise, but alone it underfits. It equals 1/K for a uniform
    prediction and tends to 0 as p_y -> 1.
    """
    logp = F.log_softmax(upcast(logits), dim=1)
    return (logp.gather(1, y[:, None]).squeeze(1) / logp.sum(1)).mean()


def reverse_cross_entropy(logits: torch.Tensor, y: torch.Tensor, *, log_zero: float = RCE_LOG_ZERO) -> torch.Tensor:
    """RCE = -Σ_k p_k log q_k with q = onehot(y) clamped to [log_zero, 1] and p clamped to [1e-7, 1] (reference code).

    (B,K),(B,) -> scalar. Since log q_y = 0, RCE = A·Σ_{k≠y} p_k with A = -log(log_zero) ≈ 9.21, i.e. in [0, A]:
    the passive part of APL (it also pushes the other classes' probabilities down).
    """
    p = F.softmax(upcast(logits), dim=1).clamp(min=1e-7, max=1.0)
    q = F.one_hot(y, p.shape[1]).to(p.dtype).clamp(min=log_zero, max=1.0)
    return -(p * torch.log(q)).sum(1).mean()


def nce_rce(logits: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """APL with NCE as active and RCE as passive loss: α·NCE + β·RCE. (B,K),(B,) -> scalar in [0, α + β·9.21]."""
    return alpha * normalized_cross_entropy(logits, y) + beta * reverse_cross_entropy(logits, y)
