"""Inference that a pipeline can leave running: exact geometry for every valid input, the formats scanners write,
atomic outputs (also under a real SIGKILL), provenance sidecars and reruns that skip finished volumes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_runs import REPO, run_bundle_process
from monai.bundle import ConfigWorkflow
from monai.networks.nets import FlexibleUNet
from monai.transforms import LoadImage

from ideal_components.data.checks import DatalistCheck
from ideal_components.inference import SegmentationOutputs, split_format
from ideal_components.utils import md5sum as content_md5

ARGS = ["--backbone", "resnet10", "--spatial_size", "[64,64]", "--num_workers", "0", "--progress", "False"]


def _affine(zooms, angle=0.0, flip=False, origin=(0.0, 0.0, 0.0)):
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(zooms) @ np.diag([-1.0 if flip else 1.0, 1, 1])
    a[:3, 3] = origin
    return a


def _nifti(path, shape, affine, seed=0):
    data = np.random.default_rng(seed).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _itk_image(path, shape_zyx, spacing, origin, direction, seed=0):
    import itk

    img = itk.image_from_array(np.random.default_rng(seed).random(shape_zyx).astype(np.float32))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(itk.matrix_from_array(np.asarray(direction, dtype=np.float64)))
    itk.imwrite(img, str(path))
    return path


def _dicom_series(folder: Path, rows=32, cols=28, slices=6, angle=0.2, seed=0) -> Path:
    """An oblique MR series as a scanner exports it: one file per slice with position, orientation and spacing."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    iop = [1.0, 0.0, 0.0, 0.0, float(np.cos(angle)), float(np.sin(angle))]
    normal = np.cross(iop[:3], iop[3:])
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    vol = (np.random.default_rng(seed).random((slices, rows, cols)) * 1000).astype(np.uint16)
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
        ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "Phantom", "0", study, series
        ds.FrameOfReferenceUID, ds.SeriesNumber, ds.InstanceNumber = frame, 1, k + 1
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = [float(x) for x in np.array([10.0, -20.0, 5.0]) + k * 7.5 * normal]
        ds.PixelSpacing, ds.SliceThickness, ds.Rows, ds.Columns = [1.25, 1.4], 7.5, rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = vol[k].tobytes()
        ds.save_as(str(folder / f"{k:03d}.dcm"), enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inference") / "run"
    (root / "models").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(
        FlexibleUNet(1, 4, backbone="resnet10", spatial_dims=2, upsample="deconv").state_dict(),
        root / "models" / "model.pt",
    )
    return root


def _infer(root, inputs, outputs, *args, bundle="ideal_acdc", extra=()):
    return run_bundle_process(
        bundle,
        ["inference.json", *extra],
        root,
        *ARGS,
        "--dataset_dir",
        str(inputs),
        "--output_dir",
        str(outputs),
        *args,
    )


def _ok(proc):
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


# ---- the output object, in process ---------------------------------------------------------------------------------


def test_split_format(tmp_path):
    assert split_format("a/x.nii.gz") == ("x", ".nii.gz")
    assert split_format("a/x.NII") == ("x", ".nii.gz")
    assert split_format("x.mhd") == ("x", ".mha")
    assert split_format("x.nrrd") == ("x", ".nrrd")
    (tmp_path / "series").mkdir()
    assert split_format(tmp_path / "series") == ("series", ".nii.gz")
    assert split_format("a/x.tif") == ("x", ".nii.gz")  # another format ITK reads: a NIfTI segmentation


def test_outputs_provenance_and_completeness(tmp_path):
    image = _nifti(tmp_path / "x.nii.gz", (8, 8, 2), np.eye(4))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights A")
    outputs = SegmentationOutputs(tmp_path / "out", model, "IDEAL", "9.9")
    assert not outputs.is_complete({"image": str(image)})
    stale = tmp_path / "out" / ".x_seg.nii.gz.abc123.tmp.nii.gz"
    stale.parent.mkdir()
    stale.write_bytes(b"partial")
    path = outputs.write(np.ones((8, 8, 2), np.int64), np.eye(4), image)
    assert path == tmp_path / "out" / "x_seg.nii.gz" and not stale.exists()
    record = json.loads((tmp_path / "out" / "x_seg.json").read_text())
    assert record["model_md5"] == content_md5(model) and record["input_md5"] == content_md5(image)
    assert record["bundle_version"] == "9.9" and record["shape"] == [8, 8, 2]
    assert content_md5(model) in nib.load(str(path)).header["descrip"].item().decode()
    assert outputs.is_complete({"image": str(image)})
    # another model, a changed input, a missing sidecar: not complete
    model.write_bytes(b"weights B")
    assert not SegmentationOutputs(tmp_path / "out", model).is_complete(str(image))
    model.write_bytes(b"weights A")
    assert SegmentationOutputs(tmp_path / "out", model).is_complete(str(image))
    _nifti(image, (8, 8, 2), np.eye(4), seed=1)
    assert not SegmentationOutputs(tmp_path / "out", model).is_complete(str(image))
    (tmp_path / "out" / "x_seg.json").unlink()
    assert not outputs.is_complete(str(image))
    with pytest.raises(ValueError, match="0..255"):
        outputs.write(np.full((2, 2, 1), 300), np.eye(4), image)


def test_datalist_check_uses_the_pipelines_reader(tmp_path):
    mha = _itk_image(tmp_path / "ok.mha", (3, 16, 12), [1.0, 1.0, 5.0], [0, 0, 0], np.eye(3))
    (tmp_path / "text.mha").write_text("not an image\n")
    (tmp_path / "empty_series").mkdir()
    items = [{"image": str(mha)}, {"image": str(tmp_path / "text.mha")}, {"image": str(tmp_path / "empty_series")}]
    nib_check = DatalistCheck(items[:1], label_key=None)
    assert nib_check.valid == [] and "not a readable NIfTI" in nib_check.errors[0]  # the old behaviour
    check = DatalistCheck(items, label_key=None, reader="ITKReader")
    assert check.valid == items[:1]
    assert check.errors[0].startswith(str(tmp_path / "text.mha")) and "not readable by ITKReader" in check.errors[0]
    assert check.errors[1].startswith(str(tmp_path / "empty_series")) and "empty image folder" in check.errors[1]
    skipping = DatalistCheck(items, label_key=None, reader="ITKReader", skip=lambda item: "text" in item["image"])
    assert [i["image"] for i in skipping.skipped] == [str(tmp_path / "text.mha")] and len(skipping.errors) == 1


@pytest.mark.parametrize("bundle", ["ideal_acdc", "ideal_mmwhs"])
def test_inference_config_builds_and_checks_without_data(bundle, tmp_path):
    """What the model zoo's tools do: build the config and check its properties, with no input file present."""
    configs = REPO / "bundles" / bundle / "configs"
    (tmp_path / "empty").mkdir()
    wf = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(tmp_path / "run"),
        dataset_dir=str(tmp_path / "empty"),
    )
    wf.initialize()
    assert wf.check_properties() == []


