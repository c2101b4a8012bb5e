"""Backbones: local weights only, a clear message when hub weights are unavailable, head swap on load."""

import socket

import pytest
import torch

from engine.errors import InputError
from engine.models import create_model, features, min_input_size


def test_pretrained_without_network_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # empty local cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_route(*a, **k):
        raise OSError("no route")

    monkeypatch.setattr(socket, "create_connection", no_route)
    with pytest.raises(InputError, match="--weights PATH"):
        create_model("test_resnet", 3, pretrained=True)


def test_local_weights_load_backbone_and_keep_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    src = create_model("test_resnet", 2)
    path = tmp_path / "w.pt"
    torch.save({"backbone": "test_resnet", "state_dict": src.state_dict()}, path)
    dst = create_model("test_resnet", 5, weights=str(path))
    s, d = src.state_dict(), dst.state_dict()
    head = {n for n, p in dst.named_parameters() if any(p is q for q in dst.get_classifier().parameters())}
    for k in s:
        if k not in head:
            torch.testing.assert_close(d[k], s[k])
    assert dst.get_classifier().out_features == 5


def test_weights_of_another_backbone_are_refused(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"backbone": "resnet18", "state_dict": {}}, path)
    with pytest.raises(InputError, match="pass --backbone resnet18"):
        create_model("test_resnet", 3, weights=str(path))
    torch.save({"conv.weight": torch.zeros(3)}, path)
    with pytest.raises(InputError, match="do not fit this backbone"):
        create_model("test_resnet", 3, weights=str(path))


def test_features_and_minimum_size():
    m = create_model("test_resnet", 3).eval()
    x = torch.randn(2, 3, 32, 32)
    f = features(m, x)
    assert f.shape == (2, m.num_features)
    torch.testing.assert_close(m.get_classifier()(f), m(x))
    assert min_input_size(m) >= 8
