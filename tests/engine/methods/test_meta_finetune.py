"""`meta-finetune`: the fine-tune on the meta set runs at lr_factor × the full schedule's learning rate."""

import pytest

from engine.methods import meta_finetune
from engine.train.loop import fit


@pytest.mark.parametrize("base_lr, expected", [(None, 0.1 * 0.005), (0.05, 0.1 * 0.05)])
def test_fine_tune_uses_the_full_schedules_learning_rate(make_ctx, build, monkeypatch, base_lr, expected):
    """A warm retrain trains at a fraction of the first run's lr (ctx.base_lr holds the first run's); its fine-tune
    on the meta set must be as strong as the first run's, not shrunk with the warm lr."""
    seen = []
    real = meta_finetune.finetune_on_meta

    def spy(ctx, model, *, passes, lr, seed_offset=0):
        seen.append(lr)
        real(ctx, model, passes=passes, lr=lr, seed_offset=seed_offset)

    monkeypatch.setattr(meta_finetune, "finetune_on_meta", spy)
    ctx = make_ctx(epochs=2, warmup=0, lr=0.005, base_lr=base_lr)
    method = build("meta-finetune", ctx)
    fit(ctx, method)
    assert seen == [pytest.approx(expected)]  # once, after the last epoch
    assert method.selectable()