# ---- the bundle, as subprocesses -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_empty_folder_fails_clearly(model_root, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _infer(model_root, tmp_path / "empty", tmp_path / "out")
    assert proc.returncode != 0 and "the datalist is empty" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["ideal_acdc", "ideal_mmwhs"])
def test_exact_geometry_for_every_valid_nifti(bundle, model_root, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = {
        "one_slice": ((30, 20, 1), _affine((1.5, 1.5, 8.0))),
        "tiny_inplane": ((5, 4, 3), _affine((1.2, 1.2, 10.0), origin=(3, -4, 5))),
        "anisotropic_rotated_flipped": ((40, 36, 6), _affine((0.7, 2.9, 8.0), angle=0.4, flip=True, origin=(9, 8, 7))),
        "thin_slices": ((24, 28, 9), _affine((1.9, 1.1, 0.6), angle=-1.2)),
    }
    for i, (name, (shape, affine)) in enumerate(cases.items()):
        _nifti(inputs / f"{name}.nii.gz", shape, affine, seed=i)
    root = model_root.parent / f"run_{bundle}"
    (root / "models").mkdir(parents=True)
    net = FlexibleUNet(1, 8 if bundle == "ideal_mmwhs" else 4, backbone="resnet10", spatial_dims=2, upsample="deconv")
    torch.save(net.state_dict(), root / "models" / "model.pt")
    out = _ok(_infer(root, inputs, tmp_path / "segs", bundle=bundle))
    assert f"inference: {len(cases)} input(s): {len(cases)} segmented, 0 skipped" in out
    for name, (shape, affine) in cases.items():
        seg = nib.load(str(tmp_path / "segs" / f"{name}_seg.nii.gz"))
        assert seg.shape == shape, name
        np.testing.assert_allclose(seg.affine, nib.load(str(inputs / f"{name}.nii.gz")).affine, atol=1e-5)
        assert seg.get_data_dtype() == np.uint8
        assert json.loads((tmp_path / "segs" / f"{name}_seg.json").read_text())["shape"] == list(shape)


@pytest.mark.slow
def test_every_claimed_format_end_to_end(model_root, tmp_path):
    """NRRD, MetaImage (.mha and .mhd + .raw) and a DICOM series folder, each read through ITK and segmented in its
    own geometry (compared through the same reader)."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    tilt = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]])
    _itk_image(inputs / "oblique.nrrd", (5, 40, 36), [0.9, 1.3, 8.0], [5, -3, 2], tilt)
    _itk_image(inputs / "one_slice.mha", (1, 30, 20), [1.5, 1.5, 8.0], [0, 0, 0], np.eye(3), seed=1)
    _itk_image(inputs / "split.mhd", (4, 24, 20), [1.1, 1.1, 6.0], [1, 2, 3], np.eye(3), seed=2)
    _dicom_series(inputs / "series01")
    load = LoadImage(reader="ITKReader", image_only=True)
    expected = {"*.nrrd": ["oblique"], "*.mha": ["one_slice"], "*.mhd": ["split"], "*/": ["series01"]}
    for pattern, names in expected.items():
        out = _ok(
            _infer(model_root, inputs, tmp_path / "segs", "--image_reader", "ITKReader", "--file_pattern", pattern)
        )
        assert f"inference: {len(names)} input(s): {len(names)} segmented" in out, pattern
    written = {"oblique": "oblique_seg.nrrd", "one_slice": "one_slice_seg.mha", "split": "split_seg.mha"}
    written["series01"] = "series01_seg.nii.gz"
    for name, seg_name in written.items():
        source = inputs / name if name == "series01" else next(inputs.glob(f"{name}.*"))
        image = load(str(source))
        seg_path = tmp_path / "segs" / seg_name
        if seg_name.endswith(".nii.gz"):
            seg = nib.load(str(seg_path))
            shape, affine = seg.shape, seg.affine
        else:
            seg = load(str(seg_path))
            shape, affine = tuple(seg.shape), np.asarray(seg.affine)
        assert shape == tuple(image.shape), name
        np.testing.assert_allclose(affine, np.asarray(image.affine), atol=1e-4, err_msg=name)
    assert not (inputs / "series01_seg.nii.gz").exists()  # nothing written next to the inputs


def _kill_config(path: Path, victim: str) -> Path:
    """Merged last: SIGKILLs the run in the middle of writing ``victim``'s segmentation (half a file written)."""
    base = json.loads((REPO / "bundles" / "ideal_acdc" / "configs" / "inference.json").read_text())
    kill = (
        "$setattr(nibabel, 'save', (lambda save: lambda img, name, *a, **k: "
        "(open(name, 'wb').write(b'half a segmentation'), os.kill(os.getpid(), signal.SIGKILL)) "
        f"if '{victim}' in str(name) else save(img, name, *a, **k))(nibabel.save))"
    )
    extra = {"imports": base["imports"] + ["$import signal", "$import nibabel"], "initialize": [kill]}
    path.write_text(json.dumps(extra, indent=1))
    return path


@pytest.mark.slow
def test_kill_during_write_leaves_no_partial_file_and_rerun_skips_finished_volumes(model_root, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, name in enumerate(["a_first", "b_victim", "c_last"]):
        _nifti(inputs / f"{name}.nii.gz", (32, 28, 3), _affine((1.4, 1.4, 8.0)), seed=i)
    segs = tmp_path / "segs"
    proc = _infer(model_root, inputs, segs, extra=[_kill_config(tmp_path / "kill.json", "b_victim")])
    assert proc.returncode == -9, (proc.stdout + proc.stderr)[-3000:]
    final = sorted(p.name for p in segs.iterdir() if not p.name.startswith("."))
    assert final == ["a_first_seg.json", "a_first_seg.nii.gz"]  # the victim's half file is not under a final name
    assert nib.load(str(segs / "a_first_seg.nii.gz")).get_fdata().shape == (32, 28, 3)
    assert [p.read_bytes() for p in segs.glob(".b_victim_seg.nii.gz.*")] == [b"half a segmentation"]
    first = (segs / "a_first_seg.nii.gz").read_bytes()

    out = _ok(_infer(model_root, inputs, segs, "--skip_existing", "True"))
    assert "inference: 3 input(s): 2 segmented, 1 skipped" in out
    assert sorted(p.name for p in segs.iterdir()) == [
        f"{n}_seg.{ext}" for n in ["a_first", "b_victim", "c_last"] for ext in ["json", "nii.gz"]
    ]  # the stale temporary file is gone
    assert (segs / "a_first_seg.nii.gz").read_bytes() == first

    again = _ok(_infer(model_root, inputs, segs, "--skip_existing", "True"))
    assert "inference: 3 input(s): 0 segmented, 3 skipped" in again
    # another model: everything is redone
    other = tmp_path / "other_run"
    (other / "models").mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(
        FlexibleUNet(1, 4, backbone="resnet10", spatial_dims=2, upsample="deconv").state_dict(),
        other / "models" / "model.pt",
    )
    redo = _ok(_infer(other, inputs, segs, "--skip_existing", "True"))
    assert "inference: 3 input(s): 3 segmented, 0 skipped" in redo
