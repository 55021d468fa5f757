"""Chaitanya et al.'s decoder pre-training network, and the decoder file it hands to fine-tuning.

- :class:`DecoderContrastiveNet`: a frozen FlexibleUNet encoder, the first ``decoder_blocks`` blocks of FlexibleUNet's
  (transposed-convolution) decoder and a two-layer 1x1-convolution head, for the local contrastive stage.
- :func:`save_decoder`: ``pretrained_decoder.pt``, the trained decoder blocks (keys ``blocks.<i>.*``).
- :func:`load_pretrained_decoder`: those blocks into a fine-tuning network's decoder: ``TwoBranchFlexibleUNet``'s
  decoder A (``branch_a.decoder``) or a ``FlexibleUNet``'s ``decoder``; each block the file holds is loaded strictly,
  the others keep their initial weights. Decoder B of ``TwoBranchFlexibleUNet`` (bilinear up-sampling: other layers,
  other shapes) is left as initialised.

The encoder and decoder blocks are built exactly as :class:`~monai.networks.nets.FlexibleUNet` builds them with
``upsample="deconv"`` (which is ``TwoBranchFlexibleUNet.branch_a``), so the files load with strict key matching.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import torch
from monai.networks.nets import FlexibleUNet
from torch import nn

from ideal_components.distributed import unwrap_network
from ideal_components.encoders import save_submodule
from ideal_components.networks import DenseProjectionHead

__all__ = ["DecoderContrastiveNet", "save_decoder", "load_pretrained_decoder"]

logger = logging.getLogger(__name__)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


class DecoderContrastiveNet(nn.Module):
    """Frozen encoder + the first ``decoder_blocks`` decoder blocks + a dense two-layer head (Chaitanya et al.'s
    ``g_2``: 1x1 convolution, BatchNorm, ReLU, 1x1 convolution, as many channels as the decoder block).

    ``forward(x)`` gives the head's map at the last kept block's resolution (with a ResNet backbone, 3 blocks give
    stride 4: 48x48 at 192x192). With ``freeze_encoder`` the encoder has ``requires_grad=False``, stays in eval mode
    (its BatchNorm statistics are not updated) and runs without autograd. ``forward_key`` is ``forward`` without
    gradient (what :class:`~ideal_components.engines.ContrastivePretrainTrainer` checks for).

    Args:
        in_channels, backbone, spatial_dims, decoder_channels, norm, act, dropout, decoder_bias, is_pad: as for
            :class:`~ideal_components.networks.TwoBranchFlexibleUNet` (so the blocks match its decoder A).
        decoder_blocks: how many decoder blocks are pre-trained (their README: 3), in ``[1, len(decoder_channels)]``.
        freeze_encoder: freeze the encoder (the stage-1 encoder, loaded by the config's ``initialize``).

    Example:
        >>> net = DecoderContrastiveNet(backbone="resnet10", decoder_blocks=3)
        >>> net(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 64, 16, 16])
    """

    def __init__(
        self,
        in_channels: int = 1,
        backbone: str = "resnet50",
        spatial_dims: int = 2,
        decoder_blocks: int = 3,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        act: str | tuple = ("relu", {"inplace": True}),
        dropout: float | tuple = 0.0,
        decoder_bias: bool = False,
        is_pad: bool = True,
        freeze_encoder: bool = True,
    ) -> None:
        super().__init__()
        unet = FlexibleUNet(
            in_channels=in_channels,
            out_channels=2,
            backbone=backbone,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=spatial_dims,
            norm=norm,
            act=act,
            dropout=dropout,
            decoder_bias=decoder_bias,
            upsample="deconv",
            is_pad=is_pad,
        )
        blocks = list(unet.decoder.blocks)
        if not 1 <= int(decoder_blocks) <= len(blocks):
            raise ValueError(f"decoder_blocks must be in [1, {len(blocks)}], got {decoder_blocks}.")
        self.decoder_blocks = int(decoder_blocks)
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.decoder.blocks = nn.ModuleList(blocks[: self.decoder_blocks])  # keys blocks.0 .. blocks.N-1 kept
        self.skip_connect = unet.skip_connect
        channels = tuple(decoder_channels)[self.decoder_blocks - 1]
        self.head = DenseProjectionHead(channels, channels, channels, spatial_dims=spatial_dims, num_layers=2)
        self.freeze_encoder = bool(freeze_encoder)
        if self.freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> DecoderContrastiveNet:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, C, H / s, W / s)``, the head's map after the kept decoder blocks."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            features = self.encoder(x)
        return self.head(self.decoder(features, self.skip_connect))

    def forward_key(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` without gradient."""
        with torch.no_grad():
            return self.forward(x)

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The kept blocks' state dict (keys ``blocks.<i>.*``, as in FlexibleUNet's ``decoder``)."""
        return self.decoder.state_dict()


def save_decoder(network: nn.Module, path: str) -> str | None:
    """Write ``network.decoder``'s state dict (the pre-trained blocks) to ``path`` atomically; rank 0 only; a state
    holding NaN/Inf is refused (:class:`~ideal_components.finite.NonFiniteError`).

    Returns:
        ``path`` on the rank that wrote it, else ``None``.
    """
    decoder = save_submodule(network, "decoder", path)
    if decoder is None:
        return None
    blocks = {_BLOCK.match(k).group(1) for k in decoder.state_dict()}
    logger.info("saved %d decoder block(s) to %s", len(blocks), path)
    return path


def _target_decoder(network: nn.Module) -> nn.Module:
    bare = unwrap_network(network)
    branch_a = getattr(bare, "branch_a", None)
    decoder = getattr(branch_a, "decoder", None) if branch_a is not None else getattr(bare, "decoder", None)
    if not isinstance(decoder, nn.Module) or not isinstance(getattr(decoder, "blocks", None), nn.ModuleList):
        raise ValueError(f"{type(bare).__name__} has no FlexibleUNet decoder (`branch_a.decoder` or `decoder`).")
    return decoder


def load_pretrained_decoder(
    network: nn.Module, path: str | os.PathLike, required: bool = True, map_location: str | torch.device = "cpu"
) -> list[int]:
    """Load the decoder blocks of ``path`` (written by :func:`save_decoder`) into the network's (first) decoder.

    The target is ``branch_a.decoder`` of a :class:`~ideal_components.networks.TwoBranchFlexibleUNet` (decoder B is
    left as initialised: its bilinear blocks have other layers and shapes, and cross pseudo-labelling relies on two
    differently initialised branches) or ``decoder`` of a FlexibleUNet. Every block the file holds is loaded with
    strict key and shape matching; the blocks it does not hold keep their weights.

    Args:
        network: the fine-tuning network, possibly DDP-wrapped.
        path: the decoder file.
        required: raise ``FileNotFoundError`` when the file is missing (else return ``[]``).
        map_location: passed to ``torch.load`` (``weights_only=True``).

    Returns:
        the indices of the loaded blocks.

    Raises:
        ValueError: keys that are not ``blocks.<i>.*``, a block index the decoder lacks.
        RuntimeError: a block whose keys or shapes differ (the message names the file and the block).
    """
    decoder = _target_decoder(network)
    path = os.fspath(path)
    if not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"pretrained decoder file not found: {path}")
        return []
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a decoder state dict, got {type(state).__name__}.")
    by_block: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _BLOCK.match(str(key))
        if match is None:
            raise ValueError(f"{path}: {key!r} is not a decoder block key (blocks.<i>.*).")
        by_block.setdefault(int(match.group(1)), {})[match.group(2)] = value
    for index in sorted(by_block):
        if index >= len(decoder.blocks):
            raise ValueError(f"{path}: block {index} but the decoder has {len(decoder.blocks)} blocks.")
        try:
            decoder.blocks[index].load_state_dict(by_block[index], strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"pretrained decoder file {path}, block {index}: {e}") from e
    loaded = sorted(by_block)
    logger.info("loaded pretrained decoder block(s) %s from %s", loaded, path)
    return loaded
