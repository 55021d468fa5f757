"""Tests of ExtractSliced, EnsureLabeld and expand_to_slices on real NIfTI files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from ideal_components.data.slices import expand_to_slices
from ideal_components.transforms import EnsureLabeld, ExtractSliced

H, W, D = 8, 6, 3


@pytest.fixture()
def volumes(tmp_path):
    """A prepared-layout folder with 2 volumes (p1 labelled, p2 unlabelled) and a datalist.json."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    aff = np.diag([1.5, 1.25, 8.0, 1.0])
    aff[:3, 3] = [10.0, 20.0, 30.0]
    items = []
    for n, pid in enumerate(["p1", "p2"]):
        img = np.arange(H * W * D, dtype=np.float32).reshape(H, W, D) / (H * W * D) + n
        lab = np.zeros((H, W, D), dtype=np.uint8)
        lab[2:5, 1:4, 1] = 2  # only slice 1 has foreground
        nib.save(nib.Nifti1Image(img, aff), str(tmp_path / f"imagesTr/{pid}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / f"labelsTr/{pid}.nii.gz"))
        items.append({"image": f"imagesTr/{pid}.nii.gz", "label": f"labelsTr/{pid}.nii.gz", "id": pid, "num_slices": D})
    datalist = {"training": items, "labeled_100": items[:1], "unlabeled_100": items[1:]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    return tmp_path, aff


def _load(path, key):
    return load_decathlon_datalist(str(path / "datalist.json"), data_list_key=key, base_dir=str(path))


def test_expand_to_slices_drops_unlabelled_labels(volumes):
    path, _ = volumes
    lab = expand_to_slices(_load(path, "labeled_100"), labeled=True)
    unl = expand_to_slices(_load(path, "unlabeled_100"), labeled=False)
    assert [d["slice"] for d in lab] == [0, 1, 2] and all(d["labeled"] == 1 and "label" in d for d in lab)
    assert [d["slice"] for d in unl] == [0, 1, 2] and all(d["labeled"] == 0 and "label" not in d for d in unl)
    assert all(d["id"] == "p2" and d["image"].endswith("p2.nii.gz") for d in unl)
    # copies: mutating one slice item does not touch the others
    lab[0]["id"] = "changed"
    assert lab[1]["id"] == "p1"
    # overrides
    assert all("label" not in d for d in expand_to_slices(_load(path, "labeled_100"), drop_label=True))
    assert [d["slice"] for d in expand_to_slices(_load(path, "labeled_100"), skip_empty_label=True)] == [1]


@pytest.mark.parametrize("bad", [None, 0, -2, 2.5, "x", True])
def test_expand_to_slices_errors(bad):
    item = {"image": "a.nii.gz", "id": "case7"}
    if bad is not None:
        item["num_slices"] = bad
    with pytest.raises(ValueError, match="case7"):
        expand_to_slices([item])


def _pipeline():
    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys, allow_missing_keys=True, image_only=True),
            EnsureChannelFirstd(keys, allow_missing_keys=True),
            ExtractSliced(keys, allow_missing_keys=True),
            EnsureLabeld(),
        ]
    )


def test_extract_slice_meta_and_values(volumes):
    path, aff = volumes
    item = expand_to_slices(_load(path, "labeled_100"))[2]
    out = _pipeline()(item)
    img, lab = out["image"], out["label"]
    assert isinstance(img, MetaTensor) and img.shape == (1, H, W) and lab.shape == (1, H, W)
    ref = nib.load(str(path / "imagesTr/p1.nii.gz")).get_fdata()[..., 2]
    np.testing.assert_allclose(img[0].numpy(), ref, rtol=1e-6)
    assert img.meta["filename_or_obj"].endswith("p1.nii.gz")
    assert lab.meta["filename_or_obj"].endswith("p1.nii.gz")
    assert img.meta["slice_index"] == 2 and tuple(img.meta["spatial_shape"]) == (H, W)
    assert img.affine.shape == (3, 3)
    # in-plane part kept; the origin follows the affine's x, y rows (z row dropped)
    np.testing.assert_allclose(img.affine.numpy(), [[1.5, 0, 10], [0, 1.25, 20], [0, 0, 1]])
    assert img.applied_operations == []
    assert out["labeled"] == 1


def test_extract_slice_moves_origin_along_oblique_axis():
    aff = torch.eye(4, dtype=torch.float64)
    aff[0, 2] = 2.0  # the slice axis has an x component
    img = MetaTensor(torch.zeros(1, 4, 4, 5), affine=aff)
    out = ExtractSliced("image")({"image": img, "slice": 3})["image"]
    assert out.affine[0, 2].item() == 6.0  # origin shifted by 3 slices * 2.0


