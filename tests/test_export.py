"""ONNX export of the bundles' inference network: the ONNX Runtime output equals PyTorch's on a real slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import FlexibleUNet

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from ideal_components.export import export_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bundle", ["ideal_acdc", "ideal_mmwhs"])
def test_export_onnx_matches_pytorch_on_a_real_slice(bundle, tmp_path):
    from ideal_components.synthetic import synth_acdc

    synth_acdc(str(tmp_path / "raw"), patients=1, seed=0, progress=False)
    image = tmp_path / "raw" / "training" / "patient001" / "patient001_frame01.nii.gz"
    classes = json.loads((REPO / "bundles" / bundle / "configs" / "inference.json").read_text())["num_classes"]
    torch.manual_seed(0)
    net = FlexibleUNet(1, classes, backbone="resnet10", spatial_dims=2, upsample="deconv").eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    out = tmp_path / "model.onnx"
    result = export_onnx(
        REPO / "bundles" / bundle, tmp_path / "model.pt", out, image=image, backbone="resnet10", spatial_size=[64, 64]
    )
    assert out.is_file() and result["max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 1, 64, 64)  # another batch size than the export's
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert abs(got - net(x).numpy()).max() <= 1e-4
    assert session.get_inputs()[0].name == "image" and session.get_outputs()[0].name == "logits"


def test_export_refuses_weights_of_another_network(tmp_path):
    torch.save(FlexibleUNet(1, 3, backbone="resnet10", spatial_dims=2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(RuntimeError, match="state_dict"):
        export_onnx(REPO / "bundles" / "ideal_acdc", tmp_path / "model.pt", tmp_path / "m.onnx", backbone="resnet10")
    assert not (tmp_path / "m.onnx").exists()
