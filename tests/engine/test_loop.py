"""The epoch loop: selection by meta accuracy (last warm-up epoch included), label drift logging."""

import torch
from torch import nn

from engine.methods import get_method
from engine.methods.base import Method
from engine.methods.mslg import MSLG, MSLGConfig
from engine.train.context import TensorData, TrainContext
from engine.train.loop import fit, label_drift, restore_best


def _ctx(epochs=4, warmup=2):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    images = torch.randint(0, 40, (60, 3, 4, 4), generator=g, dtype=torch.uint8)
    images[torch.arange(60), y, :, :] = 250  # the class is the bright channel: learnable in a few steps
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    return TrainContext(model, 3, TensorData(images[:48], y[:48]), TensorData(images[48:], y[48:]),
                        (0.5,) * 3, (0.25,) * 3, batch_size=8, epochs=epochs, warmup_epochs=warmup, lr=0.1,
                        milestones=())


class Saboteur(Method):
    """A main phase that destroys the model: selection must fall back to the warm-up model."""

    name = "saboteur-test"

    def train_epoch(self, epoch):
        with torch.no_grad():
            for p in self.ctx.model.parameters():
                p.copy_(torch.randn_like(p) * 5)
        return {"loss": 0.0}


def test_a_harmful_main_phase_falls_back_to_the_last_warmup_epoch():
    ctx = _ctx()
    state = fit(ctx, Saboteur(None, ctx))
    assert [h["stage"] for h in state.history] == ["warmup", "warmup", "main", "main"]
    assert state.best_epoch == 1  # the last warm-up epoch (0-based)
    assert state.best_meta_acc == state.history[1]["meta_acc"] == 1.0
    model = restore_best(ctx, Saboteur(None, ctx), state)
    assert ctx.accuracy(ctx.meta, model) == 1.0
    assert state.best_soft_labels.shape == (48, 3)


def test_first_warmup_epoch_is_never_selected_and_label_drift_is_logged():
    ctx = _ctx(epochs=4, warmup=2)
    state = fit(ctx, MSLG(MSLGConfig(), ctx))
    assert state.best_epoch >= 1
    main = [h for h in state.history if h["stage"] == "main"]
    assert all(0.0 <= h["labels_changed"] <= 1.0 and 0.0 <= h["label_shift"] <= 1.0 for h in main)
    assert all("labels_changed" not in h for h in state.history if h["stage"] == "warmup")


def test_label_drift_values():
    soft = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]])
    out = label_drift(soft, torch.tensor([0, 0, -1]))
    assert out["labels_changed"] == 0.5
    assert abs(out["label_shift"] - (0.1 + 0.7) / 2) < 1e-6


def test_the_training_set_is_predicted_once_by_the_selected_model(monkeypatch):
    """Per-epoch evaluation covers the meta (and test) set only; the training set is predicted once, at the end,
    by the selected model (its soft labels for `ce`-like methods, `best_train_probs`, `train_acc_majority`)."""
    ctx = _ctx(epochs=4, warmup=2)
    rows = []
    real = ctx.predict

    def counting(data, model=None):
        rows.append(len(data))
        return real(data, model)

    monkeypatch.setattr(ctx, "predict", counting)
    state = fit(ctx, get_method("ce")(None, ctx))
    assert sum(n for n in rows if n == len(ctx.train)) == len(ctx.train)  # one pass over the 48 training images
    assert rows.count(len(ctx.meta)) == 4  # meta accuracy every epoch
    best = restore_best(ctx, Saboteur(None, ctx), state)
    torch.testing.assert_close(state.best_soft_labels, real(ctx.train, best))
    assert state.best_train_probs is state.best_soft_labels
    selected = next(h for h in state.history if h["epoch"] == state.best_epoch)
    assert selected["train_acc_majority"] == float((real(ctx.train, best).argmax(1) == ctx.train.targets).float().mean())
    assert all("train_acc_majority" not in h for h in state.history if h is not selected)
    assert all(0 <= h["eval_seconds"] <= h["seconds"] for h in state.history)
