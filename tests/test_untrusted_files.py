"""Untrusted files: a checkpoint is data, never code. Every loader in the package and the bundles' CheckpointLoader use
``torch.load(weights_only=True)``, so a pickle that would run code on load is refused and the code does not run."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
from monai.handlers import CheckpointLoader

from ideal_components.encoders import load_pretrained_encoder
from ideal_components.handlers import find_latest_checkpoint
from ideal_components.networks import DenseContrastiveNet

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this creates a file: the proof that a loader executed code from a checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"network": {"w": torch.ones(1)}, "payload": _Payload(str(marker))}, path)
    return path


def test_find_latest_checkpoint_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    _malicious_checkpoint(tmp_path / "train_checkpoint_epoch=1.pt", marker)
    assert find_latest_checkpoint(str(tmp_path), "train") == (None, None)
    assert not marker.exists()


def test_pretrained_encoder_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious_checkpoint(tmp_path / "pretrained_encoder.pt", marker)
    net = DenseContrastiveNet(in_channels=1, backbone="resnet10")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_pretrained_encoder(net, str(path), required=True)
    assert not marker.exists()


def test_monai_checkpoint_loader_refuses_code(tmp_path):
    # the loader that evaluate.json and inference.json use for models/model.pt
    marker = tmp_path / "pwned"
    path = _malicious_checkpoint(tmp_path / "model.pt", marker)
    loader = CheckpointLoader(str(path), {"model": torch.nn.Linear(1, 1)})
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        loader(None)
    assert not marker.exists()


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                yield node


def test_every_torch_load_in_the_package_is_weights_only():
    calls = 0
    for path in (REPO / "ideal_components").rglob("*.py"):
        for call in _torch_load_calls(ast.parse(path.read_text())):
            calls += 1
            flags = {k.arg: k.value for k in call.keywords}
            assert "weights_only" in flags, f"{path}:{call.lineno}: torch.load without weights_only=True"
            assert isinstance(flags["weights_only"], ast.Constant) and flags["weights_only"].value is True
    assert calls >= 2  # the encoder loader and the checkpoint finder


def test_bundles_load_checkpoints_only_through_weights_only_loaders():
    allowed = {"CheckpointLoader", "ideal_components.handlers.CheckpointResumer"}
    for config in (REPO / "bundles").glob("*/configs/*.json"):
        text = config.read_text()
        assert "torch.load" not in text and "pickle" not in text, config

        def targets(obj):
            if isinstance(obj, dict):
                if "_target_" in obj:
                    yield obj["_target_"]
                for v in obj.values():
                    yield from targets(v)
            elif isinstance(obj, list):
                for v in obj:
                    yield from targets(v)

        loaders = {t for t in targets(json.loads(text)) if "Loader" in t or "Resumer" in t}
        assert loaders <= allowed | {"DataLoader"}, (config, loaders)
