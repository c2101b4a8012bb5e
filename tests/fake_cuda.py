"""Simulated CUDA on a machine without a GPU, for tests that catch device mixing.

`FakeCuda()` is a context manager under which `"cuda"` tensors are real CPU tensors that carry a logical device,
and every operator checks its inputs' logical devices with the rules of real CUDA, raising the same kind of
`RuntimeError` ("Expected all tensors to be on the same device", "indices should be either on cpu or on the same
device as the indexed tensor") where a GPU would. The code under test runs unchanged and computes real numbers, so
a whole pipeline (training, evaluation, checkpoints, predict, export) can run under it on a CPU-only CI machine.

How: a `TorchFunctionMode` catches every Python-level call that names a device (`Tensor.to`, `.cuda()`, `.cpu()`,
factories with `device=`), runs it on the CPU and records the logical device of the result; a `TorchDispatchMode`
sees every aten operator (autograd's backward included), checks its inputs and records its outputs' device. The
logical device is kept per storage (a weak reference to the StorageImpl), so views, `param.data = ...` and
in-place updates keep it. Tensors created inside C++ from another tensor's options (autograd's zeros, for example)
are "unknown" and take the device of what they meet; tensors made before the mode are on the CPU.

A CUDA tensor reports `device` cuda:0 and `is_cuda` True (so `torch.zeros(n, device=t.device)` lands on the same
logical device, as it would on a GPU). Rules modelled (those of CUDA kernels): all tensor arguments on one device, except 0-dim CPU tensors (scalars),
CPU index tensors for indexing a CUDA tensor (`x_cuda[idx_cpu]`), and cross-device `copy_`. `Tensor.numpy()` of a
CUDA tensor raises `TypeError`, as on a GPU. Not modelled: streams, memory, autocast on CUDA (`torch.cuda.*` still
reports no GPU; tests patch what they need).
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

CPU, CUDA, UNKNOWN = "cpu", "cuda", "?"
_INDEX_OPS = {"aten::index.Tensor", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_",
              "aten::_unsafe_index.Tensor", "aten::_unsafe_index_put"}
_COPY_OPS = {"aten::copy_", "aten::_copy_from", "aten::_copy_from_and_resize"}


def _device_type(value) -> str | None:
    """'cuda' / 'cpu' for a device-like value (str, torch.device, int index = cuda), else None."""
    if isinstance(value, torch.device):
        return CUDA if value.type == "cuda" else CPU
    if isinstance(value, str) and (value == "cpu" or value.startswith("cuda")):
        return CUDA if value.startswith("cuda") else CPU
    return None


class _Tags:
    """Logical device per storage; keys are StorageImpl addresses kept valid by the weak references we hold."""

    def __init__(self):
        self.tags: dict[int, tuple[StorageWeakRef, str]] = {}

    @staticmethod
    def _ref(t: torch.Tensor) -> StorageWeakRef | None:
        try:
            return StorageWeakRef(t.untyped_storage())
        except (RuntimeError, NotImplementedError):  # tensors without storage
            return None

    def get(self, t: torch.Tensor) -> str:
        ref = self._ref(t)
        if ref is None:
            return UNKNOWN
        entry = self.tags.get(ref.cdata)
        return CPU if entry is None else entry[1]

    def set(self, t: torch.Tensor, device: str) -> None:
        ref = self._ref(t)
        if ref is None:
            return
        old = self.tags.get(ref.cdata)
        if device == UNKNOWN and old is not None and old[1] != UNKNOWN:
            return  # e.g. `empty().set_(storage)` attaches a storage whose device is known
        self.tags[ref.cdata] = (ref, device)

    def prune(self) -> None:
        for key in [k for k, (ref, _) in self.tags.items() if ref.expired()]:
            del self.tags[key]


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _mixing_error(func, a: str, b: str) -> RuntimeError:
    return RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {a}:0 and "
                        f"{b}! (when checking arguments for {func}; simulated by tests/fake_cuda.py)")


class _Dispatch(TorchDispatchMode):
    def __init__(self, tags: _Tags):
        super().__init__()
        self.tags = tags
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()
        ins = _tensors((args, kwargs))
        out_device = self._check(func, name, args, ins)
        inplace = func._schema.name.endswith("_") or name in _COPY_OPS
        self_before = self.tags.get(ins[0]) if ins else UNKNOWN  # set_ may swap the storage: read it first
        out = func(*args, **kwargs)
        for t in _tensors(out):
            keep = inplace and t is ins[0] and self_before != UNKNOWN
            self.tags.set(t, self_before if keep else out_device)  # an in-place result keeps its device
        self.calls += 1
        if self.calls % 5000 == 0:
            self.tags.prune()
        return out

    def _check(self, func, name: str, args, ins: list[torch.Tensor]) -> str:
        """Raise where CUDA would; return the device of the outputs."""
        if not ins:
            return UNKNOWN  # a factory called from C++ with another tensor's options: device unknown here
        devs = [self.tags.get(t) for t in ins]
        if name in _COPY_OPS:  # cross-device copies are allowed; a fresh destination takes the source's device
            return devs[0] if devs[0] != UNKNOWN or len(devs) < 2 else devs[1]
        if name in _INDEX_OPS:
            self_dev = devs[0]
            indices = [t for t in _tensors(args[1])] if len(args) > 1 else []
            for t in indices:
                d = self.tags.get(t)
                if self_dev == CPU and d == CUDA:
                    raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor "
                                       "(cpu) (simulated by tests/fake_cuda.py)")
            rest = [t for t in ins[1:] if not any(t is i for i in indices)]  # values of index_put
            self._same(func, [self_dev] + [self.tags.get(t) for t in rest if t.dim() > 0])
            return self_dev
        known = [d for t, d in zip(ins, devs, strict=True) if d != UNKNOWN and not (d == CPU and t.dim() == 0)]
        self._same(func, known)
        if known:
            return known[0]
        return CUDA if CUDA in devs else (CPU if CPU in devs else UNKNOWN)

    @staticmethod
    def _same(func, devs: list[str]) -> None:
        known = {d for d in devs if d != UNKNOWN}
        if len(known) > 1:
            raise _mixing_error(func, CUDA, CPU)


class _Function(TorchFunctionMode):
    def __init__(self, tags: _Tags):
        super().__init__()
        self.tags = tags

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        owner = getattr(func, "__self__", None)
        if owner is torch.Tensor.device or owner is torch.Tensor.is_cuda:  # what the tensor reports about itself
            on_cuda = self.tags.get(args[0]) == CUDA
            if owner is torch.Tensor.is_cuda:
                return on_cuda
            return torch.device("cuda", 0) if on_cuda else func(*args, **kwargs)
        if func is torch.Tensor.numpy and self.tags.get(args[0]) == CUDA:
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first. (simulated by tests/fake_cuda.py)")
        if func is torch.Tensor.pin_memory or func is torch.Tensor.is_pinned:
            return args[0] if func is torch.Tensor.pin_memory else False
        target = None
        if func in (torch.Tensor.cuda, torch.Tensor.cpu):
            target = CUDA if func is torch.Tensor.cuda else CPU
            args, kwargs = args[:1], {k: v for k, v in kwargs.items() if k in ("memory_format",)}
            func = torch.Tensor.to
        if "device" in kwargs and _device_type(kwargs["device"]):
            target = _device_type(kwargs["device"])
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to:
            args = list(args)
            for i in range(1, len(args)):
                if _device_type(args[i]):
                    target = _device_type(args[i])
                    args[i] = "cpu"
                elif isinstance(args[i], torch.Tensor):  # to(other): other's device and dtype
                    target = self.tags.get(args[i])
                    args[i] = args[i].dtype
            args = tuple(args)
        ins = _tensors((args, kwargs))
        if func is torch.Tensor.to and target is not None and ins and self.tags.get(ins[0]) == target:
            target = None  # already there: no copy, as on a GPU
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and target is not None:
            shared = {StorageWeakRef(t.untyped_storage()).cdata for t in ins if t.layout == torch.strided}
            if StorageWeakRef(out.untyped_storage()).cdata in shared:
                out = out.clone()  # a device change always copies
        for t in _tensors(out):
            if target is not None:
                self.tags.set(t, target)
            elif self.tags.get(t) == UNKNOWN:
                self.tags.set(t, CPU)  # created from Python without a device: the CPU
        return out


class FakeCuda:
    """`with FakeCuda() as fc:` run code that uses device "cuda" on the CPU, with CUDA's device checks.

    `fc.device(t)` -> "cuda" | "cpu" | "?" (the logical device of a tensor)."""

    def __init__(self):
        self.tags = _Tags()
        self._modes = (_Function(self.tags), _Dispatch(self.tags))

    def device(self, t: torch.Tensor) -> str:
        return self.tags.get(t)

    def __enter__(self) -> FakeCuda:
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)
        self.tags.tags.clear()


__all__ = ["FakeCuda", "tree_map"]
