"""Backbones: any timm model by name, local weight files, and the pooled-feature hook the methods need."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engine.errors import InputError, Problem


def create_model(backbone: str, num_classes: int, *, weights: str = "", pretrained: bool = False) -> nn.Module:
    """A timm classifier with `num_classes` outputs; `weights` loads a local file (never downloads)."""
    import timm

    if backbone not in timm.list_models() and not timm.is_model(backbone):
        raise InputError(Problem("--backbone", f"unknown backbone '{backbone}'",
                                 "use a timm model name, e.g. resnet18, resnet50, efficientnet_b0"))
    if pretrained:
        _offline_unless_hub_reachable()
        try:
            model = timm.create_model(backbone, pretrained=True, num_classes=num_classes)
        except Exception as exc:  # offline: hub unreachable, no local HF cache
            raise InputError(Problem(
                "--pretrained", f"could not load timm's pretrained weights for '{backbone}' ({type(exc).__name__})",
                "this machine may be offline: pass a local weight file with --weights PATH (e.g. a DR-pretraining "
                "checkpoint or a state dict) or drop --pretrained to start from random weights")) from None
    else:
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    if weights:
        load_weights(model, weights)
    return model


def _offline_unless_hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> None:
    """Without a route to the model hub, switch huggingface_hub to its local cache so timm fails fast, not after
    minutes of retries (a clear message beats a hang)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return
    except OSError:
        pass
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a backbone state dict from a local file, skipping a classifier head of another shape."""
    apply_weights(model, read_weights(path), source=str(path))


def read_weights(path: str | Path):
    """The content of a weight file (a state dict, or a checkpoint holding one under "state_dict"), safely loaded."""
    path = Path(path)
    if not path.is_file():
        raise InputError(Problem(str(path), "weight file not found",
                                 "give an existing .pt/.pth/.safetensors file to --weights"))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            from engine.safe_load import torch_load

            state = torch_load(path, what="weight file")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(Problem(str(path), f"cannot read weights ({type(exc).__name__}: {exc})")) from None
    return state


def apply_weights(model: nn.Module, state, *, source: str) -> None:
    """Load `read_weights`'s result into `model`, skipping a classifier head of another shape; `source` names the
    weights in messages."""
    if isinstance(state, dict) and "state_dict" in state:
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        if state.get("backbone") and arch and state["backbone"] != arch:
            raise InputError(Problem(source, f"checkpoint is for backbone '{state['backbone']}', not '{arch}'",
                                     f"pass --backbone {state['backbone']}"))
        state = state["state_dict"]
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in keep]
    head_keys = _head_names(model)
    if not keep or any(k not in head_keys for k in missing):
        bad = [k for k in missing if k not in head_keys][:5]
        raise InputError(Problem(source, f"weights do not fit this backbone (e.g. missing {bad})",
                                 "use weights saved from the same --backbone"))
    model.load_state_dict(keep, strict=False)


def _head_names(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (they may differ in shape between tasks)."""
    ids = {id(p) for p in model.get_classifier().parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logit features (B, F) — the input of the classifier head."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet-style mean/std from the backbone's own pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def min_input_size(model: nn.Module) -> int:
    """Smallest square input the network accepts: 2**(number of stride-2 stages), at least 8."""
    reduction = max((f.get("reduction", 1) for f in getattr(model, "feature_info", []) or []), default=8)
    return max(8, int(reduction))
