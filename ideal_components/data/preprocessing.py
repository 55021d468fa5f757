"""The one spatial / intensity preprocessing chain, shared by data preparation and the bundles' inference config.

Everything is a MONAI dictionary transform working on channel-first ``MetaTensor`` s, and every spatial step is
invertible, so that ``monai.transforms.Invertd`` brings a prediction back to the geometry of the input volume.

Chain (:func:`preprocessing_transforms`):

1. orientation: :class:`OrientSliceAxisLastd` (ACDC: closest RAS-like orientation that keeps the short-axis slice
   axis last) or ``Orientationd(axcodes="RAS")`` (MMWHS);
2. ``Spacingd`` to ``pixdim`` in-plane, the slice spacing untouched (image bilinear, label nearest);
3. ``ScaleIntensityRangePercentilesd``: per-volume min-max between the 1st and 99th percentile, no clipping (image);
4. ``ResizeWithPadOrCropd``: in-plane centre crop / pad to ``spatial_size``.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import (
    Compose,
    InvertibleTransform,
    MapTransform,
    Orientation,
    Orientationd,
    ResizeWithPadOrCropd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)
from monai.transforms.spatial.functional import orientation
from monai.utils import convert_data_type, ensure_tuple_rep

__all__ = [
    "slice_axis_last_axcodes",
    "OrientSliceAxisLast",
    "OrientSliceAxisLastd",
    "preprocessing_transforms",
    "to_metatensor",
]

_RAS = "RAS"


def slice_axis_last_axcodes(affine: np.ndarray | torch.Tensor, through_plane_axis: int = 2) -> str:
    """Axis codes of the closest RAS-like orientation that keeps ``through_plane_axis`` as the last voxel axis.

    The in-plane axes are ordered by the world axis they are closest to (R/L before A/P before S/I) and every axis
    is made to point to R, A or S. Only flips and an in-plane permutation are involved, never a change of the
    slice axis.

    Args:
        affine: the voxel-to-world (RAS) affine of a 3D volume (4x4).
        through_plane_axis: the voxel axis that holds the slices (2 for ACDC short-axis stacks).

    Example::

        slice_axis_last_axcodes(np.diag([-1.4, 1.4, 8.0, 1.0]))  # 'RAS'
        slice_axis_last_axcodes(np.array([[0, 0, 8, 0], [1.4, 0, 0, 0], [0, 1.4, 0, 0], [0, 0, 0, 1]]))  # 'ASR'
    """
    aff = to_affine_nd(3, convert_data_type(affine, np.ndarray)[0].astype(np.float64))
    ornt = nib.io_orientation(aff)  # voxel axis i -> (world axis, direction)
    if np.isnan(ornt).any():
        raise ValueError(f"cannot determine the orientation of affine\n{aff}")
    world = [int(w) for w in ornt[:, 0]]
    slice_world = world[through_plane_axis]
    in_plane = sorted(w for i, w in enumerate(world) if i != through_plane_axis)
    return "".join(_RAS[w] for w in (*in_plane, slice_world))


class OrientSliceAxisLast(Orientation):
    """Reorient a channel-first volume to the closest RAS-like orientation keeping its slice axis last.

    Unlike ``Orientation(axcodes="RAS")``, which on an oblique short-axis stack may move the slice axis anywhere,
    the axis codes are chosen per image by :func:`slice_axis_last_axcodes`, so that the through-plane voxel axis
    stays the last one (flips and an in-plane swap only). The operation is traced like ``Orientation`` and inverted
    by :meth:`Orientation.inverse` (back to the original affine).

    Args:
        through_plane_axis: the spatial axis (0-based, without the channel) that holds the slices.
        labels: world axis labels, as for ``Orientation`` (default RAS).

    Example::

        out = OrientSliceAxisLast()(MetaTensor(torch.zeros(1, 8, 9, 4), affine=affine))
    """

    def __init__(self, through_plane_axis: int = 2, labels: Sequence[tuple[str, str]] | None = None) -> None:
        super().__init__(axcodes=_RAS, labels=labels)
        self.through_plane_axis = int(through_plane_axis)

    def __call__(self, data_array: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:
        """Reorient ``data_array`` (``(C, H, W, D)``; a plain tensor is assumed to have an identity affine)."""
        spatial_shape = data_array.peek_pending_shape() if isinstance(data_array, MetaTensor) else data_array.shape[1:]
        if len(spatial_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects a channel-first 3D volume, got shape {data_array.shape}.")
        if isinstance(data_array, MetaTensor):
            affine_np = convert_data_type(data_array.peek_pending_affine(), np.ndarray)[0]
        else:
            affine_np = np.eye(4, dtype=np.float64)
        affine_ = to_affine_nd(3, affine_np)
        axcodes = slice_axis_last_axcodes(affine_, self.through_plane_axis)
        src = nib.io_orientation(affine_)
        dst = nib.orientations.axcodes2ornt(axcodes, labels=self.labels)
        spatial_ornt = nib.orientations.ornt_transform(src, dst)
        lazy_ = self.lazy if lazy is None else lazy
        return orientation(data_array, affine_np, spatial_ornt, lazy=lazy_, transform_info=self.get_transform_info())


class OrientSliceAxisLastd(MapTransform, InvertibleTransform):
    """Dictionary version of :class:`OrientSliceAxisLast` (invertible, e.g. by ``Invertd``).

    Args:
        keys: keys of the items to reorient.
        through_plane_axis: the spatial axis holding the slices (2 for ACDC short-axis stacks).
        labels: world axis labels, as for ``Orientation`` (default RAS).
        allow_missing_keys: do not raise if a key is missing.

    Example::

        OrientSliceAxisLastd(keys=("image", "label"))({"image": img, "label": lab})
    """

    backend = Orientation.backend

    def __init__(
        self,
        keys: KeysCollection,
        through_plane_axis: int = 2,
        labels: Sequence[tuple[str, str]] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ornt_transform = OrientSliceAxisLast(through_plane_axis=through_plane_axis, labels=labels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.ornt_transform(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.ornt_transform.inverse(d[key])
        return d


def preprocessing_transforms(
    keys: KeysCollection = ("image", "label"),
    pixdim: float | Sequence[float] = (1.367, 1.367),
    spatial_size: int | Sequence[int] = (192, 192),
    percentiles: Sequence[float] = (1.0, 99.0),
    image_key: str = "image",
    slice_axis: str = "last",
    allow_missing_keys: bool = False,
) -> Compose:
    """The preprocessing chain (no loading: the inputs are channel-first ``MetaTensor`` s with their affine).

    Args:
        keys: the image and label keys; every key other than ``image_key`` is resampled with nearest neighbour.
        pixdim: in-plane output spacing in mm (a number or a pair); the slice spacing is kept.
        spatial_size: in-plane output size (a number or a pair), by centre crop / zero pad.
        percentiles: lower and upper percentile mapped to 0 and 1 (image only, no clipping).
        image_key: the key of the intensity image.
        slice_axis: ``"last"`` (ACDC: :class:`OrientSliceAxisLastd`, keeping the input's slice axis last) or
            ``"canonical"`` (MMWHS: ``Orientationd(axcodes="RAS")``, slices along S).
        allow_missing_keys: e.g. for an inference dictionary without a label.

    Example::

        chain = preprocessing_transforms(pixdim=1.5, spatial_size=160, slice_axis="canonical")
        out = chain({"image": image_metatensor, "label": label_metatensor})
        # bring a prediction back: Invertd(keys="pred", transform=chain, orig_keys="image", nearest_interp=True)
    """
    keys = tuple(keys) if isinstance(keys, (list, tuple)) else (keys,)
    if image_key not in keys:
        raise ValueError(f"image_key {image_key!r} must be one of keys {keys}.")
    px = tuple(float(p) for p in ensure_tuple_rep(pixdim, 2))
    size = tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
    if any(p <= 0 for p in px) or any(s <= 0 for s in size):
        raise ValueError(f"pixdim {pixdim} and spatial_size {spatial_size} must be positive.")
    lower, upper = (float(p) for p in percentiles)
    if not 0 <= lower < upper <= 100:
        raise ValueError(f"percentiles {percentiles} must satisfy 0 <= lower < upper <= 100.")
    modes = ["bilinear" if k == image_key else "nearest" for k in keys]
    if slice_axis == "last":
        orient = OrientSliceAxisLastd(keys, through_plane_axis=2, allow_missing_keys=allow_missing_keys)
    elif slice_axis == "canonical":
        orient = Orientationd(keys, axcodes=_RAS, labels=None, allow_missing_keys=allow_missing_keys)
    else:
        raise ValueError(f"slice_axis must be 'last' or 'canonical', got {slice_axis!r}.")
    return Compose(
        [
            orient,
            # a non-positive pixdim component keeps that axis' spacing (monai Spacing), here the slice axis
            Spacingd(keys, pixdim=(*px, -1.0), mode=modes, dtype=np.float32, allow_missing_keys=allow_missing_keys),
            ScaleIntensityRangePercentilesd(
                image_key, lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=False, allow_missing_keys=True
            ),
            ResizeWithPadOrCropd(keys, spatial_size=(*size, -1), allow_missing_keys=allow_missing_keys),
        ]
    )


def to_metatensor(data: np.ndarray, affine: np.ndarray, filename: str | None = None) -> MetaTensor:
    """A channel-first float32 ``MetaTensor`` like ``LoadImaged(reader="NibabelReader") + EnsureChannelFirstd``.

    Args:
        data: the spatial array ``(H, W, D)``.
        affine: its RAS voxel-to-world affine.
        filename: recorded as ``filename_or_obj``.

    Example::

        img = load_nifti(path)
        mt = to_metatensor(np.asanyarray(img.dataobj), img.affine, str(path))
    """
    affine_t = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    meta = {
        "original_affine": affine_t.clone().numpy(),
        "spatial_shape": np.asarray(data.shape),
        "space": "RAS",
        "original_channel_dim": "no_channel",
    }
    if filename is not None:
        meta["filename_or_obj"] = filename
    tensor = torch.as_tensor(np.ascontiguousarray(data, dtype=np.float32))[None]
    return MetaTensor(tensor, affine=affine_t, meta=meta)
