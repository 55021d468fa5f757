"""Encoders: FlexibleUNet's encoder built alone, and encoder files written by pre-training and read by fine-tuning.

- :func:`build_flexunet_encoder` / :func:`flexunet_encoder_channels`: the encoder exactly as
  :class:`~monai.networks.nets.FlexibleUNet` constructs it (so state dicts load strictly into either);
- :func:`save_encoder`: ``pretrained_encoder.pt`` from a pre-training network (rank 0 only, atomic);
- :func:`load_pretrained_encoder`: initialise any network's ``encoder`` from such a file (weights only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from ideal_components.distributed import is_main_process, unwrap_network
from ideal_components.finite import check_finite
from ideal_components.utils import atomic_path

__all__ = [
    "build_flexunet_encoder",
    "flexunet_encoder_channels",
    "save_submodule",
    "save_encoder",
    "load_pretrained_encoder",
]

logger = logging.getLogger(__name__)


def _backbone_entry(backbone: str, spatial_dims: int) -> dict[str, Any]:
    if backbone not in FLEXUNET_BACKBONE.register_dict:
        raise ValueError(
            f"invalid backbone {backbone!r}, must be one of {sorted(FLEXUNET_BACKBONE.register_dict.keys())}."
        )
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    return FLEXUNET_BACKBONE.register_dict[backbone]


def flexunet_encoder_channels(backbone: str) -> tuple[int, ...]:
    """Channel counts of the feature maps returned by a FlexibleUNet backbone, shallowest first.

    Args:
        backbone: a name registered in ``monai.networks.nets.flexible_unet.FLEXUNET_BACKBONE``.

    Example:
        >>> flexunet_encoder_channels("resnet50")
        (64, 256, 512, 1024, 2048)
    """
    return tuple(_backbone_entry(backbone, 2)["feature_channel"])


def build_flexunet_encoder(
    backbone: str, in_channels: int = 1, spatial_dims: int = 2, pretrained: bool = False
) -> nn.Module:
    """Build the encoder exactly as :class:`~monai.networks.nets.FlexibleUNet` builds it.

    Same class and parameters (from ``FLEXUNET_BACKBONE``) with ``spatial_dims``, ``in_channels`` and ``pretrained``
    set, so that its state dict loads with ``strict=True`` into ``FlexibleUNet(...).encoder``. Unlike FlexibleUNet,
    the registry's parameter dict is copied, not updated in place.

    Args:
        backbone: a name registered in ``FLEXUNET_BACKBONE`` (``resnet10`` ... ``resnet200``, ``efficientnet-b0`` ...).
        in_channels: number of input channels.
        spatial_dims: 2 or 3.
        pretrained: passed to the backbone (MONAI's ResNet weights exist for 3D single-channel inputs only).

    Returns:
        the encoder; its forward maps ``(B, in_channels, *spatial)`` to a list of feature maps, shallowest first.

    Example:
        >>> enc = build_flexunet_encoder("resnet10")
        >>> [f.shape[1] for f in enc(torch.zeros(1, 1, 64, 64))]
        [64, 64, 128, 256, 512]
    """
    entry = _backbone_entry(backbone, spatial_dims)
    params = dict(entry["parameter"])
    params.update({"spatial_dims": spatial_dims, "in_channels": in_channels, "pretrained": pretrained})
    return entry["type"](**params)


def _extract_encoder_state(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected an encoder state dict, got {type(obj).__name__}.")
    if "encoder" in obj and isinstance(obj["encoder"], Mapping):
        obj = obj["encoder"]
    keys = [str(k) for k in obj.keys()]
    if keys and all(k.startswith("module.") for k in keys):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    if any(str(k).startswith("encoder.") for k in obj.keys()):
        obj = {k[len("encoder.") :]: v for k, v in obj.items() if str(k).startswith("encoder.")}
    if not obj:
        raise ValueError(f"{path}: the file holds no encoder weights.")
    return obj


def save_submodule(network: nn.Module, name: str, path: str) -> nn.Module | None:
    """Write the state dict of ``network.<name>`` (on the bare module of a DDP wrapper) to ``path`` atomically, as
    CPU tensors; a state holding NaN/Inf is refused (:class:`~ideal_components.finite.NonFiniteError`). Only the main
    process writes.

    Returns:
        the written submodule on the main process, else ``None``.

    Raises:
        ValueError: the network has no module ``name``.
    """
    if not is_main_process():
        return None
    bare = unwrap_network(network)
    module = getattr(bare, name, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{type(bare).__name__} has no `{name}` module to save.")
    state = module.state_dict()
    check_finite(state, f"{name} file {path}")
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)
    return module


def save_encoder(network: nn.Module, path: str) -> str | None:
    """Write ``network.encoder``'s state dict to ``path`` atomically (what ``pretrained_encoder.pt`` holds).

    The file is written to a temporary name in the same folder and renamed, so a crash never leaves a truncated
    encoder that a later fine-tuning run would load. Under ``torch.distributed`` only rank 0 writes. An encoder
    holding NaN/Inf is not written (:class:`~ideal_components.finite.NonFiniteError`).

    Args:
        network: a :class:`DenseContrastiveNet`, :class:`TwoBranchFlexibleUNet` or FlexibleUNet, possibly wrapped in
            ``DistributedDataParallel``.
        path: the output file; its folder is created.

    Returns:
        ``path`` on the rank that wrote it, else ``None``.

    Example::

        net = DenseContrastiveNet(backbone="resnet10", momentum=0.0)
        save_encoder(net, "models/pretrained_encoder.pt")
        net2 = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet10")
        load_pretrained_encoder(net2, "models/pretrained_encoder.pt")
    """
    encoder = save_submodule(network, "encoder", path)
    if encoder is None:
        return None
    logger.info("saved the encoder (%s) to %s", type(encoder).__name__, path)
    return path


def load_pretrained_encoder(
    network: nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    required: bool = False,
    map_location: str | torch.device = "cpu",
) -> bool:
    """Load a pre-trained encoder state dict file into ``network.encoder``.

    Works for :class:`TwoBranchFlexibleUNet`, :class:`~monai.networks.nets.FlexibleUNet`,
    :class:`DenseContrastiveNet` and DDP-wrapped ones (through ``.module``). The file (read with
    ``torch.load(weights_only=True)``) may hold the encoder's state dict, a checkpoint dict with an ``"encoder"`` entry,
    or a full ``DenseContrastiveNet`` state dict (``"encoder."`` keys are taken and the prefix stripped; a leading
    ``"module."`` of a DDP-saved dict is stripped too).

    Args:
        network: the network whose ``encoder`` is initialised.
        path: the state dict file, e.g. ``models/pretrained_encoder.pt``.
        strict: strict key matching (shape mismatches always raise).
        required: raise ``FileNotFoundError`` when the file is missing instead of returning ``False``.
        map_location: passed to ``torch.load``.

    Returns:
        ``True`` when the weights were loaded, ``False`` when the file does not exist and ``required`` is False.

    Raises:
        FileNotFoundError: the file is missing and ``required`` is True.
        ValueError: the network has no ``encoder``, or the file holds no encoder state dict.
        RuntimeError: the state dict does not match the encoder (the message names the file).

    Example:
        >>> net = TwoBranchFlexibleUNet(out_channels=4, backbone="resnet10")
        >>> load_pretrained_encoder(net, "models/pretrained_encoder.pt")  # False when the file is absent
        False
    """
    net = unwrap_network(network)
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(net).__name__} has no `encoder` module to load pre-trained weights into.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"pretrained encoder file not found: {path}")
        logger.info("no pretrained encoder at %s; keeping the encoder's initial weights.", path)
        return False
    state = _extract_encoder_state(torch.load(path, map_location=map_location, weights_only=True), path)
    target_keys = set(encoder.state_dict().keys())
    if not target_keys.intersection(state.keys()):
        raise RuntimeError(
            f"pretrained encoder file {path} does not match {type(encoder).__name__}: no common keys "
            f"(file has e.g. {sorted(state.keys())[:3]}, the encoder expects e.g. {sorted(target_keys)[:3]})."
        )
    try:
        result = encoder.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise RuntimeError(f"pretrained encoder file {path} does not match {type(encoder).__name__}: {e}") from e
    if not strict and (result.missing_keys or result.unexpected_keys):
        logger.warning(
            "loaded %s non-strictly: missing keys %s, unexpected keys %s",
            path,
            result.missing_keys,
            result.unexpected_keys,
        )
    logger.info("loaded pretrained encoder weights from %s", path)
    return True
