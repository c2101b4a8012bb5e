"""Every method's step, evaluation, soft labels and resume on a (simulated) GPU: no tensor may stay behind on the
CPU. `tests/fake_cuda.py` gives CUDA's device checks on a machine without a GPU, so this runs in CI."""

import io

import pytest
import torch

from engine.methods import list_methods
from engine.train.context import TensorData
from engine.train.loop import FitState, fit, restore_best
from tests.fake_cuda import FakeCuda


def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=False)


# every method at its defaults, and the meta methods with the look-ahead they do not use by default
CASES = [(m, {}) for m in list_methods()] + [
    (m, {"lookahead": "first-order"}) for m in ("mslg", "metalabelnet", "mlc") if m in list_methods()]


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{m}{'-' if p else ''}{'-'.join(p.values())}" for m, p in CASES])
def test_method_trains_evaluates_and_resumes_on_cuda(name, params, make_ctx, build):
    with FakeCuda() as fc:
        ctx = make_ctx(n=48, n_meta=12, epochs=4, warmup=1, batch_size=8, unlabeled=4, device="cuda", max_steps=3)
        assert fc.device(ctx.train.images) == fc.device(next(ctx.model.parameters())) == "cuda"
        method = build(name, ctx, **params)
        snap = {}

        def save(st: FitState) -> None:
            if st.epoch == 2:
                snap.update(_roundtrip({"model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
                                        "method": method.state_dict(), "fit": st.to_dict()}))

        state = fit(ctx, method, on_epoch_end=save)
        assert [h["stage"] for h in state.history] == ["warmup", "main", "main", "main"]
        assert state.best_soft_labels.shape == (48, 3) and fc.device(state.best_soft_labels) == "cpu"
        best = restore_best(ctx, method, state)
        assert fc.device(next(best.parameters())) == "cuda"
        assert 0.0 <= ctx.accuracy(ctx.meta, best) <= 1.0

        # resume from the checkpoint (CPU tensors, as map_location="cpu" loads them) into fresh objects
        ctx2 = make_ctx(n=48, n_meta=12, epochs=4, warmup=1, batch_size=8, unlabeled=4, device="cuda", max_steps=3)
        method2 = build(name, ctx2, **params)
        ctx2.model.load_state_dict(snap["model"])
        ctx2.optimizer.load_state_dict(snap["optimizer"])
        method2.load_state_dict(snap["method"])
        state2 = fit(ctx2, method2, state=FitState.from_dict(snap["fit"]))
        assert len(state2.history) == 4
        assert method2.soft_labels().shape == (48, 3)


def test_context_moves_data_from_any_device_and_refuses_nothing_silently(make_ctx):
    """`TrainContext` takes data on the CPU or on its device: batches and predictions are the same either way."""
    with FakeCuda() as fc:
        ctx = make_ctx(n=24, n_meta=6, device="cuda")
        cpu_data = TensorData(ctx.train.images.cpu(), ctx.train.targets.cpu())
        assert fc.device(cpu_data.images) == "cpu" and fc.device(ctx.train.images) == "cuda"
        for data in (cpu_data, ctx.train):
            b = next(ctx.batches(0, data=data))
            assert fc.device(b.x) == fc.device(b.y) == fc.device(b.idx) == fc.device(b.flip) == "cuda"
        torch.testing.assert_close(ctx.predict(cpu_data), ctx.predict(ctx.train))
        assert ctx.accuracy(cpu_data) == ctx.accuracy(ctx.train)
        with pytest.raises(RuntimeError, match="same device"):  # the checker itself: mixing is caught
            _ = ctx.train.images[:2].float() + cpu_data.images[:2].float()