def test_extract_slice_out_of_range_names_the_file(volumes):
    path, _ = volumes
    item = dict(expand_to_slices(_load(path, "labeled_100"))[0], slice=D)
    with pytest.raises(RuntimeError) as err:  # Compose wraps the transform's ValueError
        _pipeline()(item)
    assert isinstance(err.value.__cause__, ValueError)
    assert "slice 3 is out of range" in str(err.value.__cause__) and "p1.nii.gz" in str(err.value.__cause__)
    with pytest.raises(ValueError, match="slice 5 is out of range"):
        ExtractSliced("image")({"image": np.zeros((1, 2, 2, 5)), "slice": 5})
    with pytest.raises(ValueError, match="no 'slice'"):
        ExtractSliced("image")({"image": np.zeros((1, 2, 2, 5))})


def test_extract_slice_plain_arrays_and_axis():
    arr = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    out = ExtractSliced("x", axis=2)({"x": arr, "slice": 1})["x"]
    assert isinstance(out, np.ndarray) and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, arr[:, :, 1])
    t = ExtractSliced("x")({"x": torch.as_tensor(arr), "slice": torch.tensor(4)})["x"]
    assert isinstance(t, torch.Tensor) and t.shape == (2, 3, 4)
    with pytest.raises(ValueError, match="not a spatial axis"):
        ExtractSliced("x", axis=0)({"x": arr, "slice": 0})


def test_ensure_labeld_placeholder_and_collation(volumes):
    path, _ = volumes
    items = expand_to_slices(_load(path, "labeled_100"), labeled=True) + expand_to_slices(
        _load(path, "unlabeled_100"), labeled=False
    )
    ds = Dataset(items, transform=_pipeline())
    unl = ds[4]
    assert unl["labeled"] == 0 and unl["label"].shape == (1, H, W) and float(unl["label"].abs().sum()) == 0.0
    assert unl["label"].dtype == ds[0]["label"].dtype == torch.float32
    batch = next(iter(DataLoader(ds, batch_size=6, shuffle=False)))
    assert batch["image"].shape == (6, 1, H, W) and batch["label"].shape == (6, 1, H, W)
    assert batch["labeled"].tolist() == [1, 1, 1, 0, 0, 0]
    assert float(batch["label"][1].max()) == 2.0  # the labelled slice 1 keeps its label
    assert float(batch["label"][3:].abs().sum()) == 0.0


def test_ensure_labeld_flags_and_errors():
    img = torch.zeros(1, 4, 4)
    assert EnsureLabeld()({"image": img, "label": torch.ones(1, 4, 4)})["labeled"] == 1
    assert EnsureLabeld()({"image": img, "label": torch.ones(1, 4, 4), "labeled": 0})["labeled"] == 0
    out = EnsureLabeld(dtype="uint8")({"image": np.zeros((1, 3, 2))})
    assert out["label"].shape == (1, 3, 2) and out["label"].dtype == np.uint8 and out["labeled"] == 0
    with pytest.raises(ValueError, match="no 'label'"):
        EnsureLabeld()({"image": img, "labeled": 1, "id": "p3"})
    with pytest.raises(ValueError, match="no 'image'"):
        EnsureLabeld()({"other": img})


def test_ensure_labeld_checks_class_indices_on_the_data_side(volumes):
    root, _ = volumes
    loaded = LoadImaged("label", image_only=True)({"label": str(root / "labelsTr/p1.nii.gz")})["label"]  # 0 and 2
    item = {"image": torch.zeros(1, H, W, D), "label": loaded, "id": "p1"}
    assert EnsureLabeld(num_classes=3)(item)["labeled"] == 1
    with pytest.raises(ValueError, match=r"item 'p1' \(label file .*p1.nii.gz\).*\[0, 2\], outside \[0, 2\)"):
        EnsureLabeld(num_classes=2)(item)
    bad = {"image": torch.zeros(1, 2, 2), "label": torch.tensor([[[0.0, 1.5], [0, 0]]]), "id": "p9"}
    with pytest.raises(ValueError, match="item 'p9': the label has non-integer values"):
        EnsureLabeld(num_classes=4)(bad)
    bad["label"] = torch.tensor([[[0.0, float("nan")], [0, 0]]])
    with pytest.raises(ValueError, match="NaN"):
        EnsureLabeld(num_classes=4)(bad)
    # an unlabelled item (flag 0) is not checked: its label never reaches the loss
    assert EnsureLabeld(num_classes=4)({**bad, "labeled": 0})["labeled"] == 0
    with pytest.raises(ValueError, match="num_classes"):
        EnsureLabeld(num_classes=0)
