"""ONNX export of a bundle's inference network, checked against PyTorch on a real slice.

TorchScript export is MONAI's ``python -m monai.bundle ckpt_export``; this adds ONNX, for ONNX Runtime, TensorRT
(through its ONNX parser) and other runtimes without PyTorch. Only the network is exported: the preprocessing, the
slice-by-slice loop and the inversion back to the input's geometry stay in ``inference.json``. The batch axis is
dynamic (``SliceInferer`` sends ``sw_batch_size`` slices, fewer in the last batch); height and width are the
bundle's ``spatial_size``.

Needs ``onnx`` and ``onnxscript`` (the exporter) and, for the check, ``onnxruntime``: ``pip install onnx onnxscript
onnxruntime`` (not required by the bundles themselves).

Example::

    python -m ideal_components export_onnx bundles/ideal_acdc --ckpt_file runs/acdc/models/model.pt \\
        --filepath runs/acdc/models/model.onnx --image prepared/acdc/imagesTr/patient007_ED.nii.gz
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["export_onnx"]


def _bundle_parts(bundle: Path, overrides: dict[str, Any]) -> tuple[torch.nn.Module, list[int], Any]:
    """``network_def``, ``spatial_size`` and ``preprocessing`` of the bundle's ``inference.json``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser.update(overrides)
    spatial_size = [int(s) for s in parser.get_parsed_content("spatial_size")]
    return parser.get_parsed_content("network_def"), spatial_size, parser.get_parsed_content("preprocessing")


def _real_slices(image: str | os.PathLike, preprocessing: Any, count: int) -> torch.Tensor:
    """``count`` slices spread over a volume, through the bundle's own inference preprocessing."""
    vol = torch.as_tensor(preprocessing({"image": str(image)})["image"]).float()  # (1, H, W, D)
    depth = vol.shape[-1]
    picks = np.linspace(0, depth - 1, num=min(count, depth)).round().astype(int)
    return torch.stack([vol[..., k] for k in picks])  # (count, 1, H, W)


def export_onnx(
    bundle: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    filepath: str | os.PathLike,
    image: str | os.PathLike | None = None,
    atol: float = 1e-4,
    opset: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Export ``network_def`` of a bundle's ``inference.json`` with weights ``ckpt_file`` to ONNX, and check it.

    Args:
        bundle: the bundle folder (``configs/inference.json`` and ``configs/metadata.json`` are read).
        ckpt_file: ``models/model.pt`` (a state dict of ``network_def``, loaded strictly).
        filepath: the ``.onnx`` file to write (atomically).
        image: a volume whose slices, preprocessed as ``inference.json`` does, are the check's input (a real slice
            exercises the network as inference does); without it, uniform noise in [0, 1].
        atol: the largest absolute difference allowed between the ONNX Runtime and the PyTorch logits.
        opset: the ONNX opset (``None``: the exporter's default).
        overrides: config ids to override, e.g. ``backbone="resnet10"``.

    Returns:
        ``{"filepath", "max_abs_diff", "input_shape", "checked_with"}``.

    Raises:
        ImportError: ``onnx`` / ``onnxscript`` / ``onnxruntime`` are not installed.
        AssertionError: the ONNX output differs from PyTorch's by more than ``atol``.
    """
    import onnxruntime as ort

    from ideal_components.utils import atomic_path

    bundle = Path(bundle)
    net, spatial_size, preprocessing = _bundle_parts(bundle, overrides)
    state = torch.load(str(ckpt_file), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    net.eval()
    x = (
        _real_slices(image, preprocessing, count=4)
        if image is not None
        else torch.rand(4, 1, *spatial_size, generator=torch.Generator().manual_seed(0))
    )
    batch = torch.export.Dim("batch", min=1, max=1024)
    with atomic_path(filepath) as tmp:
        torch.onnx.export(
            net, (x,), tmp, dynamo=True, input_names=["image"], output_names=["logits"],
            dynamic_shapes=({0: batch},), opset_version=opset,
        )  # fmt: skip
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            reference = net(x).numpy()
        diffs = []
        for xb in (x, x[:1]):  # the full batch and a batch of one: the batch axis is dynamic
            got = session.run(None, {session.get_inputs()[0].name: xb.numpy()})[0]
            diffs.append(float(np.abs(got - reference[: len(xb)]).max()))
        max_diff = max(diffs)
        if not max_diff <= atol:
            raise AssertionError(f"{filepath}: ONNX Runtime and PyTorch differ by {max_diff:.3g} (> {atol}).")
    result = {
        "filepath": str(filepath),
        "max_abs_diff": max_diff,
        "input_shape": ["batch", 1, *spatial_size],
        "checked_with": str(image) if image is not None else "uniform noise",
    }
    print(json.dumps(result, indent=2))
    return result
