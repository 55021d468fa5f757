"""Networks of IDEAL, assembled from MONAI's FlexibleUNet parts.

- :class:`DenseProjectionHead`: the dense (1x1 convolution) projection head of the local contrastive pre-training.
- :class:`DenseContrastiveNet`: FlexibleUNet's encoder + dense projection head, with an optional momentum (MoCo /
  DenseCL style) key encoder, for the pre-training stage.
- :class:`TwoBranchFlexibleUNet`: one shared encoder, decoder A with transposed-convolution up-sampling (a plain
  :class:`monai.networks.nets.FlexibleUNet`) and decoder B with bilinear up-sampling, for the cross-pseudo-label
  fine-tuning stage.

The encoder of every network here is constructed exactly like :class:`~monai.networks.nets.FlexibleUNet` constructs
its encoder (:mod:`ideal_components.encoders`), so their state dicts are interchangeable with strict loading.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from ideal_components.encoders import _backbone_entry, build_flexunet_encoder, flexunet_encoder_channels

__all__ = ["DenseProjectionHead", "TwoBranchFlexibleUNet", "DenseContrastiveNet"]

_DEFAULT_NORM: tuple = ("batch", {"eps": 1e-3, "momentum": 0.1})
_DEFAULT_ACT: tuple = ("relu", {"inplace": True})


class DenseProjectionHead(nn.Module):
    """Dense projection head: a stack of 1x1 convolutions (an MLP applied at every spatial location).

    ``in_channels -> hidden_channels -> ... -> out_channels`` with normalisation and ReLU between layers and none
    after the last one. The output is not L2-normalised (the contrastive losses normalise).

    Args:
        in_channels: channels of the input feature map.
        hidden_channels: channels of the hidden layers, defaults to ``in_channels``.
        out_channels: channels of the projection, default 128.
        spatial_dims: 2 or 3.
        num_layers: number of 1x1 convolutions (>= 1); 1 means a single linear projection.
        norm: normalisation between layers (any MONAI norm name or ``(name, args)``), or ``None``.

    Shapes:
        ``(B, in_channels, *spatial)`` -> ``(B, out_channels, *spatial)``.

    Example:
        >>> head = DenseProjectionHead(512, out_channels=128)
        >>> head(torch.zeros(2, 512, 6, 6)).shape
        torch.Size([2, 128, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int | None = None,
        out_channels: int = 128,
        spatial_dims: int = 2,
        num_layers: int = 2,
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        hidden = in_channels if hidden_channels is None else hidden_channels
        if hidden < 1:
            raise ValueError(f"hidden_channels must be positive, got {hidden}.")
        conv_type = Conv[Conv.CONV, spatial_dims]
        chns = [in_channels] + [hidden] * (num_layers - 1) + [out_channels]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            last = i == num_layers - 1
            layers.append(conv_type(chns[i], chns[i + 1], kernel_size=1, bias=last or norm is None))
            if not last:
                if norm is not None:
                    layers.append(get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=chns[i + 1]))
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``x`` of shape ``(B, in_channels, *spatial)`` to ``(B, out_channels, *spatial)``."""
        return self.layers(x)


class TwoBranchFlexibleUNet(nn.Module):
    """Shared encoder with two U-Net decoders: A (transposed convolutions) and B (bilinear up-sampling).

    ``branch_a`` is a plain :class:`monai.networks.nets.FlexibleUNet` with ``upsample="deconv"``: its state dict
    (``models/model.pt``) loads strictly into a FlexibleUNet with the same arguments, and ``forward`` returns its
    logits only, so this class can serve as a bundle ``network_def`` and with :class:`monai.inferers.SliceInferer`.
    ``decoder_b`` is a :class:`~monai.networks.nets.flexible_unet.UNetDecoder` built exactly like FlexibleUNet builds
    its decoder but with ``upsample="nontrainable"`` and bilinear (trilinear in 3D) interpolation (MONAI's default
    ``align_corners``), followed by ``segmentation_head_b``. ``forward_both`` runs the encoder once and both decoders
    on the same features (the cross-pseudo-label stage).

    Args:
        in_channels: number of input channels.
        out_channels: number of classes (logit channels) of both branches.
        backbone: FlexibleUNet backbone name, default ``"resnet50"`` (the paper's encoder). Note that MONAI's
            ``resnet18``/``resnet34`` (shortcut type A) cannot be TorchScript-scripted; ``resnet10``/``resnet50`` can.
        spatial_dims: 2 or 3.
        pretrained: passed to the backbone (see FlexibleUNet).
        decoder_channels: decoder channels of both decoders (see FlexibleUNet).
        norm: normalisation of both decoders.
        act: activation of both decoders.
        dropout: dropout of both decoders.
        decoder_bias: bias of both decoders' convolutions.
        is_pad: both decoders pad a feature map whose size is odd before concatenating it with the skip connection
            (FlexibleUNet's default), so that any input size works. Sizes divisible by 32 need no padding and give
            the same outputs with ``False``, which ``torch.compile`` needs (torch 2.13 cannot trace the backward of
            MONAI's zero-width replicate padding).

    Shapes:
        ``(B, in_channels, H, W[, D])`` -> ``(B, out_channels, H, W[, D])``; with ``is_pad`` any size works,
        without it the sizes must be divisible by 32.

    Example:
        >>> net = TwoBranchFlexibleUNet(in_channels=1, out_channels=4, backbone="resnet10")
        >>> logits_a, logits_b = net.forward_both(torch.zeros(2, 1, 64, 64))
        >>> logits_a.shape, logits_b.shape
        (torch.Size([2, 4, 64, 64]), torch.Size([2, 4, 64, 64]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "resnet50",
        spatial_dims: int = 2,
        pretrained: bool = False,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        norm: str | tuple = _DEFAULT_NORM,
        act: str | tuple = _DEFAULT_ACT,
        dropout: float | tuple = 0.0,
        decoder_bias: bool = False,
        is_pad: bool = True,
    ) -> None:
        super().__init__()
        entry = _backbone_entry(backbone, spatial_dims)
        if out_channels < 1:
            raise ValueError(f"out_channels must be positive, got {out_channels}.")
        decoder_channels = tuple(decoder_channels)
        self.branch_a = FlexibleUNet(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=backbone,
            pretrained=pretrained,
            decoder_channels=decoder_channels,
            spatial_dims=spatial_dims,
            norm=norm,
            act=act,
            dropout=dropout,
            decoder_bias=decoder_bias,
            upsample="deconv",
            is_pad=is_pad,
        )
        feature_number = entry["feature_number"]
        dec_chns = decoder_channels[:feature_number]
        encoder_channels = tuple([in_channels] + list(entry["feature_channel"]))
        self.skip_connect = feature_number - 1
        self.decoder_b = UNetDecoder(
            spatial_dims=spatial_dims,
            encoder_channels=encoder_channels,
            decoder_channels=dec_chns,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=decoder_bias,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="trilinear" if spatial_dims == 3 else "bilinear",
            align_corners=None,
            is_pad=is_pad,
        )
        self.segmentation_head_b = SegmentationHead(
            spatial_dims=spatial_dims, in_channels=dec_chns[-1], out_channels=out_channels, kernel_size=3, act=None
        )

    @property
    def encoder(self) -> nn.Module:
        """The shared encoder (``branch_a.encoder``)."""
        return self.branch_a.encoder

    def forward(self, x: torch.Tensor, branch: str = "a") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of one branch, or of both.

        Args:
            x: ``(B, in_channels, *spatial)``.
            branch: ``"a"`` (default, the inference output), ``"b"``, or ``"both"`` for ``forward_both(x)``. Training
                calls ``network(x, branch="both")`` through the module itself so that a ``DistributedDataParallel``
                wrapper sees the forward and synchronises both branches' gradients.

        Returns:
            ``(B, out_channels, *spatial)`` logits, or the pair ``(logits_a, logits_b)`` for ``"both"``.
        """
        if branch == "a":
            return self.branch_a(x)
        if branch == "both":
            return self.forward_both(x)
        if branch == "b":
            features = self.branch_a.encoder(x)
            return self.segmentation_head_b(self.decoder_b(features, self.skip_connect))
        raise ValueError(f"branch must be 'a', 'b' or 'both', got {branch!r}.")

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder once and both decoders on its features.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            ``(logits_a, logits_b)``, each ``(B, out_channels, *spatial)``; ``logits_a`` equals ``forward(x)``.
        """
        a = self.branch_a
        features = a.encoder(x)
        logits_a = a.segmentation_head(a.decoder(features, a.skip_connect))
        logits_b = self.segmentation_head_b(self.decoder_b(features, self.skip_connect))
        return logits_a, logits_b


class DenseContrastiveNet(nn.Module):
    """FlexibleUNet encoder + dense projection head(s) for local (or global) contrastive pre-training.

    ``encoder`` is built exactly like FlexibleUNet's encoder (:func:`build_flexunet_encoder`), so
    ``encoder_state_dict()`` (``pretrained_encoder.pt``) loads strictly into ``TwoBranchFlexibleUNet.encoder`` and
    ``FlexibleUNet.encoder``. The encoder returns a list of feature maps; ``feature_level`` picks the one to project,
    or several. For the ResNet backbones the levels have strides 2, 4, 8, 16, 32 (index 0..4, or -5..-1): at 192x192
    they are 96, 48, 24, 12 and 6 pixels wide, so -1 (the deepest, the paper's "encoder output") gives 6x6
    projections, -2 gives 12x12 and -3 24x24. Only the encoder stages up to the deepest projected level receive a
    pre-training gradient: with -2, ResNet50's last stage (about 64 % of its encoder parameters) is left random.

    With several levels (``feature_level=[-1, -2]``) each level has its own head, ``forward`` returns one projection
    per level (in the order given) and the pre-training loss is summed over the levels
    (:class:`~ideal_components.engines.ContrastivePretrainTrainer`), so every stage down to the deepest level gets a
    gradient while the shallower maps still give many locations.

    With ``momentum > 0`` a key encoder ``encoder_k`` and head(s) ``head_k`` (deep copies, ``requires_grad=False``)
    are kept as an exponential moving average of the query ones (MoCo / DenseCL); ``momentum == 0`` means one shared
    encoder, with the key branch under stop-gradient.

    When wrapped in ``DistributedDataParallel``, call ``forward_key`` and ``momentum_update`` on the bare module:
    ``getattr(net, "module", net).forward_key(x)``.

    Args:
        in_channels: number of input channels.
        backbone: FlexibleUNet backbone name, default ``"resnet50"``.
        spatial_dims: 2 or 3.
        feature_level: index of the encoder feature map to project (Python indexing; default -1, the deepest), or a
            sequence of distinct indices (one head each).
        head_hidden_channels: hidden channels of the head(s), default the feature map's channels.
        head_out_channels: projection channels, default 128.
        momentum: key encoder momentum ``m`` in ``[0, 1]``; ``k = m * k + (1 - m) * q``.
        pool_before_head: global average pooling before the head (the Global-CL baseline): output ``(B, out, 1, 1)``.
        head_layers: number of 1x1 convolutions of each head (1, the default: the paper's single 1x1 convolution,
            as ``pretrain.json``; 2: a DenseCL style two-layer head with BatchNorm and ReLU between, as
            ``pretrain_global.json`` sets for Global CL).
        pretrained: passed to the backbone.

    Shapes:
        ``(B, in_channels, H, W)`` -> ``(B, head_out_channels, H / s, W / s)`` (``s`` the level's stride), or
        ``(B, head_out_channels, 1, 1)`` with ``pool_before_head``; a list of those with several levels.

    Example:
        >>> net = DenseContrastiveNet(backbone="resnet10", feature_level=-2, head_out_channels=64)
        >>> x = torch.zeros(2, 1, 64, 64)
        >>> net(x).shape, net.forward_key(x).shape
        (torch.Size([2, 64, 4, 4]), torch.Size([2, 64, 4, 4]))
        >>> net.momentum_update()
        >>> [q.shape[-1] for q in DenseContrastiveNet(backbone="resnet10", feature_level=[-1, -2])(x)]
        [2, 4]
    """

    def __init__(
        self,
        in_channels: int = 1,
        backbone: str = "resnet50",
        spatial_dims: int = 2,
        feature_level: int | Sequence[int] = -1,
        head_hidden_channels: int | None = None,
        head_out_channels: int = 128,
        momentum: float = 0.99,
        pool_before_head: bool = False,
        head_layers: int = 1,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        entry = _backbone_entry(backbone, spatial_dims)
        channels = list(entry["feature_channel"])
        n = len(channels)
        levels = [feature_level] if isinstance(feature_level, int) else list(feature_level)
        if (
            not levels
            or any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in levels)
            or len({i % n for i in levels}) != len(levels)
        ):
            raise ValueError(
                f"feature_level must be an index in [{-n}, {n - 1}] or a list of distinct ones for backbone "
                f"{backbone!r}, got {feature_level!r}."
            )
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
        self.backbone = backbone
        self.spatial_dims = spatial_dims
        self.feature_levels = tuple(i % n for i in levels)
        self.multi_level = not isinstance(feature_level, int) and len(levels) > 1
        self.momentum = float(momentum)
        self.pool_before_head = bool(pool_before_head)
        self.encoder = build_flexunet_encoder(backbone, in_channels, spatial_dims, pretrained)
        heads = [
            DenseProjectionHead(
                in_channels=channels[level],
                hidden_channels=head_hidden_channels,
                out_channels=head_out_channels,
                spatial_dims=spatial_dims,
                num_layers=head_layers,
            )
            for level in self.feature_levels
        ]
        # one level keeps the single ``head`` module (and its state-dict keys); several get a ModuleList
        self.head: nn.Module = nn.ModuleList(heads) if self.multi_level else heads[0]
        self.encoder_k: nn.Module | None = None
        self.head_k: nn.Module | None = None
        if self.momentum > 0:
            self.encoder_k = copy.deepcopy(self.encoder)
            self.head_k = copy.deepcopy(self.head)
            for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
                p.requires_grad_(False)

    @property
    def feature_level(self) -> int:
        """The deepest projected level (non-negative index)."""
        return max(self.feature_levels)

    @property
    def uses_whole_encoder(self) -> bool:
        """Whether every encoder parameter gets a gradient (the deepest level is projected): DDP then needs no
        ``find_unused_parameters``."""
        return self.feature_level == len(flexunet_encoder_channels(self.backbone)) - 1

    def _project(self, encoder: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feats = encoder(x)
        heads = list(head) if self.multi_level else [head]
        out = []
        for level, level_head in zip(self.feature_levels, heads):
            feat = feats[level]
            if self.pool_before_head:
                feat = torch.mean(feat, dim=tuple(range(2, feat.ndim)), keepdim=True)
            out.append(level_head(feat))
        return out if self.multi_level else out[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Query projections: ``(B, in_channels, *spatial)`` -> ``(B, head_out_channels, *feature_spatial)`` (a list
        of those, one per level, with several levels)."""
        return self._project(self.encoder, self.head, x)

    def forward_key(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Key projections (no gradient): from ``encoder_k``/``head_k`` if ``momentum > 0``, else from the query ones.

        With ``momentum == 0`` in training mode the shared encoder's batch-norm statistics are updated by this call
        as well.
        """
        with torch.no_grad():
            if self.encoder_k is not None and self.head_k is not None:
                out = self._project(self.encoder_k, self.head_k, x)
            else:
                out = self._project(self.encoder, self.head, x)
        return [o.detach() for o in out] if isinstance(out, list) else out.detach()

    def _query_key_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        if self.encoder_k is None or self.head_k is None:
            return [], [], [], []
        pq, pk, bq, bk = [], [], [], []
        for mq, mk in ((self.encoder, self.encoder_k), (self.head, self.head_k)):
            pq += list(mq.parameters())
            pk += list(mk.parameters())
            bq += list(mq.buffers())
            bk += list(mk.buffers())
        if len(pq) != len(pk) or len(bq) != len(bk):
            raise RuntimeError("query and key encoders differ in structure; cannot apply the momentum update.")
        return pq, pk, bq, bk

    @torch.no_grad()
    def momentum_update(self) -> None:
        """EMA update of the key encoder and head: ``k = m * k + (1 - m) * q``; buffers (BN statistics) are copied.

        A no-op when ``momentum == 0``. Call on the bare module under DDP (``getattr(net, "module", net)``).
        """
        pq, pk, bq, bk = self._query_key_pairs()
        if not pk:
            return
        m = self.momentum
        torch._foreach_mul_(pk, m)
        torch._foreach_add_(pk, pq, alpha=1.0 - m)
        for b_k, b_q in zip(bk, bq):
            b_k.copy_(b_q)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the query encoder (what goes into ``pretrained_encoder.pt``)."""
        return self.encoder.state_dict()
