"""`ce`: plain cross-entropy on the majority-vote labels — the baseline every table compares against."""

from __future__ import annotations

from engine.methods.base import Method, register
from engine.train.steps import ce_epoch


@register
class CrossEntropy(Method):
    name = "ce"
    summary = "cross-entropy on majority-vote labels (baseline)"
    needs_meta = False

    def train_epoch(self, epoch: int) -> dict:
        return ce_epoch(self.ctx, epoch, stage="main")
